//! A message's document as a mapping reads it, without a value tree of the whole message: one
//! pass over the JSON text keeps the values the mapping's pointers name ([`Plan`]), borrowed
//! from the text where they hold no escapes, and the top-level fields' names and raw text
//! (for `unknown` and `rest`). An array or object a column takes whole is parsed into a tree
//! only when a conversion asks for it (jsonb, text[]).
//!
//! What the tree engine did, this keeps: a pointer finds what `serde_json::Value::pointer`
//! found (RFC 6901 tokens, array indices without a sign or leading zeros), and a number keeps
//! its text as sent. But a field a pointer names given twice in its object, or one above it
//! given again after a value below it was read (the last one given would lose what was read),
//! holds no value ([`Found::Repeated`], where it was given again): which one is meant cannot be
//! told, so the mapper refuses the message (`duplicate_field`), as the login pipeline does. One
//! above it given again before anything below it was read is the last one given, as before. A
//! lone surrogate escape in a string a pointer names is kept with where it is, so the mapper
//! can say where serde_json's reader of the whole text would stop at it; and a top-level value
//! that is not an object is told by its kind. What it does not: fields the mapping never reads are skipped with
//! serde_json's iterative skip, so nesting deeper than its recursion limit (128) no longer
//! refuses a message unless a column reads that deep (then the column's `invalid_value`).
//!
//! serde_json and simd-json both offer a borrowed DOM, but a DOM is what this avoids; no crate
//! reads only the pointers a caller names, hence this visitor of our own.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};
use smallvec::SmallVec;

use crate::kind::Rejection;

/// The one key of the map serde_json's `arbitrary_precision` hands a visitor for a number.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// serde_json's recursion limit: a value nested deeper does not parse into a tree.
pub const DEPTH_LIMIT: usize = 128;

/// Defines the visit methods of a visitor that takes any scalar and keeps nothing of it.
macro_rules! scalars_are_nothing {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// A value found in a document: a scalar borrowed from the text where it can be, an array or an
/// object as its raw text until a conversion parses it. No `Debug`: values can be personal.
#[derive(Clone)]
pub enum Found<'a> {
    Null,
    Bool(bool),
    /// A number's text as sent (every digit, its exponent as written).
    Number(Cow<'a, str>),
    /// A whole number of the delivery's (its SentTimestamp, its receive count).
    Int(i64),
    Str(Cow<'a, str>),
    /// A string with a lone surrogate escape (`"\ud800"`): valid JSON text, but no string.
    /// Its JSON text, for where serde_json's reader would stop at it.
    BadEscape(&'a str),
    /// A field a pointer names given more than once in its object, or one above it given
    /// again after a value below it was read: which one is meant is anyone's guess, so no
    /// value is. Where in the text it was given again
    /// (an address in the text's memory: of the values of one document, the first given
    /// again has the lowest).
    Repeated(usize),
    /// An array or object's JSON text (checked when it was found), not yet parsed.
    Raw(&'a str),
    /// An array or object already parsed (a constant, an envelope's field, `rest`); boxed,
    /// as it is rare, so that a found value stays four words.
    Tree(Box<Cow<'a, Json>>),
    /// An array or object nested deeper than [`DEPTH_LIMIT`], which no tree holds (`rest`).
    TooDeep,
}

impl<'a> Found<'a> {
    /// The value as the tree engine held it, borrowed.
    pub fn from_json(value: &'a Json) -> Self {
        match value {
            Json::Null => Found::Null,
            Json::Bool(b) => Found::Bool(*b),
            Json::Number(n) => Found::Number(Cow::Borrowed(n.as_str())),
            Json::String(s) => Found::Str(Cow::Borrowed(s)),
            Json::Array(_) | Json::Object(_) => Found::Tree(Box::new(Cow::Borrowed(value))),
        }
    }

    /// A value's raw JSON text (already checked by the pass that captured it) as found.
    pub fn from_raw(raw: &'a RawValue) -> Self {
        Self::from_text(raw.get())
    }

    /// A value's JSON text, already checked to be one JSON value, as found.
    fn from_text(text: &'a str) -> Self {
        match text.as_bytes().first() {
            Some(b'"') => {
                let inner = &text[1..text.len() - 1];
                if !inner.contains('\\') {
                    return Found::Str(Cow::Borrowed(inner));
                }
                // The skip that captured it checks an escape's hex digits, not its pairing.
                match serde_json::from_str::<String>(text) {
                    Ok(s) => Found::Str(Cow::Owned(s)),
                    Err(_) => Found::BadEscape(text),
                }
            }
            Some(b'n') => Found::Null,
            Some(b't') => Found::Bool(true),
            Some(b'f') => Found::Bool(false),
            Some(b'[' | b'{') => Found::Raw(text),
            _ => Found::Number(Cow::Borrowed(text)),
        }
    }

    /// The same value, borrowed from this one.
    pub fn borrowed(&self) -> Found<'_> {
        match self {
            Found::Null => Found::Null,
            Found::Bool(b) => Found::Bool(*b),
            Found::Number(t) => Found::Number(Cow::Borrowed(t)),
            Found::Int(n) => Found::Int(*n),
            Found::Str(s) => Found::Str(Cow::Borrowed(s)),
            Found::BadEscape(text) => Found::BadEscape(text),
            Found::Repeated(at) => Found::Repeated(*at),
            Found::Raw(raw) => Found::Raw(raw),
            Found::Tree(tree) => Found::Tree(Box::new(Cow::Borrowed(tree))),
            Found::TooDeep => Found::TooDeep,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Found::Null)
    }

    /// The kind of JSON value, as faults name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Found::Null => "null",
            Found::Bool(_) => "boolean",
            Found::Number(_) | Found::Int(_) => "number",
            Found::Str(_) | Found::BadEscape(_) => "string",
            Found::Repeated(_) => "repeated field",
            Found::Raw(raw) if raw.starts_with('[') => "array",
            Found::Raw(_) | Found::TooDeep => "object",
            Found::Tree(tree) => match ***tree {
                Json::Array(_) => "array",
                _ => "object",
            },
        }
    }

    /// The text, if a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Found::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A whole number that fits an `i64`, as `serde_json::Value::as_i64` reads one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Found::Number(t) => t.parse().ok(),
            Found::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The value as a tree (a scalar as its own value), or why it has none.
    pub fn to_json(&self) -> Result<Cow<'_, Json>, Unreadable> {
        Ok(Cow::Owned(match self {
            Found::Null => Json::Null,
            Found::Bool(b) => Json::Bool(*b),
            Found::Number(t) => tree(t).map_err(|_| Unreadable::TooDeep)?,
            Found::Int(n) => Json::from(*n),
            Found::Str(s) => Json::String(s.to_string()),
            Found::BadEscape(_) => return Err(Unreadable::LoneSurrogate),
            Found::Repeated(_) => return Err(Unreadable::Repeated),
            Found::TooDeep => return Err(Unreadable::TooDeep),
            Found::Raw(raw) => tree(raw).map_err(|e| Unreadable::of(&e))?,
            Found::Tree(tree) => return Ok(Cow::Borrowed(tree.as_ref().as_ref())),
        }))
    }

    /// Why the value cannot be read, if it cannot: a string with a lone surrogate escape, or
    /// (parsed to know) an array or object that holds one or is too deep for a tree.
    pub fn unreadable(&self) -> Option<Unreadable> {
        match self {
            Found::BadEscape(_) => Some(Unreadable::LoneSurrogate),
            Found::Repeated(_) => Some(Unreadable::Repeated),
            Found::TooDeep => Some(Unreadable::TooDeep),
            Found::Raw(_) => self.to_json().err(),
            _ => None,
        }
    }

    /// The value as a match or an `allowed` list compares it: a string as it is, another
    /// value as JSON writes it; `None` for null (and for what [`Found::to_json`] cannot read).
    pub fn as_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Found::Null | Found::BadEscape(_) | Found::Repeated(_) | Found::TooDeep => None,
            Found::Str(s) => Some(Cow::Borrowed(s)),
            Found::Number(t) => Some(as_written(t)),
            Found::Int(n) => Some(Cow::Owned(n.to_string())),
            Found::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Found::Raw(_) | Found::Tree(_) => Some(Cow::Owned(self.to_json().ok()?.to_string())),
        }
    }
}

/// Why a found value has no tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Nested deeper than [`DEPTH_LIMIT`].
    TooDeep,
    /// A string (or key) with an unpaired surrogate escape (`"\ud800"`).
    LoneSurrogate,
    /// A field given more than once (see [`Found::Repeated`]).
    Repeated,
}

impl Unreadable {
    fn of(error: &serde_json::Error) -> Self {
        // serde_json's error codes are not public; its message names the cause (and never
        // the input).
        let text = error.to_string();
        match text.contains("surrogate") || text.contains("hex escape") {
            true => Unreadable::LoneSurrogate,
            false => Unreadable::TooDeep,
        }
    }
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::TooDeep => write!(f, "nested more than {DEPTH_LIMIT} levels deep"),
            Unreadable::LoneSurrogate => {
                f.write_str("a lone surrogate escape (\\uD800 to \\uDFFF, unpaired)")
            }
            Unreadable::Repeated => f.write_str("a field given more than once"),
        }
    }
}

/// JSON text as a tree, as serde_json's own `Value` reads it but for one thing: a key is
/// always a key. The `raw_value` feature this module needs makes serde_json's `Value` read an
/// object whose one key is `$serde_json::private::RawValue` as the JSON text its string
/// holds, which a message could use to change what is stored or to nest past the recursion
/// limit. (A number comes, under `arbitrary_precision`, as an object keyed
/// `$serde_json::private::Number`, read as a number as before.) Nesting stays bounded by
/// serde_json's recursion limit.
pub fn tree(text: &str) -> serde_json::Result<Json> {
    let mut de = serde_json::Deserializer::from_str(text);
    let tree = TreeSeed.deserialize(&mut de)?;
    de.end()?;
    Ok(tree)
}

/// See [`tree`].
struct TreeSeed;

impl<'de> DeserializeSeed<'de> for TreeSeed {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Json, E> {
        Ok(Json::from(n))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Json, E> {
        Ok(Json::from(n))
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Json, E> {
        Ok(Json::from(x))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(TreeSeed)? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut object = Map::new();
        let mut first = true;
        // A key borrowed where it can be: a number's token is no allocation.
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if first && key == NUMBER_TOKEN {
                let text: String = map.next_value()?;
                return text
                    .parse::<serde_json::Number>()
                    .map(Json::Number)
                    .map_err(de::Error::custom);
            }
            first = false;
            // A field given twice: the last one, as serde_json's `Value` keeps.
            object.insert(key.into_owned(), map.next_value_seed(TreeSeed)?);
        }
        Ok(Json::Object(object))
    }
}

/// A number's text as serde_json's `arbitrary_precision` writes it, which the tree engine
/// compared and stored: digits as sent, but an exponent as `e` and always signed (`1E5` is
/// `1e+5`).
fn as_written(text: &str) -> Cow<'_, str> {
    let Some(at) = text.find(['e', 'E']) else {
        return Cow::Borrowed(text);
    };
    let (mantissa, exponent) = (&text[..at], &text[at + 1..]);
    if text.as_bytes()[at] == b'e' && exponent.starts_with(['+', '-']) {
        return Cow::Borrowed(text);
    }
    let sign = if exponent.starts_with(['+', '-']) {
        ""
    } else {
        "+"
    };
    Cow::Owned(format!("{mantissa}e{sign}{exponent}"))
}

/// What a mapping (or the mappings of one queue) reads of a document: the fields its pointers
/// name, as a tree of reference tokens, each pointer given a slot.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    root: Node,
    slots: usize,
    pointers: Vec<String>,
    /// Whether several mappings read with it: then a field one of them takes may be another's
    /// `rest` or unknown, and every top-level field is kept.
    shared: bool,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// The slot of the pointer that ends here.
    slot: Option<usize>,
    /// Each child's [`order`], sorted: what a lookup compares, one integer per child, in
    /// a compact array of its own.
    orders: Vec<u128>,
    /// In the order of `orders`.
    children: Vec<Child>,
}

#[derive(Debug, Clone)]
struct Child {
    key: String,
    /// The token as an array index, as `serde_json::Value::pointer` reads one.
    index: Option<usize>,
    node: Node,
}

impl Plan {
    /// Marks it read for several mappings (see `shared`).
    pub fn share(&mut self) {
        self.shared = true;
    }

    /// The pointer of a slot.
    pub fn pointer(&self, slot: usize) -> &str {
        &self.pointers[slot]
    }

    /// The slot of a JSON pointer (`""` is the whole document), given once per pointer;
    /// `None` for a pointer that finds nothing (one not starting with `/`).
    pub fn slot(&mut self, pointer: &str) -> Option<usize> {
        if let Some(at) = self.pointers.iter().position(|p| p == pointer) {
            return Some(at);
        }
        let mut node = &mut self.root;
        if !pointer.is_empty() {
            for token in pointer.strip_prefix('/')?.split('/') {
                let key = token.replace("~1", "/").replace("~0", "~");
                let at = match node.at(&key) {
                    Ok(at) => at,
                    Err(at) => {
                        let signed_or_padded =
                            key.starts_with('+') || (key.starts_with('0') && key.len() > 1);
                        let index = (!signed_or_padded).then(|| key.parse().ok()).flatten();
                        node.orders.insert(at, order(&key));
                        node.children.insert(
                            at,
                            Child {
                                key,
                                index,
                                node: Node::default(),
                            },
                        );
                        at
                    }
                };
                node = &mut node.children[at].node;
            }
        }
        let slot = self.slots;
        node.slot = Some(slot);
        self.slots += 1;
        self.pointers.push(pointer.to_owned());
        Some(slot)
    }
}

/// Eight bytes of `bytes` from `at` as one big-endian word, zero-padded: words compare as
/// the bytes do.
#[inline]
fn word(bytes: &[u8], at: usize) -> u64 {
    if let Some(eight) = bytes.get(at..at + 8) {
        return u64::from_be_bytes(eight.try_into().expect("eight bytes"));
    }
    let mut word = [0u8; 8];
    let rest = bytes.get(at..).unwrap_or_default();
    word[..rest.len()].copy_from_slice(rest);
    u64::from_be_bytes(word)
}

/// A key's length and first eight bytes, as one integer: an order of keys in which a key of
/// up to eight bytes is known by its integer alone. A shorter key's bytes are read in two
/// overlapping loads (the length tells them apart), not one at a time.
#[inline]
fn order(key: &str) -> u128 {
    let (b, len) = (key.as_bytes(), key.len());
    let word = match len {
        0 => 0,
        1..=3 => u64::from(b[0]) << 16 | u64::from(b[len / 2]) << 8 | u64::from(b[len - 1]),
        4..=7 => {
            let four =
                |at: usize| u64::from(u32::from_be_bytes(b[at..at + 4].try_into().expect("four")));
            four(0) << 32 | four(len - 4)
        }
        _ => word(b, 0),
    };
    (len as u128) << 64 | u128::from(word)
}

impl Node {
    /// Where the child of `key` is, or where it would go.
    #[inline]
    fn at(&self, key: &str) -> Result<usize, usize> {
        let order = order(key);
        let from = self.orders.partition_point(|o| *o < order);
        for (at, child) in self.children[from..].iter().enumerate() {
            if self.orders[from + at] != order {
                return Err(from + at);
            }
            // The length and eight bytes agree: the rest (rarely any), a word at a time.
            let (a, b) = (child.key.as_bytes(), key.as_bytes());
            let rest = (8..a.len())
                .step_by(8)
                .map(|i| word(a, i).cmp(&word(b, i)))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal);
            match rest {
                std::cmp::Ordering::Equal => return Ok(from + at),
                std::cmp::Ordering::Greater => return Err(from + at),
                std::cmp::Ordering::Less => {}
            }
        }
        Err(self.children.len())
    }

    /// The child of `key`: among those of its order (one, for a key of up to eight bytes),
    /// the one whose key it is.
    #[inline]
    fn child(&self, key: &str) -> Option<&Node> {
        let order = order(key);
        let from = match self.orders.len() {
            0..=8 => 0,
            _ => self.orders.partition_point(|o| *o < order),
        };
        for (at, o) in self.orders.iter().enumerate().skip(from) {
            if *o > order {
                break;
            }
            if *o == order && (key.len() <= 8 || self.children[at].key == key) {
                return Some(&self.children[at].node);
            }
        }
        None
    }

    fn element(&self, index: usize) -> Option<&Node> {
        self.children
            .iter()
            .find(|c| c.index == Some(index))
            .map(|c| &c.node)
    }

    /// Marks what the slots below this node hold as [`Found::Repeated`] (the node's field is
    /// given again: which of its values is meant cannot be told). A first visit finds them
    /// empty. `at`: where the node's value is given again.
    fn repeat_below(&self, found: &mut [Option<Found<'_>>], at: usize) {
        for child in &self.children {
            if let Some(slot) = child.node.slot {
                if let Some(value) = found[slot].take() {
                    found[slot] = Some(repeated(value, at));
                }
            }
            child.node.repeat_below(found, at);
        }
    }

    /// Fills the slots below this node from the elements of its array (the ones an index of
    /// its children names), skipping the others.
    fn fill_elements<'de, A: SeqAccess<'de>>(
        &self,
        mut seq: A,
        found: &mut [Option<Found<'de>>],
    ) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            match self.element(index) {
                Some(node) => match seq.next_element::<&'de RawValue>()? {
                    Some(raw) => node.fill(raw, found).map_err(de::Error::custom)?,
                    None => return Ok(()),
                },
                None if seq.next_element::<IgnoredAny>()?.is_none() => return Ok(()),
                None => {}
            }
            index += 1;
        }
    }

    /// Fills this node's slot and those below it from its value's raw text.
    fn fill<'a>(
        &self,
        raw: &'a RawValue,
        found: &mut [Option<Found<'a>>],
    ) -> serde_json::Result<()> {
        if let Some(slot) = self.slot {
            put(found, slot, Found::from_raw(raw), address(raw.get()));
        }
        if self.children.is_empty() {
            return Ok(());
        }
        self.repeat_below(found, address(raw.get()));
        // A fresh reader over the value's text: it is valid JSON, read once more per level.
        let mut de = serde_json::Deserializer::from_str(raw.get());
        de.deserialize_any(NodeVisitor { node: self, found })
    }
}

/// Fills `slot` with what its pointer found: a slot filled before holds [`Found::Repeated`].
/// A lone surrogate escape stays, either one (serde_json's reader, which the login pipeline
/// read with, stopped at the first one it met).
/// `at`: where in the text the value is (see [`address`]).
#[inline]
fn put<'a>(found: &mut [Option<Found<'a>>], slot: usize, value: Found<'a>, at: usize) {
    match &mut found[slot] {
        held @ None => *held = Some(value),
        Some(before) => put_again(before, value, at),
    }
}

/// [`put`] into a slot filled before: rare, so kept out of the common path.
#[cold]
fn put_again<'a>(held: &mut Found<'a>, value: Found<'a>, at: usize) {
    let before = std::mem::replace(held, Found::Null);
    *held = match value {
        Found::BadEscape(_) if !matches!(before, Found::BadEscape(_)) => value,
        _ => repeated(before, at),
    };
}

/// What a slot holds once its field is given again at `at` (a lone surrogate escape stays; a
/// field given a third time was first given again where it was).
fn repeated(before: Found<'_>, at: usize) -> Found<'_> {
    match before {
        Found::BadEscape(_) | Found::Repeated(_) => before,
        _ => Found::Repeated(at),
    }
}

/// Where a value is in the text it was read from, as an address: values of one text compare
/// by where they are in it.
#[inline]
fn address(value: &str) -> usize {
    value.as_ptr() as usize
}

/// The slots of a document: on the stack for a mapping of up to 8 pointers (more would make
/// every document's move a long copy).
type Slots<'a> = SmallVec<[Option<Found<'a>>; 8]>;

/// A document's values as the plan reads them, and its top-level fields.
pub struct Document<'a> {
    /// The text it was read from (where a lone surrogate escape is told from).
    text: &'a str,
    /// The kind of its top-level value when that is not an object.
    not_object: Option<&'static str>,
    found: Slots<'a>,
    /// The top-level fields in the order given (an object's; none for another value), but for
    /// a plan not shared only those no pointer starts with: the candidates for `rest` and
    /// unknown.
    fields: Kept<'a>,
}

/// A document's top-level fields as given: each name and its value's JSON text.
type Kept<'a> = Vec<(Cow<'a, str>, &'a str)>;

impl<'a> Document<'a> {
    /// A document with nothing in it (for the columns whose value is not the message's).
    pub fn empty() -> Self {
        Self {
            text: "",
            not_object: None,
            found: SmallVec::new(),
            fields: Vec::new(),
        }
    }

    /// Reads `text` as the plan says. Text that is not JSON is `not_json`, its detail (after
    /// `context`) the line and column where it stops being JSON.
    pub fn read(plan: &Plan, text: &'a str, context: &str) -> Result<Self, Rejection> {
        match scan::read(plan, text) {
            Some(document) => Ok(document),
            None => Self::read_with_serde(plan, text, context),
        }
    }

    /// [`Document::read`] through serde_json's reader: any JSON, and where text that is not
    /// JSON stops being JSON.
    fn read_with_serde(plan: &Plan, text: &'a str, context: &str) -> Result<Self, Rejection> {
        let not_json = |e: serde_json::Error| Rejection::unreadable_json(&e, context);
        let mut found: Slots<'a> = smallvec::smallvec![None; plan.slots];
        let mut fields = Vec::new();
        let mut de = serde_json::Deserializer::from_str(text);
        let mut in_leaf = None;
        let read = (&mut de)
            .deserialize_any(RootVisitor {
                plan,
                found: &mut found,
                fields: &mut fields,
                in_leaf: &mut in_leaf,
            })
            .and_then(|kind| de.end().map(|()| kind));
        let not_object = match read {
            Ok(kind) => kind,
            // A lone surrogate escape read before the text stops being JSON is where a reader
            // of the strings (the login pipeline's was one) stops first.
            Err(e) => {
                return Err(match first_lone_surrogate(found.iter().flatten()) {
                    Some(string) => lone_surrogate_at(text, string),
                    None => match in_leaf {
                        Some(key) => string_fault(text, key, &e, context),
                        None => not_json(e),
                    },
                })
            }
        };
        if let Some(slot) = plan.root.slot {
            // The whole document: its text is read already.
            let raw: &RawValue = serde_json::from_str(text).map_err(not_json)?;
            found[slot] = Some(Found::from_raw(raw));
        }
        Ok(Self {
            text,
            not_object,
            found,
            fields,
        })
    }

    /// The kind of its top-level value (`array`, `string`, ...) when that is not an object.
    pub fn not_object(&self) -> Option<&'static str> {
        self.not_object
    }

    /// Of the lone surrogate escapes the pointers of `slots` found, the first in the text, as
    /// the `invalid_utf16_escape` serde_json's reader gives: where it stops, line and column.
    pub fn lone_surrogate(&self, slots: impl Iterator<Item = usize>) -> Option<Rejection> {
        let first = first_lone_surrogate(slots.filter_map(|slot| self.get(slot)))?;
        Some(lone_surrogate_at(self.text, first))
    }

    /// What the pointer of `slot` found.
    pub fn get(&self, slot: usize) -> Option<&Found<'a>> {
        self.found.get(slot)?.as_ref()
    }

    /// The distinct top-level field names not in `taken`, in byte order.
    pub fn unknown(&self, taken: &HashSet<String>) -> Vec<&str> {
        if self.fields.is_empty() {
            return Vec::new();
        }
        let mut names: Vec<&str> = self
            .fields
            .iter()
            .map(|(k, _)| k.as_ref())
            .filter(|k| !taken.contains(*k))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The top-level fields not in `taken` as one object (a field given twice: the last);
    /// `None` when one is nested deeper than [`DEPTH_LIMIT`].
    pub fn rest(&self, taken: &HashSet<String>) -> Option<Json> {
        let mut rest = Map::new();
        for (key, raw) in self
            .fields
            .iter()
            .filter(|(k, _)| !taken.contains(k.as_ref()))
        {
            rest.insert(key.to_string(), tree(raw).ok()?);
        }
        Some(Json::Object(rest))
    }
}

/// Where a reader of a field's string (serde_json's, which the login pipeline read its fields
/// with) says the text stops being JSON, when it stops inside the value of the field `key` (a
/// key borrowed from `text`). The skip that captured the value refuses less (a lone surrogate
/// escape) or elsewhere (at a control character, not past it), so the string is read again
/// from where it starts.
fn string_fault(text: &str, key: &str, error: &serde_json::Error, context: &str) -> Rejection {
    let skipped = || Rejection::unreadable_json(error, context);
    let Some(key_end) = offset_in(text, key).map(|at| at + key.len()) else {
        return skipped();
    };
    // Past the key's closing quote, the colon and the spaces around it. With no colon, the
    // text stopped being JSON before the value: the skip's word stands.
    let spaces = [' ', '\t', '\n', '\r'];
    let after = &text[key_end..];
    let Some(colon) = after
        .strip_prefix('"')
        .map(|a| a.trim_start_matches(spaces))
        .and_then(|a| a.strip_prefix(':'))
    else {
        return skipped();
    };
    let value_at = key_end + after.len() - colon.trim_start_matches(spaces).len();
    if !text[value_at..].starts_with('"') {
        return skipped();
    }
    string_refused_at(text, value_at, context).unwrap_or_else(skipped)
}

/// The `invalid_utf16_escape` of `string` (the JSON text of a string with a lone surrogate
/// escape, within `text`): where serde_json's reader of `text` stops at it, line and column.
fn lone_surrogate_at(text: &str, string: &str) -> Rejection {
    offset_in(text, string)
        .and_then(|at| string_refused_at(text, at, ""))
        .unwrap_or_else(|| Rejection::lone_surrogate(1, 0))
}

/// What serde_json's string reader says of the string whose JSON text starts at `at` in
/// `text`, placed as a reader of the whole text places it (a line and a column); `None` when
/// it reads the string.
fn string_refused_at(text: &str, at: usize, context: &str) -> Option<Rejection> {
    let mut reader = serde_json::Deserializer::from_str(&text[at..]);
    let error = <String as de::Deserialize>::deserialize(&mut reader).err()?;
    let before = &text.as_bytes()[..at];
    let line = 1 + before.iter().filter(|b| **b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |start| start + 1);
    let (line, column) = match error.line() {
        1 => (line, at - line_start + error.column()),
        more => (line + more - 1, error.column()),
    };
    Some(Rejection::unreadable_json_at(&error, context, line, column))
}

/// Where `part`, a slice of `text`, starts in it.
fn offset_in(text: &str, part: &str) -> Option<usize> {
    (part.as_ptr() as usize)
        .checked_sub(text.as_ptr() as usize)
        .filter(|at| *at <= text.len())
}

/// The first (in the text) lone surrogate escape of what the pointers found.
fn first_lone_surrogate<'a>(found: impl Iterator<Item = &'a Found<'a>>) -> Option<&'a str> {
    found
        .filter_map(|f| match f {
            Found::BadEscape(string) => Some(*string),
            _ => None,
        })
        .min_by_key(|string| string.as_ptr() as usize)
}

/// An object's fields as given, each value's raw text; `None` for another JSON value. The
/// whole text is checked to be one JSON value (nothing after it).
pub fn top_level(text: &str) -> serde_json::Result<Option<Fields<'_>>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = de.deserialize_any(FieldsVisitor)?;
    de.end()?;
    Ok(fields)
}

/// The last field named `name` of a top-level field list.
pub fn field<'a>(fields: &[(Cow<'_, str>, &'a RawValue)], name: &str) -> Option<&'a RawValue> {
    fields
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
}

/// The top-level value: a plan's root read into the slots, the fields kept.
struct RootVisitor<'p, 'f, 'a> {
    plan: &'p Plan,
    found: &'f mut Slots<'a>,
    fields: &'f mut Kept<'a>,
    /// The key (borrowed from the text) of the field a pointer ends at, when the text stops
    /// being JSON inside its value.
    in_leaf: &'f mut Option<&'a str>,
}

impl<'de> Visitor<'de> for RootVisitor<'_, '_, 'de> {
    /// The kind of value it was, when not an object.
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Some("boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Some("number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Some("number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Some("number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Some("string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        // `/0` names an object's field "0", but an array's element 0, as serde_json's pointer.
        self.plan.root.fill_elements(seq, self.found)?;
        Ok(Some("array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut first = true;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if first && key == NUMBER_TOKEN {
                // A number, not an object.
                map.next_value::<IgnoredAny>()?;
                return Ok(Some("number"));
            }
            first = false;
            let node = self.plan.root.child(&key);
            let raw: &'de RawValue = map.next_value().inspect_err(|_| {
                if node.is_some_and(|n| n.children.is_empty()) {
                    if let Cow::Borrowed(key) = key {
                        *self.in_leaf = Some(key);
                    }
                }
            })?;
            match node {
                Some(node) => {
                    node.fill(raw, self.found).map_err(de::Error::custom)?;
                    if self.plan.shared {
                        self.fields.push((key, raw.get()));
                    }
                }
                None => self.fields.push((key, raw.get())),
            }
        }
        Ok(None)
    }
}

/// An object's fields as given: each name (borrowed where it holds no escape) and its
/// value's raw text.
pub type Fields<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// A key, borrowed from the text where it holds no escape.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The top-level value: an object's fields, or `None` (consumed, so what follows is checked).
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Option<Fields<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    scalars_are_nothing!(None);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(16);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if fields.is_empty() && key == NUMBER_TOKEN {
                // A number, not an object.
                map.next_value::<IgnoredAny>()?;
                return Ok(None);
            }
            let value: &'de RawValue = map.next_value()?;
            fields.push((key, value));
        }
        Ok(Some(fields))
    }
}

/// A value below the top level that some pointer goes into: its children's slots filled.
struct NodeVisitor<'p, 'f, 'a> {
    node: &'p Node,
    found: &'f mut [Option<Found<'a>>],
}

impl<'de> Visitor<'de> for NodeVisitor<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    scalars_are_nothing!(());

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.node.fill_elements(seq, self.found)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut first = true;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if first && key == NUMBER_TOKEN {
                map.next_value::<IgnoredAny>()?;
                return Ok(());
            }
            first = false;
            match self.node.child(&key) {
                Some(node) => {
                    let raw: &'de RawValue = map.next_value()?;
                    node.fill(raw, self.found).map_err(de::Error::custom)?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

mod scan;

#[cfg(test)]
mod tests;

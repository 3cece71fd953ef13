//! The common document read without serde: one pass over the bytes of a JSON object whose
//! keys hold no escapes, filling a plan's slots as [`Document::read`]'s serde reader does.
//!
//! It accepts exactly the JSON serde_json accepts (RFC 8259: whitespace, literals, the number
//! grammar with no leading zeros, strings without control characters and with valid escapes,
//! no trailing commas) and gives up, returning `None`, on anything else *and* on what it leaves
//! to the serde reader: a top-level value that is not an object, a key with an escape (serde
//! checks its surrogates), serde_json's number token as a key, an array below a pointer's
//! node, a string with an escape where a pointer goes below it (serde refuses its lone
//! surrogates), and nesting deeper than 128. [`Document::read`] then reads the text with serde,
//! which gives the same values (or says where the text stops being JSON): this reader is a
//! shortcut, never a second opinion. The property test in `tests.rs` holds it to that.
//!
//! serde_json's reader hands values over through its visitor API, capturing each one the
//! mapping reads as raw text and parsing that again; no crate skips to the fields a caller
//! names and hands back their text, hence this scanner of our own.

use std::borrow::Cow;

use super::{address, put, Document, Found, Kept, Node, Plan, Slots, NUMBER_TOKEN};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each zero byte of `word` set (and perhaps of bytes above the first).
#[inline]
fn zero_byte(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGH
}

/// The high bit of each byte below 0x20 set (and perhaps of bytes above the first).
#[inline]
fn below_space(word: u64) -> u64 {
    word.wrapping_sub(ONES * 0x20) & !word & HIGH
}

/// How deep a skipped value may nest here (one bit per level); deeper is left to serde.
const MAX_DEPTH: u32 = 128;

/// Reads `text` as `plan` says, or `None` (see the module's docs).
pub(super) fn read<'a>(plan: &Plan, text: &'a str) -> Option<Document<'a>> {
    let mut scan = Scan { text, at: 0 };
    let mut found: Slots<'a> = smallvec::smallvec![None; plan.slots];
    let mut fields = Kept::new();
    if scan.space()? != b'{' {
        return None;
    }
    let start = scan.at;
    scan.object(&plan.root, &mut found, Some((&mut fields, plan.shared)))?;
    let end = scan.at;
    if scan.space().is_some() {
        return None;
    }
    if let Some(slot) = plan.root.slot {
        found[slot] = Some(Found::from_text(&text[start..end]));
    }
    Some(Document {
        text,
        not_object: None,
        found,
        fields,
    })
}

struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    /// Skips whitespace; the next byte, if any.
    #[inline]
    fn space(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.at) {
            match b {
                b' ' | b'\n' | b'\t' | b'\r' => self.at += 1,
                _ => return Some(b),
            }
        }
        None
    }

    /// Past the string starting at `self.at` (its opening quote); whether it holds an escape.
    #[inline]
    fn string(&mut self) -> Option<bool> {
        let bytes = self.text.as_bytes();
        let mut at = self.at + 1;
        let mut escaped = false;
        loop {
            // Eight bytes at a time up to the first that is a quote, a backslash or a control
            // character (what serde_json's own reader does).
            while let Some(eight) = bytes.get(at..at + 8) {
                let word = u64::from_le_bytes(eight.try_into().expect("eight bytes"));
                let special = zero_byte(word ^ (ONES * u64::from(b'"')))
                    | zero_byte(word ^ (ONES * u64::from(b'\\')))
                    | below_space(word);
                if special != 0 {
                    // The lowest flag is exact (a borrow only flags bytes above it).
                    at += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                at += 8;
            }
            match *bytes.get(at)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    at += match *bytes.get(at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if bytes.get(at + 2..at + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                        _ => return None,
                    };
                }
                0..=0x1f => return None,
                _ => at += 1,
            }
        }
        self.at = at + 1;
        Some(escaped)
    }

    /// Past the digits from `self.at`; whether there was one.
    #[inline]
    fn digits(&mut self) -> bool {
        let bytes = self.text.as_bytes();
        let from = self.at;
        while bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        self.at > from
    }

    /// Past the number starting at `self.at`.
    fn number(&mut self) -> Option<()> {
        let bytes = self.text.as_bytes();
        if bytes[self.at] == b'-' {
            self.at += 1;
        }
        match *bytes.get(self.at)? {
            // There can be only one leading zero.
            b'0' => {
                self.at += 1;
                if bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if !self.digits() {
                return None;
            }
        }
        if matches!(bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !self.digits() {
                return None;
            }
        }
        Some(())
    }

    /// Past `word` (a literal), which starts at `self.at`.
    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.text.as_bytes().get(self.at..end)? == word).then(|| self.at = end)
    }

    /// Past a key (at its opening quote) and its colon.
    fn key(&mut self) -> Option<()> {
        if self.space()? != b'"' {
            return None;
        }
        self.string()?;
        if self.space()? != b':' {
            return None;
        }
        self.at += 1;
        Some(())
    }

    /// Past the value starting at `self.at` (after whitespace): a scalar, or an array or object
    /// skipped without recursion.
    fn skip(&mut self) -> Option<()> {
        // One bit per open level: set for an object.
        let (mut objects, mut depth) = (0u128, 0u32);
        loop {
            match self.space()? {
                b'"' => {
                    self.string()?;
                }
                b'n' => self.literal(b"null")?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'-' | b'0'..=b'9' => self.number()?,
                open @ (b'[' | b'{') => {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    let object = open == b'{';
                    objects = (objects << 1) | u128::from(object);
                    depth += 1;
                    self.at += 1;
                    let close = if object { b'}' } else { b']' };
                    if self.space()? != close {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                    self.at += 1;
                    objects >>= 1;
                    depth -= 1;
                }
                _ => return None,
            }
            // After a value: the end of it all, a comma, or the end of an enclosing level.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let object = objects & 1 == 1;
                match self.space()? {
                    b',' => {
                        self.at += 1;
                        if object {
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                self.at += 1;
                objects >>= 1;
                depth -= 1;
            }
        }
    }

    /// Past the object at `self.at` (its opening brace), filling the slots of `node`'s
    /// children; at the top level, keeping in `fields` the fields no pointer starts with (all
    /// of them for a shared plan).
    fn object(
        &mut self,
        node: &Node,
        found: &mut [Option<Found<'a>>],
        mut fields: Option<(&mut Kept<'a>, bool)>,
    ) -> Option<()> {
        self.at += 1;
        if self.space()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            if self.space()? != b'"' {
                return None;
            }
            let from = self.at + 1;
            if self.string()? {
                return None;
            }
            let key = &self.text[from..self.at - 1];
            if key == NUMBER_TOKEN || self.space()? != b':' {
                return None;
            }
            self.at += 1;
            self.space()?;
            let start = self.at;
            let child = node.child(key);
            match child {
                Some(child) => self.fill(child, found)?,
                None => self.skip()?,
            }
            if let Some((fields, shared)) = fields.as_mut() {
                if child.is_none() || *shared {
                    fields.push((Cow::Borrowed(key), &self.text[start..self.at]));
                }
            }
            match self.space()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Past the value at `self.at`, filling `node`'s slot and those below it.
    fn fill(&mut self, node: &Node, found: &mut [Option<Found<'a>>]) -> Option<()> {
        let start = self.at;
        if !node.children.is_empty() {
            // A field given again: what the first one filled below is no longer one value.
            node.repeat_below(found, address(&self.text[start..]));
            match self.text.as_bytes()[start] {
                b'{' => self.object(node, found, None)?,
                b'[' => return None,
                // serde reads the string to visit it, and refuses a lone surrogate.
                b'"' if self.string()? => return None,
                b'"' => {}
                _ => self.skip()?,
            }
            if let Some(slot) = node.slot {
                let text = &self.text[start..self.at];
                put(found, slot, Found::from_text(text), address(text));
            }
            return Some(());
        }
        // A leaf: what was scanned says what it is.
        let value = match self.text.as_bytes()[start] {
            b'"' => {
                let escaped = self.string()?;
                let text = &self.text[start..self.at];
                match escaped {
                    false => Found::Str(Cow::Borrowed(&text[1..text.len() - 1])),
                    true => Found::from_text(text),
                }
            }
            b'-' | b'0'..=b'9' => {
                self.number()?;
                Found::Number(Cow::Borrowed(&self.text[start..self.at]))
            }
            _ => {
                self.skip()?;
                Found::from_text(&self.text[start..self.at])
            }
        };
        if let Some(slot) = node.slot {
            put(found, slot, value, address(&self.text[start..]));
        }
        Some(())
    }
}

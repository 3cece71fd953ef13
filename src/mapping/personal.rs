//! What looks like personal data: values by their content (e-mail and IP addresses, phone,
//! card, IBAN, `ddd-dd-dddd` and National Insurance numbers) and fields by their names,
//! matched part by part (`firstName`, `user_email`, `dob`, `phone_number`, `addresses`). The
//! draft proposes masks with it, and the transform scans what goes to jsonb columns with it,
//! so the two agree on what is personal. Pure, and it never returns or keeps a value: only why
//! something looks personal, and where, as a pointer whose keys that may be data are `*`.
//!
//! Written here rather than taken from a crate: the PII-detection crates of the field are
//! large NLP or regex engines for free text; these are a handful of exact shape checks on
//! single JSON values, and must cost next to nothing per value.

use std::net::IpAddr;

use serde_json::Value as Json;
use smallvec::SmallVec;

/// Why a value or a name looks personal. `Display` is the reason the draft writes in its
/// comments and a rejection gives in its detail: never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personal {
    Ip,
    Email,
    Card,
    Phone,
    IdNumber,
    /// A UK National Insurance number.
    Nino,
    Iban,
    /// The field's name says so.
    Name,
}

impl std::fmt::Display for Personal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Personal::Ip => "an IP address",
            Personal::Email => "an e-mail address",
            Personal::Card => "a card number (it passes the Luhn check)",
            Personal::Phone => "a phone number",
            Personal::IdNumber => "a ddd-dd-dddd number, as social security numbers are written",
            Personal::Nino => "a National Insurance number",
            Personal::Iban => "an IBAN (its check digits hold)",
            Personal::Name => "a field whose name says it may identify a person",
        })
    }
}

/// What a string's content is, if it looks personal: checked in this order (an address
/// before a number). Surrounding spaces do not hide a value, an address inside a mailbox or a
/// sentence (`Ada <ada@example.org>`) counts, and so does an address with its port.
pub fn content(s: &str) -> Option<Personal> {
    let s = s.trim();
    if s.len() < 3 {
        return None;
    }
    if s.contains('@') && holds_email(s) {
        return Some(Personal::Email);
    }
    if s.len() > 320 {
        return None;
    }
    if is_ip(s) || s.parse::<std::net::SocketAddr>().is_ok() {
        return Some(Personal::Ip);
    }
    if is_card(s) {
        return Some(Personal::Card);
    }
    if is_phone(s) {
        return Some(Personal::Phone);
    }
    if is_id_number(s) {
        return Some(Personal::IdNumber);
    }
    if is_iban(s) {
        return Some(Personal::Iban);
    }
    if is_nino(s) {
        return Some(Personal::Nino);
    }
    None
}

/// Whether some word of the text is an e-mail address (words split at spaces, brackets,
/// quotes and list separators).
fn holds_email(s: &str) -> bool {
    s.split(|c: char| c.is_whitespace() || "<>()[],;:\"'".contains(c))
        .any(is_email)
}

/// A UK National Insurance number (`AB123456C`, spaces allowed).
pub fn is_nino(s: &str) -> bool {
    if !(9..=13).contains(&s.len()) || !s.as_bytes()[0].is_ascii_uppercase() {
        return false;
    }
    let b: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    b.len() == 9
        && b[..2].iter().all(u8::is_ascii_uppercase)
        && b[2..8].iter().all(u8::is_ascii_digit)
        && matches!(b[8], b'A'..=b'D')
        && !b"DFIQUV".contains(&b[0])
        && !b"DFIOQUV".contains(&b[1])
}

/// An IBAN: a country code, two check digits and up to 30 letters and digits (spaces allowed
/// between groups), whose ISO 7064 mod-97 check holds.
pub fn is_iban(s: &str) -> bool {
    // Cheap refusals before any allocation: most strings are not IBANs.
    let b = s.as_bytes();
    if b.len() < 15 || !b[0].is_ascii_uppercase() || !b[1].is_ascii_uppercase() {
        return false;
    }
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len())
        || !compact[..2].iter().all(u8::is_ascii_uppercase)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
        || !compact[4..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return false;
    }
    let rotated = compact[4..].iter().chain(&compact[..4]);
    let remainder = rotated.fold(0u32, |acc, &b| {
        let value = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b - b'A') + 10
        };
        let acc = if value >= 10 { acc * 100 } else { acc * 10 };
        (acc + value) % 97
    });
    remainder == 1
}

/// An IP address, v4 or v6.
pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// `local@domain.tld`, without spaces.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !s.contains(' ')
}

/// The digits of a string made only of digits and the separators numbers are written with.
fn digits_of(s: &str) -> Option<String> {
    if !s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '+' | '(' | ')' | '.'))
    {
        return None;
    }
    Some(s.chars().filter(char::is_ascii_digit).collect())
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            match i % 2 {
                1 if d * 2 > 9 => d * 2 - 9,
                1 => d * 2,
                _ => d,
            }
        })
        .sum();
    sum % 10 == 0
}

/// 13 to 19 digits that pass the Luhn check and start as card numbers do (2 to 6: Mastercard,
/// Amex, Diners, JCB, Visa, Discover, UnionPay); ids and millisecond timestamps, which start
/// with 1, are not taken for cards.
pub fn is_card(s: &str) -> bool {
    digits_of(s).is_some_and(|d| {
        (13..=19).contains(&d.len())
            && matches!(d.as_bytes()[0], b'2'..=b'6')
            && luhn(&d)
            && !s.contains('+')
    })
}

/// A JSON number that is a card number (a card sent as a number is still a card). Only a
/// whole number of 13 to 19 digits is looked at further.
pub fn number_is_card(n: &serde_json::Number) -> bool {
    n.as_u64()
        .is_some_and(|v| v >= 1_000_000_000_000 && is_card(&v.to_string()))
}

/// 7 to 15 digits written as a phone number is (`+`, spaces or parentheses).
pub fn is_phone(s: &str) -> bool {
    digits_of(s).is_some_and(|d| (7..=15).contains(&d.len()))
        && (s.starts_with('+') || s.contains(' ') || s.contains('('))
}

/// `ddd-dd-dddd`, as a US social security number (and the exercise's device ids) are written.
pub fn is_id_number(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11
        && b[3] == b'-'
        && b[6] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 3 || i == 6 || c.is_ascii_digit())
}

/// A name's words, lower case: split at `_`, `-`, `.`, spaces and camelCase humps
/// (`firstName`, `user_email`, `IPAddress`, `DOB` give `first name`, `user email`, `ip
/// address`, `dob`).
fn words(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut out = Vec::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            continue;
        }
        // A hump: lower or digit then upper (`firstName`), or the last upper of a run
        // followed by a lower (`IPAddress`: `IP`, `Address`).
        let hump = c.is_uppercase()
            && i > 0
            && (chars[i - 1].is_lowercase()
                || chars[i - 1].is_ascii_digit()
                || (chars[i - 1].is_uppercase()
                    && chars.get(i + 1).is_some_and(|n| n.is_lowercase())));
        if hump && !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        word.extend(c.to_lowercase());
    }
    if !word.is_empty() {
        out.push(word);
    }
    // Plurals name the same thing: `addresses`, `phones`, `emails`, `ips`.
    for word in &mut out {
        if word.ends_with("sses") {
            word.truncate(word.len() - 2);
        } else if word.len() >= 3 && word.ends_with('s') && !word.ends_with("ss") {
            word.pop();
        }
    }
    out
}

/// Words that on their own make a field personal.
const PERSONAL_WORDS: [&str; 27] = [
    "email",
    "phone",
    "telephone",
    "tel",
    "mobile",
    "fname",
    "lname",
    "nino",
    "msisdn",
    "ip",
    "ssn",
    "dob",
    "birthday",
    "birthdate",
    "iban",
    "passport",
    "address",
    "street",
    "postcode",
    "zip",
    "username",
    "firstname",
    "lastname",
    "fullname",
    "surname",
    "ipaddress",
    "emailaddress",
];

/// Words before `name` that make it a person's name (`first_name`, `userName`); `name`
/// alone is one too, `product_name` is not.
const NAME_OWNERS: [&str; 16] = [
    "first",
    "last",
    "full",
    "middle",
    "given",
    "family",
    "maiden",
    "user",
    "display",
    "customer",
    "contact",
    "person",
    "sender",
    "recipient",
    "holder",
    "nick",
];

/// Pairs of words that together make a field personal (`device_id`, `card_number`,
/// `date_of_birth` as `date` … `birth`, `national_id`, `tax_id`).
const PERSONAL_PAIRS: [(&str, &str); 9] = [
    ("postal", "code"),
    ("device", "id"),
    ("card", "number"),
    ("card", "no"),
    ("date", "birth"),
    ("birth", "date"),
    ("national", "id"),
    ("tax", "id"),
    ("social", "security"),
];

/// Whether a field's name (a key, or a pointer's last part) says it may identify a person.
pub fn name(field: &str) -> bool {
    // The common name, ASCII without capitals, is split into borrowed words (no humps to
    // find, nothing to lower); another one into owned words.
    if field
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        let words: SmallVec<[&str; 8]> = ascii_words(field).collect();
        return named(&words);
    }
    let words = words(field);
    named(&words.iter().map(String::as_str).collect::<Vec<_>>())
}

/// [`words`] of a name of ASCII without capitals, borrowed from it.
fn ascii_words(name: &str) -> impl Iterator<Item = &str> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|word| {
            // Plurals name the same thing, as in `words`.
            if word.ends_with("sses") {
                &word[..word.len() - 2]
            } else if word.len() >= 3 && word.ends_with('s') && !word.ends_with("ss") {
                &word[..word.len() - 1]
            } else {
                word
            }
        })
}

/// Whether a name of these words says it may identify a person.
fn named(words: &[&str]) -> bool {
    if words.is_empty() {
        return false;
    }
    if words.iter().any(|w| PERSONAL_WORDS.contains(w)) {
        return true;
    }
    if words == ["name"] {
        return true;
    }
    // What follows takes two words or more.
    if words.len() == 1 {
        return false;
    }
    let e_mail = words.windows(2).any(|p| p[0] == "e" && p[1] == "mail");
    let owned_name = words
        .windows(2)
        .any(|p| p[1] == "name" && NAME_OWNERS.contains(&p[0]));
    let pair = PERSONAL_PAIRS.iter().any(|(a, b)| {
        words
            .iter()
            .position(|w| w == a)
            .is_some_and(|i| words[i + 1..].iter().any(|w| w == b))
    });
    e_mail || owned_name || pair
}

/// Whether a key is safe to show as a name: not an address or a number of a personal kind,
/// not long, not mostly digits (an id).
pub fn safe_name(key: &str) -> bool {
    let digits = key.bytes().filter(u8::is_ascii_digit).count();
    content(key).is_none()
        && key.len() <= 40
        && (digits == 0 || digits * 2 < key.len())
        && uuid::Uuid::try_parse(key).is_err()
}

/// The first personal thing in a JSON value (depth first, in key order), and where. A value
/// is personal by its content (a card sent as a number too), or by a key on its way down whose
/// name says so (everything under `address` or `contact_email`; booleans and nulls excepted),
/// or by the name of the field it was taken from (`named_personal`); a key by its content
/// alone (an object keyed by e-mail addresses).
///
/// The pointer never holds a value: a key is written as it is only where it is a field's name
/// (a key of the message itself, when `value` is the message or its `rest`: `top`; or one
/// whose name says it is personal, such as `phone`) and safe to show ([`safe_name`]); any
/// other key, which may be data (a user name keying an object), is `*`, and so are array
/// indexes when `star_arrays`.
pub fn first_in(
    value: &Json,
    named_personal: bool,
    star_arrays: bool,
    top: bool,
) -> Option<(Personal, String)> {
    let mut path = Vec::new();
    let shown = Shown { star_arrays, top };
    find(value, named_personal, shown, 0, &mut path).map(|why| {
        // Steps are written on the way back up, only for what was found: reversed.
        let pointer: String = path.iter().rev().map(|p| format!("/{p}")).collect();
        (why, pointer)
    })
}

/// How much of a pointer [`first_in`] may show.
#[derive(Clone, Copy)]
struct Shown {
    star_arrays: bool,
    /// The scanned value is the message (or its `rest`): its own keys are field names.
    top: bool,
}

/// A step of a pointer that is safe to show: see [`first_in`].
fn step(key: &str, depth: usize, top: bool) -> String {
    if safe_name(key) && ((top && depth == 0) || name(key)) {
        key.replace('~', "~0").replace('/', "~1")
    } else {
        "*".into()
    }
}

/// The first personal thing under `value` (at `depth`); the steps to it pushed onto `path`
/// deepest first, once found (a scan that finds nothing writes no step).
fn find(
    value: &Json,
    under_personal: bool,
    shown: Shown,
    depth: usize,
    path: &mut Vec<String>,
) -> Option<Personal> {
    match value {
        Json::String(s) if under_personal => Some(content(s).unwrap_or(Personal::Name)),
        Json::String(s) => content(s),
        Json::Number(_) if under_personal => Some(Personal::Name),
        Json::Number(n) if number_is_card(n) => Some(Personal::Card),
        Json::Null | Json::Bool(_) | Json::Number(_) => None,
        Json::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let found = find(item, under_personal, shown, depth + 1, path)?;
            path.push(if shown.star_arrays {
                "*".into()
            } else {
                i.to_string()
            });
            Some(found)
        }),
        Json::Object(map) => map.iter().find_map(|(key, item)| {
            let found = content(key)
                .or_else(|| find(item, under_personal || name(key), shown, depth + 1, path))?;
            path.push(step(key, depth, shown.top));
            Some(found)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_matched_by_their_parts() {
        for personal in [
            "email",
            "Email",
            "user_email",
            "contact_email",
            "e-mail",
            "emailAddress",
            "firstName",
            "last_name",
            "userName",
            "username",
            "name",
            "dob",
            "DOB",
            "date_of_birth",
            "birthDate",
            "ssn",
            "phone_number",
            "phoneNumber",
            "mobile",
            "IPAddress",
            "client_ip",
            "remoteIp",
            "device_id",
            "deviceId",
            "card_number",
            "home_address",
            "zip",
            "national_id",
            "addresses",
            "phones",
            "emails",
            "telephone",
            "tel",
            "fname",
            "postal_code",
            "ipAddresses",
        ] {
            assert!(name(personal), "{personal} should look personal");
        }
        for not in [
            "product_name",
            "event_name",
            "file_name",
            "zipped",
            "tip",
            "ship_date",
            "id",
            "order_id",
            "type",
            "created_at",
            "amount",
            "shipping",
            "description",
            "",
        ] {
            assert!(!name(not), "{not} should not look personal");
        }
    }

    proptest::proptest! {
        /// A name of ASCII without capitals has the same words borrowed as owned.
        #[test]
        fn ascii_words_are_the_words(name in "[a-z0-9_ .~-]{0,24}") {
            let borrowed: Vec<&str> = ascii_words(&name).collect();
            proptest::prop_assert_eq!(borrowed, words(&name));
        }

        /// Whatever the name, the way it is split does not change how it is judged.
        #[test]
        fn any_name_is_judged_by_its_words(name in r"\PC{0,16}|[a-zA-Z_]{0,16}") {
            let words = words(&name);
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            proptest::prop_assert_eq!(super::name(&name), named(&words));
        }
    }

    #[test]
    fn contents_are_told_apart_and_ordinary_values_are_not_personal() {
        assert_eq!(content("ann@example.com"), Some(Personal::Email));
        assert_eq!(content("203.0.113.9"), Some(Personal::Ip));
        assert_eq!(content("2001:db8::1"), Some(Personal::Ip));
        assert_eq!(content("4111 1111 1111 1111"), Some(Personal::Card));
        assert_eq!(content("+44 20 7946 0958"), Some(Personal::Phone));
        assert_eq!(content("123-45-6789"), Some(Personal::IdNumber));
        assert_eq!(content("GB82 WEST 1234 5698 7654 32"), Some(Personal::Iban));
        assert_eq!(content("DE89370400440532013000"), Some(Personal::Iban));
        assert_eq!(
            content("GB82 WEST 1234 5698 7654 33"),
            None,
            "check digits fail"
        );
        assert_eq!(content("Ada <ada@example.org>"), Some(Personal::Email));
        assert_eq!(
            content("write to ada@example.org, please"),
            Some(Personal::Email)
        );
        assert_eq!(content(" ann@example.com "), Some(Personal::Email));
        assert_eq!(content("203.0.113.9:443"), Some(Personal::Ip));
        assert_eq!(content("[2001:db8::1]:8080"), Some(Personal::Ip));
        assert_eq!(content("AB 12 34 56 C"), Some(Personal::Nino));
        // Ids and millisecond timestamps that happen to pass the Luhn check are not cards.
        assert_eq!(content("1700000000006"), None);
        let number = |text: &str| serde_json::from_str::<serde_json::Number>(text).unwrap();
        assert!(number_is_card(&number("4111111111111111")));
        assert!(!number_is_card(&number("1700000000006")));
        assert!(!number_is_card(&number("4111111111111111.5")));
        assert!(!number_is_card(&number("17")));
        for not in [
            "hello",
            "2023-10-11",
            "2023-10-11T12:00:00Z",
            "3.2.1",
            "42",
            "c0a8d2a4-1f2e-4b3c-9d8e-7f6a5b4c3d2e",
            "ab",
            "",
        ] {
            assert_eq!(content(not), None, "{not}");
        }
    }
}

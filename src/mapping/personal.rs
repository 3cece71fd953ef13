//! What looks like personal data: values by their content (e-mail and IP addresses, phone,
//! card and `ddd-dd-dddd` numbers) and fields by their names, matched part by part
//! (`firstName`, `user_email`, `dob`, `phone_number`). The draft proposes masks with it, and
//! the transform scans what goes to jsonb columns with it, so the two agree on what is
//! personal. Pure, and it never returns or keeps a value: only why it looks personal.
//!
//! Written here rather than taken from a crate: the PII-detection crates of the field are
//! large NLP or regex engines for free text; these are a handful of exact shape checks on
//! single JSON values, and must cost next to nothing per value.

use std::net::IpAddr;

/// Why a value or a name looks personal. `Display` is the reason the draft writes in its
/// comments and a rejection gives in its detail: never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personal {
    Ip,
    Email,
    Card,
    Phone,
    IdNumber,
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
            Personal::Name => "a field whose name says it may identify a person",
        })
    }
}

/// What a string's content is, if it looks personal: checked in this order (an address
/// before a number).
pub fn content(s: &str) -> Option<Personal> {
    // Cheap refusals first: every shape below needs a digit, an `@` or a `:`.
    if s.len() < 3 || s.len() > 320 {
        return None;
    }
    if is_email(s) {
        return Some(Personal::Email);
    }
    if is_ip(s) {
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
    None
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

/// 13 to 19 digits that pass the Luhn check.
pub fn is_card(s: &str) -> bool {
    digits_of(s).is_some_and(|d| (13..=19).contains(&d.len()) && luhn(&d) && !s.contains('+'))
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
    out
}

/// Words that on their own make a field personal.
const PERSONAL_WORDS: [&str; 22] = [
    "email",
    "phone",
    "mobile",
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
const PERSONAL_PAIRS: [(&str, &str); 8] = [
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
    let words = words(field);
    if words.is_empty() {
        return false;
    }
    if words.iter().any(|w| PERSONAL_WORDS.contains(&w.as_str())) {
        return true;
    }
    if words == ["name"] {
        return true;
    }
    let e_mail = words.windows(2).any(|p| p[0] == "e" && p[1] == "mail");
    let owned_name = words
        .windows(2)
        .any(|p| p[1] == "name" && NAME_OWNERS.contains(&p[0].as_str()));
    let pair = PERSONAL_PAIRS.iter().any(|(a, b)| {
        words
            .iter()
            .position(|w| w == a)
            .is_some_and(|i| words[i + 1..].iter().any(|w| w == b))
    });
    e_mail || owned_name || pair
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

    #[test]
    fn contents_are_told_apart_and_ordinary_values_are_not_personal() {
        assert_eq!(content("ann@example.com"), Some(Personal::Email));
        assert_eq!(content("203.0.113.9"), Some(Personal::Ip));
        assert_eq!(content("2001:db8::1"), Some(Personal::Ip));
        assert_eq!(content("4111 1111 1111 1111"), Some(Personal::Card));
        assert_eq!(content("+44 20 7946 0958"), Some(Personal::Phone));
        assert_eq!(content("123-45-6789"), Some(Personal::IdNumber));
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

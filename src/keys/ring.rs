//! Masking keys as the operator holds them: one key from the environment or a file, or a key
//! ring file with several keys of which one is active. The ring lets a rotation keep the old key
//! for `unmask`, `rejects show` and `rekey` while runs write under the new one.
//!
//! Ring format (TOML, mode 600; `sqs2pg keygen --ring FILE` writes it):
//!
//! ```toml
//! active = "LW8Ob-y2"          # the key id runs mask with
//!
//! [[keys]]
//! id = "LW8Ob-y2"               # derived from the key; checked on load
//! created = "2026-11-25T14:20:00Z"
//! key = "AAECAwQF..."           # base64, at least 32 bytes
//! ```
//!
//! Key ids are derived from the key material ([`MaskKey::key_id`]), so a ring cannot name a key
//! wrongly: an `id` that does not match its `key` is refused. Key text is held in
//! [`Zeroizing`] buffers and wiped when dropped; nothing here prints key material (errors name
//! the entry by position and id only).

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

use super::{KeyError, MaskKey};

/// Secret text from the command line or the environment (the base64 key of `SQS2PG_MASK_KEY`):
/// wiped from memory when dropped, and printed as `<redacted>`.
#[derive(Clone)]
pub struct KeyText(Zeroizing<String>);

impl KeyText {
    /// The text itself, for decoding.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyText {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(Zeroizing::new(s.to_owned())))
    }
}

impl fmt::Debug for KeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyText(<redacted>)")
    }
}

/// One key of a ring.
#[derive(Debug, Clone)]
pub struct RingKey {
    pub id: String,
    /// When it was made (RFC 3339), as written by `keygen`; informational.
    pub created: Option<String>,
    pub key: MaskKey,
}

/// Why a ring file was refused. Never carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("not a key ring: {0}")]
    Format(String),
    #[error("key {position} ({id}): {error}")]
    Key {
        position: usize,
        id: String,
        error: KeyError,
    },
    #[error("key {position}: its id is {id:?}, but its key material has id {derived:?}; fix the id or remove the entry")]
    WrongId {
        position: usize,
        id: String,
        derived: String,
    },
    #[error("key {0} appears twice")]
    Duplicate(String),
    #[error("the active key {0:?} is not in the ring (ids: {1})")]
    NoActive(String, String),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RingFile {
    active: String,
    #[serde(default)]
    keys: Vec<RingEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RingEntry {
    id: String,
    created: Option<String>,
    key: Zeroizing<String>,
}

/// The operator's keys: one active (runs mask and seal with it), the others kept for reading
/// what was written under them.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<RingKey>,
    active: usize,
}

impl KeyRing {
    /// A ring of one key (from `SQS2PG_MASK_KEY` or `SQS2PG_MASK_KEY_FILE`).
    pub fn single(key: MaskKey) -> Self {
        Self {
            keys: vec![RingKey {
                id: key.key_id(),
                created: None,
                key,
            }],
            active: 0,
        }
    }

    /// Reads a ring file's text.
    pub fn parse(text: &str) -> Result<Self, RingError> {
        // toml's own error text quotes the offending line and serde's quotes the value, either
        // of which may be a key: only the line and the message with quoted text removed.
        let file: RingFile = toml::from_str(text).map_err(|e| {
            let message = redact_quoted(e.message());
            RingError::Format(match e.span() {
                Some(span) => format!(
                    "at line {}: {message}",
                    text[..span.start].lines().count().max(1),
                ),
                None => message,
            })
        })?;
        let mut keys: Vec<RingKey> = Vec::with_capacity(file.keys.len());
        for (i, entry) in file.keys.into_iter().enumerate() {
            let position = i + 1;
            let key = MaskKey::from_base64(&entry.key).map_err(|error| RingError::Key {
                position,
                id: entry.id.clone(),
                error,
            })?;
            let derived = key.key_id();
            if derived != entry.id {
                return Err(RingError::WrongId {
                    position,
                    id: entry.id,
                    derived,
                });
            }
            if keys.iter().any(|k| k.id == entry.id) {
                return Err(RingError::Duplicate(entry.id));
            }
            keys.push(RingKey {
                id: entry.id,
                created: entry.created,
                key,
            });
        }
        let active = keys
            .iter()
            .position(|k| k.id == file.active)
            .ok_or_else(|| RingError::NoActive(file.active.clone(), ids(&keys)))?;
        Ok(Self { keys, active })
    }

    /// The key runs mask and seal with.
    pub fn active(&self) -> &MaskKey {
        &self.keys[self.active].key
    }

    /// The active key's id.
    pub fn active_id(&self) -> &str {
        &self.keys[self.active].id
    }

    /// The key with this id, if the ring holds it.
    pub fn get(&self, id: &str) -> Option<&MaskKey> {
        self.keys.iter().find(|k| k.id == id).map(|k| &k.key)
    }

    /// Every key, in file order.
    pub fn keys(&self) -> &[RingKey] {
        &self.keys
    }

    /// The ids, comma-separated, for messages.
    pub fn ids(&self) -> String {
        ids(&self.keys)
    }
}

/// `text` with everything between double quotes replaced by `"…"`.
fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('"').enumerate() {
        out.push_str(if i % 2 == 1 { "…" } else { part });
        out.push('"');
    }
    out.pop();
    out
}

fn ids(keys: &[RingKey]) -> String {
    let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    ids.join(", ")
}

const RING_HEADER: &str = "# sqs2pg masking key ring, written by `sqs2pg keygen --ring`.\n\
# Keep it mode 600 and out of version control. `active` is the key runs mask with; the others\n\
# stay readable for unmask, rejects show and rekey. Ids are derived from the keys.\n";

/// The ring file text with `key` added (`existing` is the file's current text, if it exists),
/// and the new key's id. Existing entries and comments are kept as they are: the entry is
/// appended, and `activate` (or a new ring) points `active` at it. The result is parsed again
/// before it is returned, so a file this returns is always a valid ring that still holds every
/// earlier key.
pub fn add_key(
    existing: Option<&str>,
    key: &MaskKey,
    key_base64: &str,
    created: &str,
    activate: bool,
) -> Result<(Zeroizing<String>, String), RingError> {
    let id = key.key_id();
    let entry = Zeroizing::new(format!(
        "\n[[keys]]\nid = \"{id}\"\ncreated = \"{created}\"\nkey = \"{key_base64}\"\n"
    ));
    let (text, before) = match existing {
        None => (
            Zeroizing::new(format!(
                "{RING_HEADER}active = \"{id}\"\n{}",
                entry.as_str()
            )),
            None,
        ),
        Some(old) => {
            let ring = KeyRing::parse(old)?;
            if ring.get(&id).is_some() {
                return Err(RingError::Duplicate(id));
            }
            let mut text = Zeroizing::new(String::with_capacity(old.len() + entry.len()));
            let mut in_top_level = true;
            for line in old.lines() {
                let trimmed = line.trim_start();
                if trimmed.starts_with('[') {
                    in_top_level = false;
                }
                if activate && in_top_level && is_active_line(trimmed) {
                    text.push_str(&format!("active = \"{id}\""));
                } else {
                    text.push_str(line);
                }
                text.push('\n');
            }
            text.push_str(&entry);
            (text, Some(ring))
        }
    };
    let after = KeyRing::parse(&text)?;
    let expected_active = match &before {
        Some(ring) if !activate => ring.active_id().to_owned(),
        _ => id.clone(),
    };
    let kept = before.as_ref().is_none_or(|ring| {
        ring.keys().iter().all(|k| after.get(&k.id).is_some())
            && after.keys().len() == ring.keys().len() + 1
    });
    if after.active_id() != expected_active || !kept {
        return Err(RingError::Format(
            "the ring's `active = ...` line could not be updated (write it on a line of its own, before the first [[keys]])".into(),
        ));
    }
    Ok((text, id))
}

fn is_active_line(line: &str) -> bool {
    line.strip_prefix("active")
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    use super::*;

    fn key(byte: u8) -> (MaskKey, String) {
        let text = STANDARD.encode([byte; 32]);
        (MaskKey::from_base64(&text).unwrap(), text)
    }

    #[test]
    fn keygen_adds_keys_without_touching_the_others_and_activates_on_request() {
        let (k1, t1) = key(1);
        let (k2, t2) = key(2);
        let (k3, t3) = key(3);
        let (text, id1) = add_key(None, &k1, &t1, "2026-11-25T00:00:00Z", false).unwrap();
        let ring = KeyRing::parse(&text).unwrap();
        assert_eq!(
            (ring.active_id(), id1.as_str()),
            (k1.key_id().as_str(), ring.active_id())
        );
        let with_comment = format!("{}# operator's note\n", text.as_str());
        let (text, id2) =
            add_key(Some(&with_comment), &k2, &t2, "2026-11-26T00:00:00Z", false).unwrap();
        let ring = KeyRing::parse(&text).unwrap();
        assert_eq!(ring.active_id(), id1, "not activated unless asked");
        assert!(text.contains("# operator's note"));
        assert_eq!(ring.keys().len(), 2);
        let (text, id3) = add_key(Some(&text), &k3, &t3, "2026-11-27T00:00:00Z", true).unwrap();
        let ring = KeyRing::parse(&text).unwrap();
        assert_eq!(ring.active_id(), id3);
        assert!(ring.get(&id1).is_some() && ring.get(&id2).is_some());
        assert_eq!(
            ring.keys()[1].created.as_deref(),
            Some("2026-11-26T00:00:00Z")
        );
        assert_eq!(
            add_key(Some(&text), &k2, &t2, "x", true).unwrap_err(),
            RingError::Duplicate(id2)
        );
    }

    #[test]
    fn rings_that_lie_or_lack_their_active_key_are_refused_without_showing_keys() {
        let (k1, t1) = key(1);
        let (_, t2) = key(2);
        let wrong_id = format!(
            "active = \"{0}\"\n[[keys]]\nid = \"{0}\"\nkey = \"{t2}\"\n",
            k1.key_id()
        );
        let e = KeyRing::parse(&wrong_id).unwrap_err();
        assert!(matches!(e, RingError::WrongId { position: 1, .. }), "{e}");
        let no_active = format!(
            "active = \"nope\"\n[[keys]]\nid = \"{}\"\nkey = \"{t1}\"\n",
            k1.key_id()
        );
        let e = KeyRing::parse(&no_active).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains(&k1.key_id()), "{e}");
        let twice = format!(
            "{no_active}[[keys]]\nid = \"{}\"\nkey = \"{t1}\"\n",
            k1.key_id()
        )
        .replace("nope", &k1.key_id());
        assert_eq!(
            KeyRing::parse(&twice).unwrap_err(),
            RingError::Duplicate(k1.key_id())
        );
        let short = "active = \"a\"\n[[keys]]\nid = \"a\"\nkey = \"c2hvcnQ=\"\n";
        assert!(matches!(
            KeyRing::parse(short).unwrap_err(),
            RingError::Key {
                error: KeyError::TooShort(5),
                ..
            }
        ));
        let typo = format!("active = \"a\"\n[[keys]]\nid = \"a\"\nkee = \"{t1}\"\n");
        let wrong_type = format!("active = \"a\"\nkeys = \"{t1}\"\n");
        let e = KeyRing::parse(&wrong_type).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        for text in [wrong_id, typo, wrong_type] {
            let e = KeyRing::parse(&text).unwrap_err().to_string();
            assert!(!e.contains(&t1) && !e.contains(&t2), "{e}");
        }
    }

    #[test]
    fn key_text_debug_prints_nothing_of_the_key() {
        let (_, t1) = key(1);
        let text: KeyText = t1.parse().unwrap();
        assert_eq!(text.expose(), t1);
        assert!(!format!("{text:?}").contains(&t1));
    }
}

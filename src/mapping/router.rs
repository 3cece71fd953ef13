//! Several mappings over one stream: the [`Router`], a message kind whose tables are its
//! mappings' tables. A message is parsed once and unwrapped once per envelope the mappings
//! use; each mapping takes the documents its `match` takes, and gives rows for its own table
//! (a row's target is its mapping's index). A message several mappings take gives rows in
//! each, committed in one transaction under one ledger entry; one that a mapping takes and
//! then refuses (a missing field, a failed check) is quarantined with that mapping's reason;
//! one that none takes is `no_mapping`.

use std::collections::HashSet;

use crate::keys::MaskKey;
use crate::kind::{CopyRows, Message, MessageKind, Rejection, TableWrite, Transformed};

use super::document::Plan;
use super::file::Envelope;
use super::transform::{read, unwrap};
use super::{Mapper, Mapping, MappingError};

/// Several mappings as one message kind.
pub struct Router {
    mappers: Vec<Mapper>,
    /// The envelopes the mappings use, each unwrapped once per message.
    envelopes: Vec<Envelope>,
    name: String,
}

impl Router {
    /// The kind for `mappings` (at least one), keyed by `key`. Two mappings of one table are
    /// refused: their rows would need one shape and one write mode.
    pub fn new(mappings: Vec<Mapping>, key: &MaskKey) -> Result<Self, MappingError> {
        let mut tables = HashSet::new();
        for m in &mappings {
            if !tables.insert(m.table.clone()) {
                return Err(MappingError(format!(
                    "two mappings write to table {}: give each table one mapping (one `match` can take several types: `match = {{ field = \"/type\", in = [\"a\", \"b\"] }}`)",
                    m.table
                )));
            }
        }
        if mappings.is_empty() {
            return Err(MappingError("no mapping given".into()));
        }
        let mut envelopes = Vec::new();
        for m in &mappings {
            if !envelopes.contains(&m.envelope) {
                envelopes.push(m.envelope);
            }
        }
        let name = mappings
            .iter()
            .map(|m| m.table.as_str())
            .collect::<Vec<_>>()
            .join("+");
        // One plan for every mapping: a message is read once, whatever each mapping reads.
        let mut plan = Plan::default();
        if mappings.len() > 1 {
            plan.share();
        }
        let mut mappers: Vec<Mapper> = mappings
            .into_iter()
            .map(|m| Mapper::planned(m, key, &mut plan))
            .collect();
        let plan = std::sync::Arc::new(plan);
        for mapper in &mut mappers {
            mapper.set_plan(plan.clone());
        }
        Ok(Self {
            mappers,
            envelopes,
            name,
        })
    }

    /// The mappers, in target order.
    pub fn mappers(&self) -> &[Mapper] {
        &self.mappers
    }
}

impl MessageKind for Router {
    fn name(&self) -> &str {
        &self.name
    }

    fn writes(&self) -> Vec<TableWrite> {
        self.mappers
            .iter()
            .map(|m| m.mapping().table_write())
            .collect()
    }

    fn transform(&self, message: &Message<'_>) -> Transformed {
        let (outcome, (unknown_fields, new_unknown)) =
            self.route(message, |mapper, documents, fields, unknown| {
                mapper.take_from(documents, fields, message, unknown)
            });
        let outcome = outcome.map(|taken| {
            let mut rows = CopyRows::default();
            for (index, mapped) in taken {
                let target = u16::try_from(index).expect("fewer than 65536 mappings");
                rows.append_to(target, &mapped);
            }
            rows
        });
        Transformed {
            outcome,
            unknown_fields,
            new_unknown,
        }
    }
}

/// What each mapping made of a message, by mapping index.
type Routed<T> = Result<Vec<(usize, T)>, Rejection>;

impl Router {
    /// Each mapping's rows of `message` as values (what `mapping preview` shows): the same
    /// routing as the run's.
    pub fn apply(&self, message: &Message<'_>) -> Routed<Vec<super::MappedRow>> {
        self.route(message, |mapper, documents, fields, _| {
            mapper.rows_from(documents, fields, message)
        })
        .0
    }

    /// Parses `message` once, unwraps it once per envelope, and asks each mapping (`each`)
    /// for what it makes of the documents: the mappings that take it, in order, or why it
    /// gives nothing; and the unknown fields of the first that takes it.
    fn route<T>(
        &self,
        message: &Message<'_>,
        mut each: impl FnMut(
            &Mapper,
            &[super::document::Document<'_>],
            &super::transform::EnvelopeFields,
            &mut (u32, Vec<String>),
        ) -> Result<Option<T>, Rejection>,
    ) -> (Routed<T>, (u32, Vec<String>)) {
        // One unwrap per envelope in use; a body that is not JSON is refused at once.
        let mut unwrapped = Vec::with_capacity(self.envelopes.len());
        for envelope in &self.envelopes {
            match unwrap(*envelope, message.body) {
                Err(rejection) if rejection.reason == "not_json" => {
                    return (Err(rejection), Default::default())
                }
                opened => unwrapped.push((*envelope, opened)),
            }
        }
        let plan = self.mappers[0].plan();
        let mut read_through = Vec::with_capacity(unwrapped.len());
        for (envelope, opened) in &unwrapped {
            let documents = match opened {
                Ok((texts, fields)) => match read(plan, *envelope, texts) {
                    Ok(documents) => Ok((documents, fields)),
                    // The bare body itself (an SNS `Message` that is not JSON is that
                    // envelope's refusal).
                    Err(rejection) if *envelope == Envelope::None => {
                        return (Err(rejection), Default::default())
                    }
                    Err(rejection) => Err(rejection),
                },
                Err(refusal) => Err(refusal.clone()),
            };
            read_through.push((*envelope, documents));
        }
        let mut taken = Vec::new();
        let mut envelope_refusal = None;
        // The unknown fields of the first mapping that takes the message (another mapping's
        // columns may know them; counted once either way).
        let mut unknown: Option<(u32, Vec<String>)> = None;
        for (index, mapper) in self.mappers.iter().enumerate() {
            let envelope = mapper.mapping().envelope;
            let Some((_, opened)) = read_through.iter().find(|(e, _)| *e == envelope) else {
                continue;
            };
            let (documents, fields) = match opened {
                Ok(opened) => opened,
                Err(refusal) => {
                    // Not this mapping's envelope: not taken by it.
                    envelope_refusal.get_or_insert_with(|| refusal.clone());
                    continue;
                }
            };
            let mut counted = (0u32, Vec::new());
            match each(mapper, documents, fields, &mut counted) {
                Err(rejection) => return (Err(rejection), counted),
                Ok(None) => {}
                Ok(Some(made)) => {
                    unknown.get_or_insert(counted);
                    taken.push((index, made));
                }
            }
        }
        let unknown = unknown.unwrap_or_default();
        if !taken.is_empty() {
            return (Ok(taken), unknown);
        }
        let refusal = match envelope_refusal.filter(|_| self.envelopes.len() == 1) {
            Some(refusal) => refusal,
            None => Rejection::new(
                "no_mapping",
                format!("none of the {} mappings takes it", self.mappers.len()),
            ),
        };
        (Err(refusal), unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(table: &str, matcher: &str, required: bool) -> Mapping {
        Mapping::parse(&format!(
            "table = \"{table}\"\n{matcher}\ncolumns = [{{ name = \"id\", from = \"/id\", type = \"integer\", required = {required} }}]\n"
        ))
        .unwrap()
    }

    fn router() -> Router {
        let key = MaskKey::from_base64("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2A=").unwrap();
        Router::new(
            vec![
                mapping(
                    "public.a",
                    r#"match = { field = "/type", in = ["a", "both"] }"#,
                    true,
                ),
                mapping(
                    "public.b",
                    r#"match = { field = "/type", in = ["b", "both"] }"#,
                    false,
                ),
            ],
            &key,
        )
        .unwrap()
    }

    fn targets(body: &str) -> Result<Vec<(u16, usize)>, String> {
        let message = Message::new(body, "m-1", 1_700_000_000_000);
        router()
            .transform(&message)
            .outcome
            .map(|rows| rows.parts().map(|(t, b)| (t, b.len())).collect())
            .map_err(|r| r.reason)
    }

    #[test]
    fn each_mapping_that_takes_a_message_gives_rows_for_its_own_table() {
        assert_eq!(targets(r#"{"type":"a","id":1}"#).unwrap().len(), 1);
        assert_eq!(targets(r#"{"type":"a","id":1}"#).unwrap()[0].0, 0);
        assert_eq!(targets(r#"{"type":"b","id":1}"#).unwrap()[0].0, 1);
        let both = targets(r#"{"type":"both","id":1}"#).unwrap();
        assert_eq!(both.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(router().writes().len(), 2);
    }

    #[test]
    fn a_message_none_takes_is_no_mapping_and_one_a_mapping_refuses_is_refused() {
        assert_eq!(targets(r#"{"type":"c","id":1}"#).unwrap_err(), "no_mapping");
        // Taken by both, refused by the one that requires the id: the message is refused.
        assert_eq!(
            targets(r#"{"type":"both"}"#).unwrap_err(),
            "missing_field:id"
        );
        assert_eq!(targets("{").unwrap_err(), "not_json");
    }

    /// A document that is not an object is refused only by a mapping that takes it: another
    /// may take it whole.
    #[test]
    fn a_document_that_is_not_an_object_goes_to_the_mapping_that_takes_it() {
        let key = MaskKey::from_base64("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2A=").unwrap();
        let events = mapping(
            "public.events",
            r#"match = { attribute = "type", equals = "event" }"#,
            true,
        );
        let raw = Mapping::parse(
            "table = \"public.raw\"\nmatch = { attribute = \"type\", equals = \"raw\" }\ncolumns = [{ name = \"body\", from = \"body\", type = \"jsonb\" }]\n",
        )
        .unwrap();
        let router = Router::new(vec![events, raw], &key).unwrap();
        let sent = |kind: &str| {
            let attributes = [("type".to_owned(), kind.to_owned())];
            let message = Message {
                attributes: &attributes,
                ..Message::new("[1, 2]", "m-1", 1_700_000_000_000)
            };
            router
                .transform(&message)
                .outcome
                .map(|rows| rows.parts().map(|(t, _)| t).collect::<Vec<_>>())
                .map_err(|r| r.reason)
        };
        assert_eq!(sent("raw").unwrap(), [1]);
        assert_eq!(sent("event").unwrap_err(), "not_an_object");
    }

    #[test]
    fn two_mappings_of_one_table_are_refused() {
        let key = MaskKey::from_base64("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2A=").unwrap();
        let e = Router::new(
            vec![
                mapping("public.a", "", false),
                mapping("public.a", "", false),
            ],
            &key,
        )
        .err()
        .unwrap();
        assert!(e.0.contains("public.a"), "{e}");
    }
}

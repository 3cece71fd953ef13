//! The XML answers of the SQS query protocol, read into a small element tree.
//!
//! The parsing is quick-xml's. We build our own tree instead of using quick-xml's serde
//! support because that deserializer trims leading and trailing whitespace from text, which
//! would change message bodies (and then fail their MD5 check): here text is kept exactly as
//! sent, with entity and character references resolved (SQS sends `\r` as `&#xD;`).

use quick_xml::events::Event;
use quick_xml::Reader;

/// One element: its local name (namespace prefix dropped), its text and its child elements.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// Parses a whole document and returns its root element.
    pub fn parse(xml: &[u8]) -> Result<Element, String> {
        let mut reader = Reader::from_reader(xml);
        let mut open: Vec<Element> = Vec::new();
        let mut root = None;
        let mut buf = Vec::new();
        loop {
            let event = reader
                .read_event_into(&mut buf)
                .map_err(|e| format!("malformed XML at byte {}: {e}", reader.error_position()))?;
            match event {
                Event::Start(start) => open.push(Element {
                    name: local_name(start.local_name().as_ref())?,
                    ..Element::default()
                }),
                Event::Empty(empty) => {
                    let element = Element {
                        name: local_name(empty.local_name().as_ref())?,
                        ..Element::default()
                    };
                    attach(&mut open, &mut root, element)?;
                }
                Event::End(_) => {
                    let element = open.pop().ok_or("closing tag without an opening one")?;
                    attach(&mut open, &mut root, element)?;
                }
                Event::Text(text) => {
                    if let Some(current) = open.last_mut() {
                        let text = text
                            .decode()
                            .map_err(|e| format!("text is not UTF-8: {e}"))?;
                        current.text.push_str(&text);
                    }
                }
                Event::CData(data) => {
                    if let Some(current) = open.last_mut() {
                        let data = data
                            .decode()
                            .map_err(|e| format!("CDATA is not UTF-8: {e}"))?;
                        current.text.push_str(&data);
                    }
                }
                Event::GeneralRef(reference) => {
                    if let Some(current) = open.last_mut() {
                        current.text.push(resolve(&reference)?);
                    }
                }
                Event::Eof => break,
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            }
            buf.clear();
        }
        if !open.is_empty() {
            return Err(format!(
                "document ends inside <{}>",
                open[open.len() - 1].name
            ));
        }
        root.ok_or_else(|| "no XML element in the answer".to_owned())
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`, in document order.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child named `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// Code and message of an SQS error answer: `<ErrorResponse><Error>` (SQS) or
    /// `<ErrorResponse><Errors><Error>` (moto's signature errors).
    pub fn error_code(&self) -> Option<(&str, &str)> {
        let error = self
            .child("Error")
            .or_else(|| self.child("Errors")?.child("Error"))?;
        Some((
            error.text_of("Code")?,
            error.text_of("Message").unwrap_or(""),
        ))
    }

    /// The `Name`/`Value` pairs of the children named `name` (SQS's attribute lists).
    pub fn name_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.children(name)
            .filter_map(|a| Some((a.text_of("Name")?, a.text_of("Value")?)))
    }
}

fn attach(
    open: &mut [Element],
    root: &mut Option<Element>,
    element: Element,
) -> Result<(), String> {
    match open.last_mut() {
        Some(parent) => parent.children.push(element),
        None if root.is_none() => *root = Some(element),
        None => return Err("more than one root element".into()),
    }
    Ok(())
}

fn local_name(name: &[u8]) -> Result<String, String> {
    String::from_utf8(name.to_vec()).map_err(|_| "element name is not UTF-8".to_owned())
}

/// `&amp;`, `&lt;`, ... and `&#xD;` / `&#13;`.
fn resolve(reference: &quick_xml::events::BytesRef<'_>) -> Result<char, String> {
    if let Some(c) = reference
        .resolve_char_ref()
        .map_err(|e| format!("bad character reference: {e}"))?
    {
        return Ok(c);
    }
    let name = reference
        .decode()
        .map_err(|e| format!("entity name is not UTF-8: {e}"))?;
    quick_xml::escape::resolve_xml_entity(&name)
        .and_then(|s| s.chars().next())
        // Said by its length only: an answer's text can hold message bodies.
        .ok_or_else(|| format!("an unknown entity of {} bytes", name.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_kept_exactly_with_references_resolved() {
        let xml = br#"<?xml version='1.0' encoding='utf-8'?>
<R xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><M><Body>  {"a": "x &amp; &lt;y&gt;"}&#xD;
 </Body><Empty/><C><![CDATA[<raw>]]></C></M><M><Body>b</Body></M></R>"#;
        let root = Element::parse(xml).unwrap();
        assert_eq!(root.name, "R");
        let bodies: Vec<&str> = root
            .children("M")
            .filter_map(|m| m.text_of("Body"))
            .collect();
        assert_eq!(bodies, ["  {\"a\": \"x & <y>\"}\r\n ", "b"]);
        let first = root.child("M").unwrap();
        assert_eq!(first.text_of("Empty"), Some(""));
        assert_eq!(first.text_of("C"), Some("<raw>"));
        assert_eq!(first.text_of("Missing"), None);
    }

    #[test]
    fn attribute_lists_read_as_pairs() {
        let xml = b"<M><Attribute><Name>SentTimestamp</Name><Value>17</Value></Attribute>\
            <Attribute><Name>ApproximateReceiveCount</Name><Value>2</Value></Attribute></M>";
        let root = Element::parse(xml).unwrap();
        let pairs: Vec<_> = root.name_values("Attribute").collect();
        assert_eq!(
            pairs,
            [("SentTimestamp", "17"), ("ApproximateReceiveCount", "2")]
        );
    }

    #[test]
    fn error_codes_in_both_shapes() {
        let sqs = b"<ErrorResponse><Error><Type>Sender</Type><Code>AWS.SimpleQueueService.NonExistentQueue</Code>\
            <Message>gone</Message></Error><RequestId>1</RequestId></ErrorResponse>";
        let moto = b"<ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code></Error></Errors></ErrorResponse>";
        assert_eq!(
            Element::parse(sqs).unwrap().error_code(),
            Some(("AWS.SimpleQueueService.NonExistentQueue", "gone"))
        );
        assert_eq!(
            Element::parse(moto).unwrap().error_code(),
            Some(("SignatureDoesNotMatch", ""))
        );
        assert_eq!(Element::parse(b"<a/>").unwrap().error_code(), None);
    }

    #[test]
    fn broken_documents_are_errors() {
        for bad in [
            &b"{}"[..],
            b"<a><b></a>",
            b"<a>",
            b"<a/><b/>",
            b"<a>&bogus;</a>",
        ] {
            assert!(
                Element::parse(bad).is_err(),
                "{:?} parsed",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

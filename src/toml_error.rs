//! TOML parse errors told by line and key, never by value: the configuration file and mapping
//! files both hold secrets or personal data at times (a password in a URL, a key pasted into
//! the wrong file), and an error message is printed and logged.

/// "line N, key `K`: what is wrong", with every quoted value in the message replaced by
/// `"…"`. The key is named only when it looks like ours (lower case, digits, `_`, `-`, `.`, at
/// most 32 characters, as every setting and mapping key is): a line of another file (a base64
/// key ends in `=`) is never echoed.
pub fn describe(text: &str, error: &toml::de::Error) -> String {
    let mut message = String::with_capacity(error.message().len());
    let mut quoted = false;
    for c in error.message().trim_end().chars() {
        match (c, quoted) {
            ('"', false) => {
                message.push_str("\"…");
                quoted = true;
            }
            ('"', true) => {
                message.push('"');
                quoted = false;
            }
            (_, true) => {}
            (c, false) => message.push(if c == '\n' { ' ' } else { c }),
        }
    }
    let Some(span) = error.span() else {
        return message;
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(key, _)| key.trim())
        .filter(|key| {
            key.len() <= 32
                && key.starts_with(|c: char| c.is_ascii_lowercase())
                && key.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
                })
        });
    match key {
        Some(key) => format!("line {line}, key `{key}`: {message}"),
        None => format!("line {line}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_is_not_a_key_is_never_echoed() {
        let key_file = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2A=\n";
        let error = toml::from_str::<toml::Table>(key_file).unwrap_err();
        let text = describe(key_file, &error);
        assert!(
            text.starts_with("line 1") && !text.contains("QUJD"),
            "{text}"
        );
        let config = "database_url = \"postgres://u:hunter2@h/d\"\nport = \"x\" y\n";
        let error = toml::from_str::<toml::Table>(config).unwrap_err();
        let text = describe(config, &error);
        assert!(!text.contains("hunter2"), "{text}");
    }
}

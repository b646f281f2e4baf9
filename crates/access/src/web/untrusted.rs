//! Values a stranger chose (a client's `client_name`, a tool name, a provider's error body, an
//! email from an identity provider) on their way into the text log. Written raw, a newline forges
//! a whole log line (`\n... INFO postern::audit: event="sign_in" user=admin@corp`) and ESC or BEL
//! bytes drive the terminal `postern up` runs in; written whole, a 900 KB value writes 900 KB per
//! request. [`Untrusted`] prints such a value quoted, escaped and capped: log it as
//! `field = %Untrusted(value)`.

use std::fmt::{self, Write as _};

/// How much of an untrusted value reaches the log, in bytes of the original.
pub const LOG_CAP: usize = 256;

/// A string that came from outside, printed (`Display`) in double quotes with control
/// characters, quotes, backslashes and invisible formatting characters escaped, and cut after
/// [`LOG_CAP`] bytes with the number of bytes left out: `"abc…(+900 bytes)"`.
#[derive(Clone, Copy, Debug)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kept, cut) = truncate(self.0, LOG_CAP);
        f.write_char('"')?;
        for c in kept.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        // Inside the quotes: the line stays logfmt (`key="value"` pairs).
        if cut > 0 {
            write!(f, "…(+{cut} bytes)")?;
        }
        f.write_char('"')
    }
}

/// Control characters (C0, DEL, C1: ESC, BEL, ...), and characters that move or hide text on a
/// terminal or in a viewer: line and paragraph separators, bidirectional overrides and
/// isolates, zero-width characters and the byte order mark.
pub(crate) fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}')
}

/// The longest prefix of `value` of at most `max` bytes that ends on a character boundary, and
/// how many bytes were left out.
pub fn truncate(value: &str, max: usize) -> (&str, usize) {
    if value.len() <= max {
        return (value, 0);
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    (&value[..end], value.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_escapes_and_quotes_cannot_leave_the_value() {
        let forged = "evil\n2026-01-01T00:00:00Z  INFO postern::audit: event=\"sign_in\" user=admin@corp\u{1b}[2J\u{7}\r\u{202e}\u{0}";
        let shown = Untrusted(forged).to_string();
        assert_eq!(
            shown,
            r#""evil\n2026-01-01T00:00:00Z  INFO postern::audit: event=\"sign_in\" user=admin@corp\u{1b}[2J\u{7}\r\u{202e}\u{0}""#
        );
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        // Printable text, also outside ASCII, stays readable.
        assert_eq!(Untrusted("Zoë's client").to_string(), "\"Zoë's client\"");
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary_and_say_how_much_is_missing() {
        let long = "é".repeat(450_000); // 900 KB
        let shown = Untrusted(&long).to_string();
        assert!(shown.len() < LOG_CAP + 32, "{}", shown.len());
        assert!(
            shown.ends_with("…(+899744 bytes)\""),
            "{}",
            &shown[shown.len() - 30..]
        );
        assert_eq!(truncate("abc", 2), ("ab", 1));
        assert_eq!(truncate("aé", 2), ("a", 2));
        assert_eq!(truncate("abc", 3), ("abc", 0));
    }
}

//! What people type into names and attribute values, cleaned the one way
//! every way in uses (the sign-up form, the preference form, the CSV import,
//! `subscribers add --name`). No IO.
//!
//! The rule: a run of line breaks (CR, LF, VT, FF, NEL, the Unicode line
//! and paragraph separators) becomes one space, so words stay apart; a tab
//! becomes a space; every other control character (NUL, DEL, the C0 and C1
//! ranges) is removed; the ends are trimmed; then a value longer than its limit (in characters)
//! is refused rather than cut, so that nothing is silently lost. A stored
//! value therefore never holds a line break, which would otherwise end up in
//! a mail header.

/// Longest name, in characters.
pub const NAME_MAX: usize = 200;
/// Longest attribute value, in characters.
pub const VALUE_MAX: usize = 1_000;

/// Which kind of value is being cleaned: says the limit and names it in
/// messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Name,
    Value,
}

impl Field {
    pub fn max_chars(self) -> usize {
        match self {
            Field::Name => NAME_MAX,
            Field::Value => VALUE_MAX,
        }
    }
}

/// A value over its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("longer than {max} characters ({chars}); shorten it")]
pub struct Error {
    pub field: Field,
    pub chars: usize,
    pub max: usize,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `raw` without control characters (a tab becomes a space), trimmed, or
/// an error when what is left is longer than `field` allows.
pub fn clean(raw: &str, field: Field) -> Result<String> {
    let mut cleaned = String::with_capacity(raw.len());
    let mut after_break = false;
    for c in raw.chars() {
        let line_break = matches!(
            c,
            '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
        );
        match c {
            // A run of line breaks is one space, so words stay apart.
            _ if line_break => {
                if !after_break {
                    cleaned.push(' ');
                }
            }
            '\t' => cleaned.push(' '),
            c if c.is_control() => {}
            c => cleaned.push(c),
        }
        after_break = line_break;
    }
    // Trimmed in place: one allocation a value (imports clean millions).
    cleaned.truncate(cleaned.trim_end().len());
    cleaned.drain(..cleaned.len() - cleaned.trim_start().len());
    let (chars, max) = (cleaned.chars().count(), field.max_chars());
    if chars > max {
        return Err(Error { field, chars, max });
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_go_and_tabs_become_spaces() {
        assert_eq!(
            clean("Ann\r\nBcc: x@y\0", Field::Name).unwrap(),
            "Ann Bcc: x@y"
        );
        assert_eq!(clean(" Ann\tLee \u{7f}", Field::Name).unwrap(), "Ann Lee");
        assert_eq!(
            clean("a\u{85}b\u{2028}\u{2029}c\u{1}", Field::Value).unwrap(),
            "a b c"
        );
        assert_eq!(clean("Zoë  Ōtani", Field::Name).unwrap(), "Zoë  Ōtani");
        assert_eq!(clean("\r\n", Field::Name).unwrap(), "");
    }

    #[test]
    fn the_limit_counts_characters_after_cleaning() {
        assert_eq!(clean(&"é".repeat(200), Field::Name).unwrap().len(), 400);
        assert_eq!(
            clean(&format!("{}\n\n", "n".repeat(200)), Field::Name).unwrap(),
            "n".repeat(200)
        );
        let err = clean(&"n".repeat(201), Field::Name).unwrap_err();
        assert_eq!((err.chars, err.max), (201, 200));
        assert_eq!(
            err.to_string(),
            "longer than 200 characters (201); shorten it"
        );
        assert!(clean(&"v".repeat(1_000), Field::Value).is_ok());
        let err = clean(&"v".repeat(10_000_000), Field::Value).unwrap_err();
        assert_eq!(err.chars, 10_000_000);
    }
}

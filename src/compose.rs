//! One recipient's complete MIME message: personalised bodies from a
//! `render::Compiled` campaign plus the headers bulk senders need (RFC 8058
//! one-click List-Unsubscribe, List-Id, a Message-ID at the sender's domain,
//! the VERP envelope sender), and the exact bytes that go on the wire
//! ([`wire_bytes`], DKIM-signed by `dkim` when a key is given). No IO: the
//! caller passes the clock, the ids and any DKIM key.
//!
//! Every name and header value is cleaned of control characters first (CR,
//! LF, NUL, ...), so no subscriber name or setting can add a header or make
//! the builder fail; addresses are never changed (one that has a control
//! character is an `Error::Address`). Domains go out in ASCII (punycode); a non-ASCII local part
//! stays UTF-8 (RFC 6532 headers), and the transport sends it with SMTPUTF8.

use std::borrow::Cow;
use std::time::SystemTime;

use lettre::Message;
use lettre::address::{Address, Envelope};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

use crate::render::Personalised;

/// Errors building a message: an address or header that cannot be encoded.
/// Each says it all in its own words (a delivery records them as its reply),
/// so none has a source that `{:#}` would print a second time.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid address {address:?}: {reason}")]
    Address {
        address: String,
        reason: lettre::address::AddressError,
    },
    #[error("message: {0}")]
    Message(lettre::error::Error),
    #[error("dkim: {0}")]
    Dkim(crate::dkim::Error),
}

impl From<lettre::error::Error> for Error {
    fn from(e: lettre::error::Error) -> Self {
        Error::Message(e)
    }
}

impl From<crate::dkim::Error> for Error {
    fn from(e: crate::dkim::Error) -> Self {
        Error::Dkim(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything about one message except its bodies.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    /// `Name <address>`.
    pub from: &'a str,
    pub reply_to: Option<&'a str>,
    pub to_email: &'a str,
    pub to_name: &'a str,
    pub date: SystemTime,
    /// Without angle brackets: `c12.s34.x@example.org`.
    pub message_id: &'a str,
    /// `List-Id` value, e.g. `Monthly news <news.example.org>`.
    pub list_id: Option<&'a str>,
    /// One-click https URL (RFC 8058); also the List-Unsubscribe https link.
    pub unsubscribe_url: Option<&'a str>,
    /// `unsubscribe+TOKEN@domain`, the List-Unsubscribe mailto.
    pub unsubscribe_mailto: Option<&'a str>,
    /// VERP envelope sender `bounces+TOKEN@domain`; the From address if none.
    pub return_path: Option<&'a str>,
    /// Marks a test copy (`bulletin test`).
    pub test: bool,
    /// `Feedback-ID` for mailbox providers' complaint loops.
    pub feedback_id: Option<&'a str>,
}

/// Custom header names used on every campaign message.
pub const LIST_UNSUBSCRIBE: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe");
pub const LIST_UNSUBSCRIBE_POST: HeaderName =
    HeaderName::new_from_ascii_str("List-Unsubscribe-Post");
pub const LIST_ID: HeaderName = HeaderName::new_from_ascii_str("List-Id");
pub const FEEDBACK_ID: HeaderName = HeaderName::new_from_ascii_str("Feedback-ID");
pub const TEST_HEADER: HeaderName = HeaderName::new_from_ascii_str("X-Bulletin-Test");
pub const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");

/// Header text without control characters: CR, LF and TAB become a space,
/// the others (NUL, ESC, DEL, ...) are dropped. A value can then neither add
/// a header nor break the one it is in.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .filter_map(|c| match c {
                '\r' | '\n' | '\t' => Some(' '),
                c if c.is_control() => None,
                c => Some(c),
            })
            .collect(),
    )
}

/// `local@domain` with the domain in ASCII (IDNA, punycode); the local part
/// is left as it is.
fn ascii_domain(address: &str) -> Cow<'_, str> {
    match address.rsplit_once('@') {
        Some((local, domain)) if !domain.is_ascii() => match idna::domain_to_ascii(domain) {
            Ok(ascii) => Cow::Owned(format!("{local}@{ascii}")),
            Err(_) => Cow::Borrowed(address),
        },
        _ => Cow::Borrowed(address),
    }
}

/// `Name <address>` or a bare address, with an ASCII domain. The name is
/// cleaned; the address never is (a changed address is another person), so
/// one with a control character is an error.
fn mailbox(text: &str) -> Result<Mailbox> {
    let text = text.trim();
    let (name, addr) = match text.rsplit_once('<') {
        Some((name, rest)) => (Some(name), rest.trim_end().trim_end_matches('>')),
        None => (None, text),
    };
    let email = address(addr)?;
    let name = name
        .map(|n| clean(n).trim().trim_matches('"').trim().to_string())
        .filter(|n| !n.is_empty());
    Ok(Mailbox::new(name, email))
}

fn address(text: &str) -> Result<Address> {
    ascii_domain(text.trim())
        .parse()
        .map_err(|reason| Error::Address {
            address: text.escape_debug().to_string(),
            reason,
        })
}

/// The bytes that go on the wire: the formatted message, with a
/// `DKIM-Signature` in front when a key is given. Signing happens here, on
/// these exact bytes; nothing formats the message after.
pub fn wire_bytes(message: &Message, dkim: Option<&crate::dkim::DkimSigner>) -> Result<Vec<u8>> {
    let bytes = message.formatted();
    Ok(match dkim {
        Some(key) => key.sign(&bytes)?,
        None => bytes,
    })
}

/// Builds the message for one recipient.
pub fn message(h: &Headers, body: &Personalised) -> Result<Message> {
    let from = mailbox(h.from)?;
    let to_addr = address(h.to_email)?;
    let to_name = clean(h.to_name);
    let to_name = to_name.trim();
    let to = Mailbox::new(
        (!to_name.is_empty()).then(|| to_name.to_string()),
        to_addr.clone(),
    );
    let subject = clean(body.subject.trim());
    let subject = if h.test {
        format!("[TEST] {subject}")
    } else {
        subject.into_owned()
    };
    let header = |name, value: &str| HeaderValue::new(name, clean(value).into_owned());
    let envelope_from = match h.return_path {
        Some(rp) => address(rp)?,
        None => from.email.clone(),
    };
    let mut b = Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .date(h.date)
        .message_id(Some(format!("<{}>", clean(h.message_id))))
        .envelope(Envelope::new(Some(envelope_from), vec![to_addr])?);
    if let Some(r) = h.reply_to {
        b = b.reply_to(mailbox(r)?);
    }
    let mut unsub = Vec::new();
    if let Some(url) = h.unsubscribe_url {
        unsub.push(format!("<{url}>"));
    }
    if let Some(m) = h.unsubscribe_mailto {
        unsub.push(format!("<mailto:{m}?subject=unsubscribe>"));
    }
    if !unsub.is_empty() {
        b = b.raw_header(header(LIST_UNSUBSCRIBE, &unsub.join(", ")));
    }
    if h.unsubscribe_url.is_some() {
        b = b.raw_header(HeaderValue::new(
            LIST_UNSUBSCRIBE_POST,
            "List-Unsubscribe=One-Click".to_string(),
        ));
    }
    if let Some(id) = h.list_id {
        b = b.raw_header(header(LIST_ID, id));
    }
    if let Some(f) = h.feedback_id {
        b = b.raw_header(header(FEEDBACK_ID, f));
    }
    // Bulk mail is not a personal reply: stops vacation responders answering.
    b = b.raw_header(HeaderValue::new(
        AUTO_SUBMITTED,
        "auto-generated".to_string(),
    ));
    if h.test {
        b = b.raw_header(HeaderValue::new(TEST_HEADER, "yes".to_string()));
    }
    Ok(b.multipart(MultiPart::alternative_plain_html(
        body.text.clone(),
        body.html.clone(),
    ))?)
}

/// `List-Id` for a list: `Name <slug.domain>` (RFC 2919).
pub fn list_id(list_name: &str, list_slug: &str, domain: &str) -> String {
    let name: String = list_name
        .chars()
        .filter(|c| !matches!(c, '<' | '>' | '"' | '\r' | '\n'))
        .collect();
    let slug: String = list_slug
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("\"{name}\" <{slug}.{domain}>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn headers() -> Headers<'static> {
        Headers {
            from: "News <news@example.org>",
            reply_to: None,
            to_email: "ana@example.net",
            to_name: "Ana",
            date: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            message_id: "c1.s2@example.org",
            list_id: Some("\"News\" <news.example.org>"),
            unsubscribe_url: Some("https://n.example.org/unsubscribe/abc"),
            unsubscribe_mailto: Some("unsubscribe+abc@example.org"),
            return_path: Some("bounces+xyz@example.org"),
            test: false,
            feedback_id: None,
        }
    }

    #[test]
    fn bulk_headers_present() {
        let body = Personalised {
            subject: "Hi".into(),
            html: "<p>x</p>".into(),
            text: "x".into(),
        };
        let m = message(&headers(), &body).unwrap();
        // Headers unfolded, as a reader of them sees them.
        let raw = String::from_utf8(m.formatted())
            .unwrap()
            .replace("\r\n ", " ");
        assert!(raw.contains("List-Unsubscribe: <https://n.example.org/unsubscribe/abc>, <mailto:unsubscribe+abc@example.org?subject=unsubscribe>\r\n"), "{raw}");
        assert!(raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
        assert!(raw.contains("List-Id: \"News\" <news.example.org>\r\n"));
        assert!(raw.contains("Message-ID: <c1.s2@example.org>\r\n"));
        assert!(
            raw.contains("Date: Fri, 15 Jan 2027 08:00:00 +0000\r\n"),
            "{raw}"
        );
        assert!(raw.contains("multipart/alternative"));
        assert!(raw.find("text/plain").unwrap() < raw.find("text/html").unwrap());
        assert_eq!(
            m.envelope().from().unwrap().to_string(),
            "bounces+xyz@example.org"
        );
    }

    #[test]
    fn test_copy_is_marked() {
        let h = Headers {
            test: true,
            ..headers()
        };
        let body = Personalised {
            subject: "Hi".into(),
            ..Default::default()
        };
        let raw = String::from_utf8(message(&h, &body).unwrap().formatted()).unwrap();
        assert!(raw.contains("Subject: [TEST] Hi\r\n"));
        assert!(raw.contains("X-Bulletin-Test: yes\r\n"));
    }

    #[test]
    fn bad_address_is_an_error() {
        let h = Headers {
            to_email: "not an address",
            ..headers()
        };
        let err = message(&h, &Personalised::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an address"), "{err}");
    }

    fn body() -> Personalised {
        Personalised {
            subject: "Hi".into(),
            html: "<p>x</p>".into(),
            text: "x".into(),
        }
    }

    #[test]
    fn control_characters_never_reach_a_header() {
        for name in [
            "Ann\r\nBcc: x@evil.example",
            "\0",
            "A\u{1b}[31mnn\u{7f}",
            "\r\n",
        ] {
            let h = Headers {
                to_name: name,
                list_id: Some("\"News\r\nX-Evil: 1\" <news.example.org>"),
                ..headers()
            };
            let subject = Personalised {
                subject: format!("Hello {name}"),
                ..body()
            };
            let raw = String::from_utf8(message(&h, &subject).unwrap().formatted()).unwrap();
            let head = raw.split("\r\n\r\n").next().unwrap();
            for line in head.split("\r\n") {
                assert!(
                    !line.starts_with("Bcc:") && !line.starts_with("X-Evil"),
                    "{raw}"
                );
                assert!(
                    !line.chars().any(|c| c.is_control() && c != '\t'),
                    "{line:?}"
                );
            }
        }
        assert_eq!(clean("Ann\r\nBcc: x"), "Ann  Bcc: x");
        assert_eq!(clean("a\0b\u{7}"), "ab");
    }

    #[test]
    fn an_address_is_never_cleaned_into_another() {
        for to in [
            "ann\0@example.net",
            "ann@example.net\r\nBcc: x@evil.example",
        ] {
            let h = Headers {
                to_email: to,
                ..headers()
            };
            assert!(matches!(message(&h, &body()), Err(Error::Address { .. })));
        }
    }

    #[test]
    fn domains_go_out_in_ascii_and_utf8_local_parts_stay() {
        let h = Headers {
            from: "Bücher <news@bücher.example>",
            to_email: "ines.garcía@example.org",
            to_name: "Inés García",
            return_path: Some("bounces+x@bücher.example"),
            ..headers()
        };
        let m = message(&h, &body()).unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(raw.contains("news@xn--bcher-kva.example>"), "{raw}");
        assert!(raw.contains("<ines.garcía@example.org>"), "{raw}");
        assert_eq!(
            m.envelope().from().unwrap().to_string(),
            "bounces+x@xn--bcher-kva.example"
        );
        assert_eq!(m.envelope().to()[0].to_string(), "ines.garcía@example.org");
    }
}

//! One recipient's complete MIME message: personalised bodies from a
//! `render::Compiled` campaign plus the headers bulk senders need (RFC 8058
//! one-click List-Unsubscribe, List-Id, a Message-ID at the sender's domain,
//! the VERP envelope sender). No IO: the caller passes the clock, the ids and
//! any DKIM key.

use std::time::SystemTime;

use lettre::Message;
use lettre::address::{Address, Envelope};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

use crate::render::Personalised;

/// Errors building a message: an address or header that cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid address {address:?}: {source}")]
    Address {
        address: String,
        source: lettre::address::AddressError,
    },
    #[error("message: {0}")]
    Message(#[from] lettre::error::Error),
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

fn mailbox(text: &str) -> Result<Mailbox> {
    text.parse().map_err(|source| Error::Address {
        address: text.to_string(),
        source,
    })
}

fn address(text: &str) -> Result<Address> {
    text.parse().map_err(|source| Error::Address {
        address: text.to_string(),
        source,
    })
}

/// Builds the message for one recipient.
pub fn message(h: &Headers, body: &Personalised) -> Result<Message> {
    let from = mailbox(h.from)?;
    let to_addr = address(h.to_email)?;
    let to_name = h.to_name.trim();
    let to = Mailbox::new(
        (!to_name.is_empty()).then(|| to_name.to_string()),
        to_addr.clone(),
    );
    let subject = if h.test {
        format!("[TEST] {}", body.subject)
    } else {
        body.subject.clone()
    };
    let envelope_from = match h.return_path {
        Some(rp) => address(rp)?,
        None => from.email.clone(),
    };
    let mut b = Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .date(h.date)
        .message_id(Some(format!("<{}>", h.message_id)))
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
        b = b.raw_header(HeaderValue::new(LIST_UNSUBSCRIBE, unsub.join(", ")));
    }
    if h.unsubscribe_url.is_some() {
        b = b.raw_header(HeaderValue::new(
            LIST_UNSUBSCRIBE_POST,
            "List-Unsubscribe=One-Click".to_string(),
        ));
    }
    if let Some(id) = h.list_id {
        b = b.raw_header(HeaderValue::new(LIST_ID, id.to_string()));
    }
    if let Some(f) = h.feedback_id {
        b = b.raw_header(HeaderValue::new(FEEDBACK_ID, f.to_string()));
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
        let raw = String::from_utf8(m.formatted()).unwrap();
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
}

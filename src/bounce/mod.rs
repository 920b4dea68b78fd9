//! What comes back: bounces (RFC 3464 DSNs and the free-text reports many
//! servers still send), complaints (RFC 5965 ARF), auto-replies, and mail
//! to the List-Unsubscribe mailto address, read into a [`Report`].
//!
//! This module does no IO: it takes the raw bytes of one message (and the
//! envelope recipient when the caller knows it) and returns what the
//! message says. Applying it to subscribers is the caller's job.
//!
//! ```
//! let raw = b"From: MAILER-DAEMON@mx.example.net\r\n\
//! To: bounces+abc234@news.example.org\r\n\
//! Subject: failure notice\r\n\r\n\
//! <reader@example.net>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n";
//! let report = bulletin::bounce::parse(raw);
//! assert_eq!(report.kind, bulletin::bounce::Kind::Bounce);
//! assert_eq!(report.verp_token.as_deref(), Some("abc234"));
//! let r = &report.recipients[0];
//! assert_eq!(r.address.as_deref(), Some("reader@example.net"));
//! assert_eq!(r.class, Some(bulletin::bounce::Class::Hard));
//! ```

mod arf;
mod classify;
mod dsn;
pub mod score;
mod text;

use std::sync::LazyLock;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use serde::Serialize;

use crate::links;

pub use classify::classify;

/// What kind of message came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A non-delivery (or delay) report.
    Bounce,
    /// An ARF abuse report (or another feedback type that means "stop").
    Complaint,
    /// A vacation notice or other automatic reply: ignored.
    AutoReply,
    /// Mail to the `unsubscribe+TOKEN@` List-Unsubscribe address.
    Unsubscribe,
    /// Anything else, including ARF auth-failure reports (logged only).
    None,
}

/// How bad a failed delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// The address is permanently bad (unknown user or host, moved, no mail
    /// accepted): stop at once.
    Hard,
    /// The mailbox, the message or the moment is the problem (full, blocked,
    /// policy, rate limit, temporary): stop only if it repeats.
    Soft,
    /// The server is still trying (Action: delayed): not a bounce.
    Delayed,
}

/// One recipient named by the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    /// Lower-cased; `None` when the message does not say (match by token
    /// or Message-ID instead).
    pub address: Option<String>,
    /// `None` for complaints, auto-replies and unsubscribes, which are not
    /// delivery failures.
    pub class: Option<Class>,
    /// RFC 3463 enhanced status code such as `5.1.1`, when given.
    pub status: Option<String>,
    /// The server's diagnostic text, trimmed (the feedback type for ARF).
    pub reason: String,
}

/// Everything read from one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub kind: Kind,
    pub recipients: Vec<Recipient>,
    /// Token from `bounces+TOKEN@` in the envelope recipient, Delivered-To,
    /// X-Original-To or To.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verp_token: Option<String>,
    /// Token from `unsubscribe+TOKEN@` in the same places.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe_token: Option<String>,
    /// Message-ID (without brackets) of the returned original message.
    #[serde(rename = "message_id", skip_serializing_if = "Option::is_none")]
    pub original_message_id: Option<String>,
    /// ARF Feedback-Type: abuse, auth-failure, opt-out, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback_type: Option<String>,
    /// The message's own From address and Subject, for people reviewing
    /// mail that matched nobody; empty when absent.
    pub from: String,
    pub subject: String,
}

impl Report {
    fn new(kind: Kind) -> Report {
        Report {
            kind,
            recipients: Vec::new(),
            verp_token: None,
            unsubscribe_token: None,
            original_message_id: None,
            feedback_type: None,
            from: String::new(),
            subject: String::new(),
        }
    }

    /// The recipients whose failure counts as a bounce: hard or soft, never
    /// delayed.
    pub fn bounced(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients.iter().filter(|r| {
            self.kind == Kind::Bounce && matches!(r.class, Some(Class::Hard | Class::Soft))
        })
    }
}

/// Building a parser fills a header table; do it once.
static PARSER: LazyLock<MessageParser> = LazyLock::new(MessageParser::new);

/// Reads one message. Never panics, whatever the input.
pub fn parse(raw: &[u8]) -> Report {
    parse_with_envelope(raw, None)
}

/// Reads one message, given the SMTP envelope recipient when known (the
/// most reliable place for the VERP token).
pub fn parse_with_envelope(raw: &[u8], envelope_recipient: Option<&str>) -> Report {
    parse_at(raw, envelope_recipient, 0)
}

/// `depth` counts bounces of bounces: a report forwarded inside another is
/// read once more, no deeper.
fn parse_at(raw: &[u8], envelope_recipient: Option<&str>, depth: usize) -> Report {
    let mut report = Report::new(Kind::None);
    let Some(msg) = PARSER.parse(raw) else {
        if let Some(env) = envelope_recipient {
            report.verp_token = token(env, links::parse_verp);
            report.unsubscribe_token = token(env, links::parse_unsubscribe);
        }
        return report;
    };

    // Tokens: the envelope first, then the headers the delivery added.
    let mut to_values: Vec<String> = envelope_recipient.map(str::to_string).into_iter().collect();
    for name in [
        "Delivered-To",
        "X-Original-To",
        "Envelope-To",
        "X-Envelope-To",
        "To",
    ] {
        for v in msg.header_values(name) {
            if let Some(t) = v.as_text() {
                to_values.push(t.to_string());
            } else if let Some(a) = v.as_address() {
                to_values.extend(a.iter().filter_map(|a| a.address()).map(str::to_string));
            }
        }
    }
    report.verp_token = to_values.iter().find_map(|v| token(v, links::parse_verp));
    report.unsubscribe_token = to_values
        .iter()
        .find_map(|v| token(v, links::parse_unsubscribe));

    let parts = Parts::collect(&msg);
    report.original_message_id = parts.original_message_id.clone().or_else(|| {
        let own = msg.message_id();
        text::message_id_in(&parts.text).filter(|id| Some(id.as_str()) != own)
    });

    let from = msg.from().and_then(|f| f.first());
    let from_addr = from
        .and_then(|a| a.address())
        .and_then(text::clean_address)
        .unwrap_or_default();
    let from_name = from.and_then(|a| a.name()).unwrap_or("");
    let subject = msg.subject().unwrap_or("");
    report.from = from.and_then(|a| a.address()).unwrap_or("").to_string();
    report.subject = subject.to_string();

    if report.unsubscribe_token.is_some() {
        report.kind = Kind::Unsubscribe;
        report
            .recipients
            .push(plain(Some(from_addr), "unsubscribe"));
        return report;
    }

    if let Some(fb) = &parts.feedback {
        let fb = arf::parse(fb);
        let ty = fb.feedback_type.clone().unwrap_or_else(|| "abuse".into());
        report.kind = if arf::is_complaint(&ty) {
            Kind::Complaint
        } else {
            Kind::None
        };
        let addrs = if fb.recipients.is_empty() {
            parts.original_to.clone()
        } else {
            fb.recipients
        };
        report.recipients = addrs.into_iter().map(|a| plain(Some(a), &ty)).collect();
        report.feedback_type = Some(ty);
        return report;
    }

    // Microsoft's JMRP complaints carry no feedback-report part.
    if subject
        .to_ascii_lowercase()
        .contains("complaint about message")
        && !parts.original_to.is_empty()
    {
        report.kind = Kind::Complaint;
        report.recipients = parts
            .original_to
            .iter()
            .map(|a| plain(Some(a.clone()), "abuse"))
            .collect();
        report.feedback_type = Some("abuse".into());
        return report;
    }

    // Addresses that are surely not the failed recipient.
    let mut exclude: Vec<String> = vec![from_addr.clone()];
    for a in msg.to().into_iter().flat_map(|a| a.iter()) {
        exclude.extend(a.address().and_then(text::clean_address));
    }
    exclude.extend(parts.original_from.iter().cloned());
    if let Some(rp) = msg.return_address().and_then(text::clean_address) {
        exclude.push(rp);
    }
    let human = text::before_original(&parts.text);
    let failed_header: Vec<String> = msg
        .header_values("X-Failed-Recipients")
        .filter_map(|v| v.as_text())
        .flat_map(|t| t.split(','))
        .filter_map(text::clean_address)
        .collect();

    let mut dsn_recipients = dsn::recipients(&parts.dsn);
    if dsn_recipients.is_empty() && has_dsn_fields(&parts.text) {
        dsn_recipients = dsn::recipients(&parts.text);
    }
    if !dsn_recipients.is_empty() {
        report.kind = Kind::Bounce;
        let mut text_found: Option<Vec<text::TextRecipient>> = None;
        for (i, d) in dsn_recipients.into_iter().enumerate() {
            if matches!(
                d.action.as_deref(),
                Some("delivered" | "relayed" | "expanded")
            ) {
                continue;
            }
            let found = text_found.get_or_insert_with(|| text::recipients(human, &exclude));
            let address = d
                .address
                .or_else(|| failed_header.get(i).cloned())
                .or_else(|| found.get(i).map(|r| r.address.clone()))
                .or_else(|| parts.original_to.first().cloned());
            let diagnostic = if d.diagnostic.is_empty() {
                address
                    .as_ref()
                    .and_then(|a| found.iter().find(|r| &r.address == a))
                    .map(|r| r.diagnostic.clone())
                    .unwrap_or_default()
            } else {
                d.diagnostic
            };
            report.recipients.push(failure(
                address,
                d.status,
                diagnostic,
                d.action.as_deref(),
                human,
            ));
        }
        if report.recipients.is_empty() {
            report.kind = Kind::None;
        }
        return report;
    }

    // RFC 3834 "auto-replied" without a machine-readable report counts as a
    // bounce only from a mailer daemon (Exim, Google Groups and mail.ru send
    // such); from anyone else, postmaster included, it is an auto-reply.
    let auto_replied = msg
        .header_raw("Auto-Submitted")
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("auto-replied"));
    let raw_from = from
        .and_then(|a| a.address())
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_report = msg
        .content_type()
        .and_then(|c| c.attribute("report-type"))
        .is_some_and(|t| t.eq_ignore_ascii_case("delivery-status"));
    let daemon = is_report
        || msg.header_raw("X-MS-Exchange-Message-Is-Ndr").is_some()
        || raw_from.starts_with("mailer-daemon")
        || from_name.to_ascii_lowercase().contains("mail delivery")
        || from_name.to_ascii_lowercase().contains("mailer-daemon");
    let bounce_like = !failed_header.is_empty()
        || (text::looks_like_bounce(subject, &from_addr, from_name) && (!auto_replied || daemon));
    if !bounce_like && is_autoreply(&msg, subject, &parts.text) {
        report.kind = Kind::AutoReply;
        report.recipients.push(plain(Some(from_addr), "auto-reply"));
        return report;
    }
    if !bounce_like {
        return report;
    }

    report.kind = Kind::Bounce;
    let mut found = text::recipients(human, &exclude);
    if found.is_empty() && failed_header.is_empty() {
        // People do mail themselves: the bounce's addressee may be the
        // failed recipient too.
        found = text::recipients(human, std::slice::from_ref(&from_addr));
    }
    // The text names the recipients the way the server saw them; the
    // X-Failed-Recipients header (Exim) adds any the text missed.
    let mut addrs: Vec<(String, String)> = found
        .into_iter()
        .map(|r| (r.address, r.diagnostic))
        .collect();
    for a in &failed_header {
        if !addrs.iter().any(|(x, _)| x == a) {
            addrs.push((a.clone(), String::new()));
        }
    }
    // A bounce forwarded as the "original": read the inner report.
    if addrs.is_empty()
        && depth == 0
        && let Some(inner) = &parts.original_raw
    {
        let inner = parse_at(inner, None, depth + 1);
        if inner.kind == Kind::Bounce && inner.recipients.iter().any(|r| r.address.is_some()) {
            report.recipients = inner.recipients;
            report.original_message_id = report.original_message_id.or(inner.original_message_id);
            return report;
        }
    }
    if addrs.is_empty()
        && let Some(a) = parts
            .original_to
            .first()
            .cloned()
            .or_else(|| text::original_to_in(&parts.text))
    {
        addrs.push((a, String::new()));
    }
    if addrs.is_empty() {
        report
            .recipients
            .push(failure(None, None, String::new(), None, human));
    }
    for (a, diag) in addrs {
        report
            .recipients
            .push(failure(Some(a), None, diag, None, human));
    }
    report
}

/// A recipient of a non-failure message (complaint, auto-reply, unsubscribe).
fn plain(address: Option<String>, reason: &str) -> Recipient {
    Recipient {
        address: address.filter(|a| !a.is_empty()),
        class: None,
        status: None,
        reason: reason.into(),
    }
}

/// A failed recipient: the status and the text decide the class; where the
/// recipient's own lines say nothing, the whole human-readable part does.
fn failure(
    address: Option<String>,
    status: Option<String>,
    diagnostic: String,
    action: Option<&str>,
    human: &str,
) -> Recipient {
    let mut status = status;
    // A generic status (5.0.0) says less than a specific one in the text.
    let specific = text::find_status(&diagnostic).map(|s| s.0);
    if status.as_deref().is_none_or(|s| s.ends_with(".0.0")) && specific.is_some() {
        status = specific;
    }
    // Where the recipient's own lines say nothing telling, the whole
    // human-readable part (a Sendmail transcript, say) does.
    let joined;
    let mut basis = diagnostic.as_str();
    if !classify::has_phrase(&diagnostic) {
        joined = format!("{diagnostic}\n{human}");
        basis = &joined;
        if status.is_none() {
            status = text::find_status(human).map(|s| s.0);
        }
    }
    // A transcript that shows the refusal came at DATA counts for this
    // recipient too, unless its own lines name the RCPT stage.
    let staged;
    if text::refused_at_data(human) && !diagnostic.to_ascii_lowercase().contains("rcpt to") {
        staged = format!("{basis}\n(after DATA)");
        basis = &staged;
    }
    let class = classify(status.as_deref(), basis, action);
    let mut reason = diagnostic.split_whitespace().collect::<Vec<_>>().join(" ");
    if reason.len() > 400 {
        let mut cut = 400;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Recipient {
        address,
        class: Some(class),
        status,
        reason,
    }
}

/// A text body that carries DSN fields inline (some MTAs do that).
fn has_dsn_fields(text: &str) -> bool {
    let l = text.to_ascii_lowercase();
    l.contains("final-recipient:") && l.contains("status:")
}

/// Auto-replies: RFC 3834 Auto-Submitted, the vendor headers, or the usual
/// vacation subjects and openings.
fn is_autoreply(msg: &Message<'_>, subject: &str, body: &str) -> bool {
    let header = |n: &str| msg.header_raw(n).map(|v| v.trim().to_ascii_lowercase());
    header("Auto-Submitted").is_some_and(|v| v != "no")
        || header("X-Autoreply").is_some()
        || header("X-Autorespond").is_some()
        || header("X-Auto-Response-Suppress")
            .is_some_and(|v| v.contains("all") || v.contains("oof"))
            && text::looks_like_autoreply(subject, body)
        || header("Precedence").is_some_and(|v| v == "auto_reply")
        || text::looks_like_autoreply(subject, body)
}

/// The token of the first address in `value` (an address or a header
/// value) whose local part `parse` accepts, lower-cased: `bounces+TOKEN@...`
/// with `links::parse_verp`.
fn token(value: &str, parse: fn(&str) -> Option<&str>) -> Option<String> {
    let lower = value.to_ascii_lowercase();
    let is_local = |b: &u8| b.is_ascii_alphanumeric() || b"+-._=".contains(b);
    lower.match_indices('@').find_map(|(at, _)| {
        // Non-ASCII bytes end the local part, so `start` is a char boundary.
        let start = lower.as_bytes()[..at]
            .iter()
            .rposition(|b| !is_local(b))
            .map_or(0, |i| i + 1);
        parse(&lower[start..at]).map(str::to_string)
    })
}

/// The parts of a message, sorted by what they are.
#[derive(Default)]
struct Parts {
    dsn: String,
    feedback: Option<String>,
    text: String,
    original_message_id: Option<String>,
    original_to: Vec<String>,
    original_from: Option<String>,
    original_raw: Option<Vec<u8>>,
}

impl Parts {
    fn collect(msg: &Message<'_>) -> Parts {
        let mut p = Parts::default();
        let mut html = String::new();
        for part in &msg.parts {
            let (ctype, sub) = part
                .content_type()
                .map(|c| {
                    (
                        c.ctype().to_ascii_lowercase(),
                        c.subtype().unwrap_or("").to_ascii_lowercase(),
                    )
                })
                .unwrap_or_else(|| ("text".into(), "plain".into()));
            let contents = || String::from_utf8_lossy(part.contents()).into_owned();
            match (ctype.as_str(), sub.as_str()) {
                (_, "delivery-status" | "global-delivery-status") => {
                    p.dsn.push_str(&contents());
                    p.dsn.push_str("\n\n");
                }
                (_, "feedback-report") => p.feedback = Some(contents()),
                (_, "rfc822-headers" | "global-headers" | "rfc822-header") => {
                    if let Some(m) = PARSER.parse_headers(part.contents()) {
                        p.original(&m);
                    }
                }
                _ => match &part.body {
                    PartType::Message(m) => {
                        if p.original_raw.is_none() {
                            p.original_raw = Some(m.raw_message().to_vec());
                        }
                        p.original(m)
                    }
                    PartType::Text(t) if ctype == "text" || ctype.is_empty() => {
                        p.text.push_str(t);
                        p.text.push('\n');
                    }
                    PartType::Html(h) => html.push_str(h),
                    PartType::Binary(b)
                        if ctype == "message" && (sub == "rfc822" || sub == "global") =>
                    {
                        if let Some(m) = PARSER.parse_headers(b.as_ref()) {
                            p.original(&m);
                        }
                    }
                    _ => {}
                },
            }
        }
        if p.text.trim().is_empty() && !html.is_empty() {
            p.text = text::html_to_text(&html);
        }
        // A multipart whose boundary never appears (it happens) parses to
        // nothing: read its raw body as text instead.
        if p.text.trim().is_empty() && p.dsn.is_empty() && p.feedback.is_none() {
            let raw = msg.raw_message();
            let start = msg.root_part().raw_body_offset() as usize;
            if let Some(body) = raw.get(start..) {
                p.text = String::from_utf8_lossy(body).into_owned();
            }
        }
        p
    }

    /// Records the returned original (the first one only).
    fn original(&mut self, m: &Message<'_>) {
        if self.original_message_id.is_some() || !self.original_to.is_empty() {
            return;
        }
        self.original_message_id = m.message_id().map(str::to_string);
        // Hotmail names the complaining recipient in its own header.
        self.original_to = m
            .header_raw("X-HmXmrOriginalRecipient")
            .and_then(text::clean_address)
            .into_iter()
            .chain(
                m.to()
                    .into_iter()
                    .flat_map(|a| a.iter())
                    .filter_map(|a| a.address().and_then(text::clean_address)),
            )
            .collect();
        self.original_from = m
            .from()
            .and_then(|f| f.first())
            .and_then(|a| a.address())
            .and_then(text::clean_address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let verp = links::parse_verp;
        assert_eq!(
            token("Bounces+ABC234@news.example.org", verp).as_deref(),
            Some("abc234")
        );
        assert_eq!(
            token("<bounces+abc@x.example>", verp).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token("News <news@x>, Bounces <bounces+abc@x>", verp).as_deref(),
            Some("abc")
        );
        assert_eq!(token("xbounces+abc@x", verp), None);
        assert_eq!(token("bounces+ab-c@x", verp), None);
        assert_eq!(token("bounces+abc@", verp).as_deref(), Some("abc"));
        assert_eq!(token("é@bounces+abc", verp), None);
        assert_eq!(
            token("unsubscribe+zz7@x", links::parse_unsubscribe).as_deref(),
            Some("zz7")
        );
    }

    #[test]
    fn garbage_is_none() {
        for raw in [
            &b""[..],
            b"\0\0\0",
            b"From:",
            b"\r\n\r\n",
            b"Content-Type: multipart/report; boundary=x\r\n\r\n--x",
        ] {
            let r = parse(raw);
            assert_ne!(r.kind, Kind::Bounce, "{raw:?}");
        }
    }
}

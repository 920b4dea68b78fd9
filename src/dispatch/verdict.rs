//! What a failed SMTP attempt means for the recipient: the one place that
//! decides bounce versus relay. A 5xx reply marks the subscriber bounced only
//! when it is about their address; everything that blames the sender, the
//! message, the relay or our credentials leaves the subscriber alone.
//!
//! [`judge`] reads [`RULES`] top to bottom and takes the first rule that
//! matches the stage, the basic reply code and the enhanced status code
//! (RFC 3463, the `5.1.1` at the start of the reply text). Errors without a
//! reply are classified by `dispatch::Error::verdict`.

/// What the dispatcher does with one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The recipient's address is bad (unknown user or domain, disabled
    /// mailbox): the delivery fails and the subscriber is marked bounced.
    Bounce,
    /// Refused for a reason that is not the recipient's address: the
    /// sender, the message (size, content), policy, syntax, a full mailbox.
    /// The delivery fails; the subscriber is untouched. The same refusal
    /// for `STREAK_LIMIT` recipients in a row stops the run instead.
    Refused,
    /// Temporary (4xx, or a connection lost before the message was sent):
    /// deferred and retried; charges one of the recipient's attempts.
    Retry,
    /// The server, the connection or our credentials (a 421, a greeting,
    /// TLS or AUTH failure, 530): nobody is charged, the job is queued
    /// again and the run stops; the campaign stays resumable.
    Stop,
    /// No answer after the message was sent: it may have been delivered.
    /// The in-flight policy decides (`unknown`, or resend).
    Unknown,
}

/// The stage names `dispatch::Error::Reply` carries.
pub const CONNECT: &str = "connect";
pub const MAIL: &str = "MAIL";
pub const RCPT: &str = "RCPT";
/// The reply to the DATA command (before the message is sent).
pub const DATA: &str = "DATA";
/// The reply to the message's final dot.
pub const END_OF_DATA: &str = "end of DATA";

/// Which stages a rule applies to.
#[derive(Debug, Clone, Copy)]
enum At {
    Any,
    /// Stages other than MAIL, RCPT, DATA and end of DATA: the greeting,
    /// EHLO, STARTTLS, AUTH.
    Session,
    Mail,
    Rcpt,
}

impl At {
    fn matches(self, stage: &str) -> bool {
        let transaction = [MAIL, RCPT, DATA, END_OF_DATA].contains(&stage);
        match self {
            At::Any => true,
            At::Session => !transaction,
            At::Mail => stage == MAIL,
            At::Rcpt => stage == RCPT,
        }
    }
}

/// One line of the table: stage, basic code range, enhanced code prefix
/// (`""` = any, or none given), verdict, and why.
struct Rule(At, u16, u16, &'static str, Verdict, &'static str);

/// The rules, first match wins.
#[rustfmt::skip]
const RULES: &[Rule] = &[
    // The server or our credentials: never a recipient's fault.
    Rule(At::Any,     421, 421, "",      Verdict::Stop,    "service not available, closing"),
    Rule(At::Session, 400, 599, "",      Verdict::Stop,    "greeting, EHLO, TLS or AUTH"),
    Rule(At::Any,     530, 530, "",      Verdict::Stop,    "authentication required"),
    Rule(At::Any,     534, 535, "",      Verdict::Stop,    "authentication failed"),
    Rule(At::Any,     500, 599, "5.7.8", Verdict::Stop,    "bad credentials"),
    // Temporary.
    Rule(At::Any,     400, 499, "",      Verdict::Retry,   "try again later"),
    // The sender's address.
    Rule(At::Any,     500, 599, "5.1.7", Verdict::Refused, "bad sender mailbox syntax"),
    Rule(At::Any,     500, 599, "5.1.8", Verdict::Refused, "bad sender system address"),
    // The recipient's address, said at RCPT. After the content was sent
    // "user unknown" is a content filter's disguise (`bounce::classify`
    // reads it the same way), so it bounces nobody.
    Rule(At::Rcpt,    500, 599, "5.1.",  Verdict::Bounce,  "bad destination address"),
    Rule(At::Rcpt,    500, 599, "5.2.1", Verdict::Bounce,  "mailbox disabled"),
    Rule(At::Rcpt,    500, 599, "5.4.4", Verdict::Bounce,  "unroutable or null-MX domain"),
    // Every other enhanced code is not about the address: mailbox full
    // (5.2.2), message too long (5.2.3, 5.3.4), system, routing, protocol
    // (5.5), content (5.6), policy or security (5.7).
    Rule(At::Any,     500, 599, "5.",    Verdict::Refused, "not the recipient's address"),
    // Basic codes alone.
    Rule(At::Any,     500, 504, "",      Verdict::Refused, "syntax or sequence error"),
    Rule(At::Mail,    500, 599, "",      Verdict::Refused, "the reverse path"),
    Rule(At::Rcpt,    550, 551, "",      Verdict::Bounce,  "mailbox unavailable, not local"),
    Rule(At::Rcpt,    553, 553, "",      Verdict::Bounce,  "mailbox name not allowed"),
    Rule(At::Any,     500, 599, "",      Verdict::Refused, "refused, not the recipient's address"),
];

/// The verdict on a reply `code` with `text` (which may start with an
/// enhanced status code) at `stage`.
pub fn judge(stage: &str, code: u16, text: &str) -> Verdict {
    rule_for(stage, code, text).map_or(Verdict::Retry, |r| r.4)
}

/// Why [`judge`] decided as it did, for messages and tests.
pub fn reason(stage: &str, code: u16, text: &str) -> &'static str {
    rule_for(stage, code, text).map_or("not an error reply", |r| r.5)
}

/// A 5xx at RCPT whose text blames our sender address or the relay
/// ("Sender address rejected", "Sender verify failed", "relay not
/// permitted"): said at RCPT, often with a 5.1.x code or a bare 550, yet not
/// about the recipient. Checked before the table, so such a refusal of every
/// recipient stops the run instead of bouncing the whole list.
static BLAMES_SENDER_OR_RELAY: Rule = Rule(
    At::Rcpt,
    500,
    599,
    "",
    Verdict::Refused,
    "the reply blames the sender or the relay",
);

fn blames_sender_or_relay(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["sender", "relay", "return path", "reverse path"]
        .iter()
        .any(|word| text.contains(word))
}

fn rule_for(stage: &str, code: u16, text: &str) -> Option<&'static Rule> {
    if stage == RCPT && (500..=599).contains(&code) && blames_sender_or_relay(text) {
        return Some(&BLAMES_SENDER_OR_RELAY);
    }
    let enhanced = enhanced_code(text).unwrap_or("");
    RULES.iter().find(|Rule(at, low, high, prefix, _, _)| {
        at.matches(stage)
            && (*low..=*high).contains(&code)
            && (prefix.is_empty() || enhanced.starts_with(prefix))
    })
}

/// The enhanced status code at the start of a reply text (`5.1.1 user
/// unknown` -> `5.1.1`), if any.
pub fn enhanced_code(text: &str) -> Option<&str> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class = parts.next()?;
    let ok = matches!(class, "2" | "4" | "5")
        && parts.clone().count() == 2
        && parts.all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        use Verdict::*;
        let cases = [
            // The recipient.
            (RCPT, 550, "5.1.1 user unknown", Bounce),
            (RCPT, 550, "no such user", Bounce),
            (RCPT, 551, "user not local", Bounce),
            (RCPT, 553, "mailbox name not allowed", Bounce),
            (RCPT, 550, "5.1.2 bad destination system", Bounce),
            (RCPT, 501, "5.1.3 bad recipient address syntax", Bounce),
            (RCPT, 550, "5.2.1 mailbox disabled", Bounce),
            (RCPT, 550, "5.4.4 unrouteable address", Bounce),
            // Not the recipient.
            (
                RCPT,
                550,
                "5.1.0 <bounces+x@org.example>: Sender address rejected: User unknown",
                Refused,
            ),
            (RCPT, 550, "Sender verify failed", Refused),
            (RCPT, 550, "relay not permitted", Refused),
            (RCPT, 551, "5.1.1 we do not relay for you", Refused),
            (RCPT, 550, "5.7.1 relaying denied", Refused),
            (RCPT, 554, "5.7.1 access denied", Refused),
            (RCPT, 500, "5.5.2 syntax error", Refused),
            (RCPT, 500, "syntax error", Refused),
            (RCPT, 503, "bad sequence of commands", Refused),
            (RCPT, 552, "too many recipients", Refused),
            (MAIL, 554, "transaction failed", Refused),
            (MAIL, 550, "5.1.7 bad sender", Refused),
            (MAIL, 550, "sender rejected", Refused),
            (MAIL, 553, "5.1.8 sender domain does not exist", Refused),
            (DATA, 554, "no valid recipients", Refused),
            (END_OF_DATA, 552, "5.3.4 message too big", Refused),
            (
                END_OF_DATA,
                552,
                "message size exceeds fixed limit",
                Refused,
            ),
            (END_OF_DATA, 552, "5.2.2 mailbox full", Refused),
            (
                END_OF_DATA,
                552,
                "5.2.3 message length exceeds limit",
                Refused,
            ),
            (END_OF_DATA, 554, "5.7.1 message rejected as spam", Refused),
            (END_OF_DATA, 550, "message refused", Refused),
            (END_OF_DATA, 550, "5.1.1 user unknown", Refused),
            (DATA, 554, "5.4.4 routing loop", Refused),
            (END_OF_DATA, 554, "5.6.0 bad content", Refused),
            // The server or our credentials.
            (CONNECT, 421, "4.3.2 service not available", Stop),
            (CONNECT, 554, "no SMTP service here", Stop),
            ("AUTH", 535, "5.7.8 bad credentials", Stop),
            (MAIL, 530, "5.7.0 authentication required", Stop),
            (RCPT, 421, "4.7.0 too many errors", Stop),
            (END_OF_DATA, 421, "shutting down", Stop),
            // Temporary.
            (RCPT, 451, "4.3.0 try again later", Retry),
            (MAIL, 450, "4.7.1 greylisted", Retry),
            (END_OF_DATA, 452, "4.2.2 mailbox full", Retry),
        ];
        for (stage, code, text, want) in cases {
            assert_eq!(
                judge(stage, code, text),
                want,
                "{stage} {code} {text} ({})",
                reason(stage, code, text)
            );
        }
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(enhanced_code("5.1.1 user unknown"), Some("5.1.1"));
        assert_eq!(enhanced_code("4.7.0"), Some("4.7.0"));
        assert_eq!(enhanced_code("5.1.10 null MX"), Some("5.1.10"));
        assert_eq!(enhanced_code("user unknown"), None);
        assert_eq!(enhanced_code("1.2.3 no"), None);
        assert_eq!(enhanced_code("5.1 short"), None);
        assert_eq!(enhanced_code(""), None);
    }
}

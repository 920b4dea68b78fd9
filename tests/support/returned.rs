//! Returned mail as a receiving MTA sends it back: RFC 3464 delivery
//! status reports for the tests that ingest bounces (tests/bounce_rules.rs,
//! tests/inbound.rs, tests/db_copy.rs).

use crate::support::smtp_sink::Received;

/// The value of the header `name` of a message the sink received, folded
/// lines joined; empty when the message has none.
pub fn header(m: &Received, name: &str) -> String {
    let raw = String::from_utf8_lossy(&m.data).replace("\r\n ", " ");
    raw.split("\r\n")
        .find(|l| l.starts_with(&format!("{name}:")))
        .map(|l| l[name.len() + 1..].trim().to_string())
        .unwrap_or_default()
}

/// An RFC 3464 report from mx.example.net, sent to `verp` (a signed VERP
/// address, or one without a token): the message to `to`, quoted by its
/// `message_id`, failed with `status` and `diagnostic`. `report` names the
/// report itself (its Message-ID is `<dsn.REPORT@mx.example.net>`): reports
/// that must count as different mail need different names.
pub fn dsn(
    report: &str,
    to: &str,
    verp: &str,
    message_id: &str,
    status: &str,
    diagnostic: &str,
) -> Vec<u8> {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n\
         To: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <dsn.{report}@mx.example.net>\r\n\
         MIME-Version: 1.0\r\nAuto-Submitted: auto-replied\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
         Final-Recipient: rfc822; {to}\r\nAction: failed\r\nStatus: {status}\r\n\
         Diagnostic-Code: smtp; {diagnostic}\r\n\r\n\
         --b1\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {message_id}\r\nTo: {to}\r\n\r\n--b1--\r\n"
    )
    .into_bytes()
}

/// [`dsn`] for a message the sink received, as its recipient's MTA returns
/// it: sent back to its envelope sender (the VERP address), about its first
/// recipient, quoting its Message-ID.
pub fn dsn_for(m: &Received, report: &str, status: &str, diagnostic: &str) -> Vec<u8> {
    dsn(
        report,
        &m.rcpt_to[0],
        &m.mail_from,
        &header(m, "Message-ID"),
        status,
        diagnostic,
    )
}

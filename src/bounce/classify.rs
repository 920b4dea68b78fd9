//! Hard, soft or delayed: one pure function over the status code, the
//! diagnostic text and the DSN Action.
//!
//! The rules, in order:
//! 1. An Action of `delayed` is [`Class::Delayed`]: the server is still
//!    trying, so it never counts as a bounce.
//! 2. A `4.x.x` status (or a 4xx reply code when there is no status) is soft:
//!    the server itself says the failure is temporary.
//! 3. The diagnostic text is matched against [`SOFT`] and [`HARD`] phrases.
//!    Soft phrases win over the status code (`550 5.2.2 mailbox full`,
//!    `550 5.7.1 blocked by policy`): a 5.x.x code alone is not hard. Hard
//!    phrases say the address itself is permanently bad: the user or the
//!    host is unknown, the mailbox has moved, the domain accepts no mail.
//! 4. Without a telling phrase, the status decides: `5.1.1` (bad mailbox),
//!    `5.1.2`/`5.1.10`/`5.4.4` (bad or null-MX domain), `5.1.6` (moved) are
//!    hard; everything else is soft.
//!
//! Soft is the safe default: a soft bounce only suppresses an address
//! after it repeats, a hard one at once.

use super::Class;

/// Phrases (lower-case) saying the address is permanently bad.
pub const HARD: &[&str] = &[
    // userunknown
    "user unknown",
    "unknown user",
    "user not found",
    "unknown recipient",
    "recipient unknown",
    "no such user",
    "no such recipient",
    "no such mailbox",
    "no such account",
    "no such address",
    "no such person",
    "no such local user",
    "no mailbox here",
    "mailbox not found",
    "mailbox unavailable",
    "mailbox is unavailable",
    "mailbox does not exist",
    "mailbox doesn't exist",
    "mailbox name not allowed",
    "mailbox not available",
    "address does not exist",
    "address doesn't exist",
    "account does not exist",
    "account doesn't exist",
    "recipient does not exist",
    "user does not exist",
    "user doesn't exist",
    "does not exist",
    "doesn't exist",
    "doesn't have a",
    "not a valid mailbox",
    "invalid mailbox",
    "invalid recipient",
    "invalid address",
    "unknown address",
    "unknown local part",
    "unknown mailbox",
    "user invalid",
    "recipient address rejected: user unknown",
    "recipient not found",
    "address unknown",
    "addressee unknown",
    "not our customer",
    "no longer available",
    "not listed in",
    "unrouteable address",
    "unroutable address",
    "no valid recipients",
    "bad recipient",
    "is not a known user",
    "user not exist",
    "user account not exist",
    "this user doesn't have",
    "account is unavailable",
    "said: 550 5.1.1",
    "undeliverable address",
    "no account by that name",
    "sorry, no mailbox",
    "recipient rejected",
    "no such domain",
    // hostunknown
    "host unknown",
    "unknown host",
    "host not found",
    "domain not found",
    "domain does not exist",
    "name service error",
    "unrouteable mail domain",
    "domain name not found",
    "no mx",
    "mx record",
    "host or domain name not found",
    "name or service not known",
    "nxdomain",
    "illegal host/domain name",
    "unknown domain",
    "domain is not",
    // hasmoved
    "has moved",
    "moved to",
    "address changed",
    // notaccept
    "does not accept mail",
    "not accepting mail",
    "accepts no mail",
    "null mx",
];

/// Phrases (lower-case) saying the failure is about the message, the sender,
/// the mailbox's state or the moment, not the address.
pub const SOFT: &[&str] = &[
    // mailboxfull / exceedlimit / mesgtoobig
    "mailbox full",
    "mailbox is full",
    "mailbox has exceeded",
    "mailbox size limit",
    "full mailbox",
    "quota",
    "over the limit",
    "insufficient",
    "storage",
    "disk full",
    "too large",
    "too big",
    "size exceeds",
    "exceeds",
    "exceeded",
    // blocked / spam / policy / security
    "blocked",
    "block list",
    "blocklist",
    "blacklist",
    "denylist",
    "spam",
    "junk",
    "virus",
    "policy",
    "reputation",
    "rbl",
    "spamhaus",
    "dnsbl",
    "not authorized",
    "unauthenticated",
    "authentication",
    "dmarc",
    "spf",
    "dkim",
    "reverse dns",
    "ptr record",
    "rejected by",
    "content",
    "filter",
    "refused",
    "relay",
    "access denied",
    "suspended",
    "disabled",
    "inactive",
    "expired",
    "banned",
    "prohibited",
    "not permitted",
    "not allowed to",
    // rate limits and temporary trouble
    "rate limit",
    "too many",
    "try again",
    "temporar",
    "timed out",
    "timeout",
    "time out",
    "connection",
    "deferred",
    "later",
    "too long",
    "retry",
    "mailer error",
    "system error",
    "loop",
    "syntax",
];

/// Classifies one recipient's failure. `status` is an RFC 3463 code such as
/// `5.1.1` (or an SMTP reply code such as `550` when that is all there is),
/// `diagnostic` the server's text, `action` the DSN Action field.
pub fn classify(status: Option<&str>, diagnostic: &str, action: Option<&str>) -> Class {
    if action.is_some_and(|a| a.trim().eq_ignore_ascii_case("delayed")) {
        return Class::Delayed;
    }
    let status = status.map(str::trim).filter(|s| !s.is_empty());
    if status.is_some_and(|s| s.starts_with('4')) {
        return Class::Soft;
    }
    let text = diagnostic.to_ascii_lowercase();
    if let Some(hard) = first_match(&text, HARD) {
        // A hard phrase loses only to a soft phrase that comes before it:
        // "quota exceeded (user unknown?)" is rare, "mailbox unavailable:
        // quota exceeded" is not.
        match first_match(&text, SOFT) {
            Some(soft) if soft < hard && !soft_is_incidental(&text) => return Class::Soft,
            _ => return Class::Hard,
        }
    }
    if first_match(&text, SOFT).is_some() {
        return Class::Soft;
    }
    match status {
        Some(s) if hard_status(s) => Class::Hard,
        _ => Class::Soft,
    }
}

/// True if `text` holds any phrase of either table: whether it says
/// enough to classify on its own.
pub fn has_phrase(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    first_match(&text, HARD).is_some() || first_match(&text, SOFT).is_some()
}

/// Soft phrases that often stand in front of a hard reason, e.g.
/// "rejected by recipient domain: user unknown".
fn soft_is_incidental(text: &str) -> bool {
    ["rejected by", "refused", "relay", "content", "later", "filter"]
        .iter()
        .any(|p| text.contains(p))
        && !["quota", "full", "spam", "blocked", "policy"]
            .iter()
            .any(|p| text.contains(p))
}

/// The position of the earliest phrase of `table` in `text`.
fn first_match(text: &str, table: &[&str]) -> Option<usize> {
    table.iter().filter_map(|p| text.find(p)).min()
}

/// Status codes that name a permanently bad address.
fn hard_status(status: &str) -> bool {
    let mut it = status.split('.');
    let (Some(class), Some(subject), Some(detail)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    class == "5"
        && matches!(
            (subject, detail),
            ("1", "1") | ("1", "2") | ("1", "6") | ("1", "10") | ("4", "4")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: Option<&str>, diagnostic: &str, action: Option<&str>, expect: Class) {
        assert_eq!(classify(status, diagnostic, action), expect, "{status:?} {diagnostic:?}");
    }

    #[test]
    fn user_unknown_is_hard() {
        check(Some("5.1.1"), "550 5.1.1 <a@b.example>: user unknown", None, Class::Hard);
        check(None, "550 No such user here", None, Class::Hard);
        check(Some("5.1.1"), "", Some("failed"), Class::Hard);
    }

    #[test]
    fn mailbox_full_is_soft_even_with_5xx() {
        check(Some("5.2.2"), "552 5.2.2 mailbox full", Some("failed"), Class::Soft);
        check(Some("5.0.0"), "550 Quota exceeded", None, Class::Soft);
    }

    #[test]
    fn temporary_codes_are_soft() {
        check(Some("4.2.2"), "452 4.2.2 over quota", None, Class::Soft);
        check(Some("4.1.1"), "451 user unknown (try later)", None, Class::Soft);
    }

    #[test]
    fn delayed_action_is_delayed() {
        check(Some("4.4.7"), "connection timed out", Some("delayed"), Class::Delayed);
        check(Some("5.1.1"), "user unknown", Some("Delayed"), Class::Delayed);
    }

    #[test]
    fn policy_blocks_are_soft() {
        check(Some("5.7.1"), "550 5.7.1 blocked by policy", None, Class::Soft);
        check(None, "554 rejected: listed at spamhaus", None, Class::Soft);
        check(None, "421 rate limited, try again later", None, Class::Soft);
    }

    #[test]
    fn host_problems_are_hard() {
        check(None, "host not found", None, Class::Hard);
        check(Some("5.4.4"), "", None, Class::Hard);
        check(Some("5.1.2"), "", None, Class::Hard);
        check(None, "The mailbox has moved", None, Class::Hard);
        check(Some("5.1.10"), "null MX", None, Class::Hard);
    }

    #[test]
    fn bare_5xx_is_soft() {
        check(Some("5.0.0"), "", None, Class::Soft);
        check(None, "", None, Class::Soft);
        check(Some("5.7.1"), "", None, Class::Soft);
    }
}

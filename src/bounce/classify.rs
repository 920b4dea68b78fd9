//! Hard, soft or delayed: one pure function over the status code, the
//! diagnostic text and the DSN Action.
//!
//! The rules, in order:
//! 1. An Action of `delayed` is [`Class::Delayed`]: the server is still
//!    trying, so it never counts as a bounce.
//! 2. A `4.x.x` status is soft: the server says the failure is temporary.
//!    So are `5.1.7`/`5.1.8`, which are about the sender's address.
//! 3. A [`SOFT`] phrase (mailbox full, blocked, spam, policy, rate limit,
//!    temporary, ...) makes it soft whatever the code: a 5.x.x code alone
//!    is not hard (`550 5.2.2 mailbox full`, `550 5.7.1 blocked by policy`).
//!    A few [`HARD_FIRST`] phrases are checked before it.
//! 4. A `5.7.x` status (security, policy) is soft whatever the words:
//!    "550 5.7.1 User Unknown" is a filter speaking; where the code and the
//!    words disagree, the safe class wins.
//! 5. A [`HARD`] phrase (user or host unknown, moved, no mail accepted), or
//!    "host NAME not found", makes it hard, except "user unknown" said only after the content was
//!    sent (end of DATA), which is a content filter, and KDDI's
//!    "550 : User unknown", which is the recipient's own sender filter.
//! 6. Without a telling phrase, the status decides: `5.1.0`, `5.1.1` (bad
//!    mailbox), `5.1.2`, `5.1.10`, `5.4.4` (bad or null-MX domain) and
//!    `5.1.6` (moved) are hard; everything else is soft.
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
    "no smtp service",
];

/// Phrases (lower-case) saying the failure is about the mailbox's state,
/// the message, the sender or the moment, not the address. They win over
/// hard phrases and codes: "5.1.0 unknown address error: 5.2.2 mailbox full".
pub const SOFT: &[&str] = &[
    // mailboxfull / exceedlimit / mesgtoobig
    "mailbox full",
    "mailbox is full",
    "mailbox has exceeded",
    "mailbox size limit",
    "full mailbox",
    "quota",
    "insufficient",
    "disk full",
    "too large",
    "too big",
    "size exceeds",
    // blocked / spam / policy / security
    "blocked",
    "block list",
    "blocklist",
    "blacklist",
    "denylist",
    "spam",
    "virus",
    "policy",
    "reputation",
    "spamhaus",
    "dnsbl",
    "access denied",
    "not authorized",
    "unauthenticated",
    "dmarc",
    "reverse dns",
    "ptr record",
    "sender address",
    "domain of sender",
    // rate limits and temporary trouble
    "rate limit",
    "too many",
    "try again",
    "temporar",
    "timed out",
    "name server reply",
    "couldn't create",
    "sender rejected",
    "recipient preferences",
    "routing loop",
    "hop count",
];

/// Words that say something but not enough to decide: with them the
/// status code decides, without them the whole report is read.
const VAGUE: &[&str] = &[
    "exceeded",
    "content",
    "filter",
    "refused",
    "relay",
    "suspended",
    "disabled",
    "inactive",
    "expired",
    "rejected",
    "later",
    "connection",
    "mailer error",
    "system error",
    "syntax",
    "authentication",
    "spf",
    "dkim",
];

/// Hard phrases that win over the soft ones they contain.
const HARD_FIRST: &[&str] = &[
    "recipient address rejected: access denied",
    "recipient address rejected: user unknown",
    "domain is not reachable",
];

/// Hard phrases that are softened when the server said them only after the
/// message content was sent (end of DATA): that is a content filter
/// speaking, the address was accepted at RCPT.
const USER_UNKNOWN: &[&str] = &[
    "user unknown",
    "unknown user",
    "no such user",
    "recipient not found",
];

/// Classifies one recipient's failure. `status` is an RFC 3463 code such as
/// `5.1.1` (or an SMTP reply code such as `550` when that is all there is),
/// `diagnostic` the server's text, `action` the DSN Action field.
pub fn classify(status: Option<&str>, diagnostic: &str, action: Option<&str>) -> Class {
    if action.is_some_and(|a| a.trim().eq_ignore_ascii_case("delayed")) {
        return Class::Delayed;
    }
    let status = status.map(str::trim).filter(|s| !s.is_empty());
    if status
        .is_some_and(|s| s.starts_with('4') || s.starts_with("5.1.7") || s.starts_with("5.1.8"))
    {
        // Temporary, or about the sender's address (5.1.7, 5.1.8).
        return Class::Soft;
    }
    let text = diagnostic.to_ascii_lowercase();
    if first_match(&text, HARD_FIRST).is_some() {
        return Class::Hard;
    }
    if first_match(&text, SOFT).is_some() {
        return Class::Soft;
    }
    // A security or policy code (X.7.x) says the address was not the
    // problem, whatever words come with it: "550 5.7.1 User Unknown" is a
    // filter. (Not X.2.x: "5.2.1 User Unknown" is as often a bad address.)
    if status.is_some_and(policy_status) {
        return Class::Soft;
    }
    // KDDI (ezweb.ne.jp, au.com) answers "550 : User unknown" when the
    // recipient's own filter refuses the sender: the address exists.
    if text.contains("550 : user unknown") || text.contains("550: : user unknown") {
        return Class::Soft;
    }
    if first_match(&text, HARD).is_some() || names_unknown_host(&text) {
        let after_data = text.contains("end of data")
            || text.contains(">>> data")
            || text.contains("after data");
        if after_data && first_match(&text, USER_UNKNOWN).is_some() {
            return Class::Soft;
        }
        return Class::Hard;
    }
    match status {
        Some(s) if hard_status(s) => Class::Hard,
        _ => Class::Soft,
    }
}

/// True if `text` holds any phrase: whether it says enough to classify on
/// its own.
pub fn has_phrase(text: &str) -> bool {
    // Addresses do not count: "filtered@example.net" says nothing.
    let text: String = text
        .split_whitespace()
        .filter(|w| !w.contains('@'))
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    [HARD, SOFT, VAGUE]
        .iter()
        .any(|t| first_match(&text, t).is_some())
}

/// The position of the earliest phrase of `table` in `text`.
fn first_match(text: &str, table: &[&str]) -> Option<usize> {
    table.iter().filter_map(|p| text.find(p)).min()
}

/// `5.7.x`: security or policy, not the address.
fn policy_status(status: &str) -> bool {
    status.starts_with("5.7.")
}

/// "host mx.example.org not found" (DragonFly's "DNS lookup failure: host
/// … not found", Sendmail's "Host unknown"'s cousins): a named host that
/// does not exist.
fn names_unknown_host(text: &str) -> bool {
    text.match_indices("host ").any(|(i, m)| {
        let mut rest = text[i + m.len()..].splitn(2, char::is_whitespace);
        let name = rest.next().unwrap_or("");
        name.contains('.')
            && rest
                .next()
                .is_some_and(|r| r.trim_start().starts_with("not found"))
    })
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
            ("1", "0") | ("1", "1") | ("1", "2") | ("1", "6") | ("1", "10") | ("4", "4")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: Option<&str>, diagnostic: &str, action: Option<&str>, expect: Class) {
        assert_eq!(
            classify(status, diagnostic, action),
            expect,
            "{status:?} {diagnostic:?}"
        );
    }

    #[test]
    fn user_unknown_is_hard() {
        check(
            Some("5.1.1"),
            "550 5.1.1 <a@b.example>: user unknown",
            None,
            Class::Hard,
        );
        check(None, "550 No such user here", None, Class::Hard);
        check(Some("5.1.1"), "", Some("failed"), Class::Hard);
    }

    #[test]
    fn mailbox_full_is_soft_even_with_5xx() {
        check(
            Some("5.2.2"),
            "552 5.2.2 mailbox full",
            Some("failed"),
            Class::Soft,
        );
        check(Some("5.0.0"), "550 Quota exceeded", None, Class::Soft);
    }

    #[test]
    fn temporary_codes_are_soft() {
        check(Some("4.2.2"), "452 4.2.2 over quota", None, Class::Soft);
        check(
            Some("4.1.1"),
            "451 user unknown (try later)",
            None,
            Class::Soft,
        );
    }

    #[test]
    fn delayed_action_is_delayed() {
        check(
            Some("4.4.7"),
            "connection timed out",
            Some("delayed"),
            Class::Delayed,
        );
        check(
            Some("5.1.1"),
            "user unknown",
            Some("Delayed"),
            Class::Delayed,
        );
    }

    #[test]
    fn policy_blocks_are_soft() {
        check(
            Some("5.7.1"),
            "550 5.7.1 blocked by policy",
            None,
            Class::Soft,
        );
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
    fn a_policy_code_wins_over_user_unknown() {
        check(
            Some("5.7.1"),
            "550 5.7.1 550 User Unknown: a@b.example",
            None,
            Class::Soft,
        );
        // Only the policy class: a mailbox code with those words is hard.
        check(
            Some("5.2.1"),
            "550 5.2.1 <a@b.example>... User Unknown",
            None,
            Class::Hard,
        );
    }

    #[test]
    fn a_named_host_not_found_is_hard() {
        check(
            None,
            "dns lookup failure: host cx.example.org not found",
            None,
            Class::Hard,
        );
        check(
            None,
            "the host you asked for was not found",
            None,
            Class::Soft,
        );
    }

    #[test]
    fn bare_5xx_is_soft() {
        check(Some("5.0.0"), "", None, Class::Soft);
        check(None, "", None, Class::Soft);
        check(Some("5.7.1"), "", None, Class::Soft);
    }
}

//! Free-text heuristics: the bounces that carry no delivery-status part
//! (qmail, Exim, old Sendmail, Exchange, Yahoo, ...), auto-reply detection,
//! and the small scanners (addresses, status codes) the other parsers share.

/// Subjects of non-delivery reports (lower-case, matched anywhere).
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "undelivered",
    "delivery status notification",
    "delivery failure",
    "delivery failed",
    "delivery problem",
    "delivery notification",
    "failure notice",
    "failure delivery",
    "returned mail",
    "return mail",
    "mail delivery failed",
    "mail delivery failure",
    "mail delivery system",
    "mail delivery subsystem",
    "nondeliverable",
    "non-deliverable",
    "non delivery",
    "non-delivery",
    "could not send",
    "couldn't be delivered",
    "not be delivered",
    "was not delivered",
    "delivery has failed",
    "mail system error",
    "warning: could not",
    "bounce",
    "rejected",
    "error sending",
    "message not delivered",
    "message delivery",
    "failed mail",
    "delivery report",
    "nicht zustellbar",
    "unzustellbar",
    "permanent error",
    "mail could not be delivered",
    "notification",
    "undeliverable",
    "failed delivery",
    "delivery status",
];

/// Local parts of addresses that send bounces.
const DAEMONS: &[&str] = &[
    "mailer-daemon",
    "post_master",
    "postmaster",
    "mail-daemon",
    "maildaemon",
    "mailerdaemon",
    "mdaemon",
    "mail.daemon",
    "bounce",
    "bounces",
    "mailadmin",
    "mail-delivery",
    "noreply",
    "no-reply",
    "root",
    "daemon",
    "majordomo",
];

/// Subjects and body openings of vacation notices and other auto-replies.
const AUTOREPLY_SUBJECTS: &[&str] = &[
    "auto reply",
    "auto-reply",
    "autoreply",
    "auto:",
    "automatic reply",
    "automatische antwort",
    "autosvar",
    "réponse automatique",
    "respuesta automática",
    "out of office",
    "out of the office",
    "away until",
    "away from",
    "vacation",
    "abwesenheit",
    "on leave",
    "on holiday",
];

/// Markers that start the copy of the returned original in a text body.
const ORIGINAL_MARKERS: &[&str] = &[
    "--- below this line is a copy of the message",
    "------ this is a copy of the message",
    "original message follows",
    "----- original message -----",
    "--- original message ---",
    "content-type: message/rfc822",
    "------ original message",
    "--------original message--------",
    "original message header",
    "this is a copy of the headers",
    "headers of the original message",
    "header of the original message",
    "message headers follow",
    "----- unsent message follows",
    "----- message header follows",
    "returned message follows",
];

/// True if the subject or the sender looks like a non-delivery report.
pub fn looks_like_bounce(subject: &str, from: &str, from_name: &str) -> bool {
    let s = subject.to_lowercase();
    let local = from.split('@').next().unwrap_or("").to_ascii_lowercase();
    let name = from_name.to_ascii_lowercase();
    DAEMONS
        .iter()
        .any(|d| local == *d || (local.starts_with(d) && d.len() > 6))
        || name.contains("mail delivery")
        || name.contains("mailer-daemon")
        || name.contains("postmaster")
        || BOUNCE_SUBJECTS.iter().any(|p| s.contains(p))
}

/// True if the subject or the opening of the body looks like an auto-reply.
pub fn looks_like_autoreply(subject: &str, body: &str) -> bool {
    let s = subject.to_lowercase();
    if AUTOREPLY_SUBJECTS.iter().any(|p| s.contains(p)) {
        return true;
    }
    let head: String = body.chars().take(400).collect::<String>().to_lowercase();
    [
        "out of the office",
        "out of office",
        "i am away",
        "i'm away",
        "i am currently away",
        "on vacation",
        "on holiday",
        "limited access to email",
        "will be back",
        "will respond",
        "i will reply",
    ]
    .iter()
    .any(|p| head.contains(p))
}

/// Cuts a text body at the start of the returned original, if marked.
pub fn before_original(text: &str) -> &str {
    let lower = text.to_ascii_lowercase();
    let cut = ORIGINAL_MARKERS
        .iter()
        .filter_map(|m| lower.find(m))
        .filter(|&i| i > 0)
        .min()
        .unwrap_or(text.len());
    // `to_ascii_lowercase` keeps byte offsets, so `cut` is a char boundary.
    &text[..cut]
}

/// The first RFC 3463 status code (`5.1.1`) in `text`, with its byte offset.
pub fn find_status(text: &str) -> Option<(String, usize)> {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 5 <= b.len() {
        if matches!(b[i], b'2' | b'4' | b'5')
            && b[i + 1] == b'.'
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.'))
        {
            let mut j = i + 2;
            let s = j;
            while j < b.len() && b[j].is_ascii_digit() && j - s < 3 {
                j += 1;
            }
            if j > s && j < b.len() && b[j] == b'.' {
                let k0 = j + 1;
                let mut k = k0;
                while k < b.len() && b[k].is_ascii_digit() && k - k0 < 3 {
                    k += 1;
                }
                let ends = k == b.len()
                    || !(b[k].is_ascii_digit()
                        || b[k] == b'.' && k + 1 < b.len() && b[k + 1].is_ascii_digit());
                if k > k0 && ends {
                    return Some((text[i..k].to_string(), i));
                }
            }
        }
        i += 1;
    }
    None
}

/// The first three-digit SMTP reply code (`550`) at a word start.
#[cfg(test)]
pub fn find_reply_code(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(2)).find_map(|i| {
        let ok = matches!(b[i], b'4' | b'5')
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit()
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'.')
            && (i + 3 == b.len() || matches!(b[i + 3], b' ' | b'-' | b'\t' | b'\r' | b'\n'));
        ok.then(|| &text[i..i + 3])
    })
}

/// Normalises an address: strips brackets, quotes, `mailto:` and trailing
/// punctuation, lower-cases it; `None` unless it has a local part and a
/// dotted domain.
pub fn clean_address(raw: &str) -> Option<String> {
    let mut s = raw.trim();
    if let (Some(a), Some(b)) = (s.find('<'), s.rfind('>'))
        && a < b
    {
        s = &s[a + 1..b];
    }
    let s = s
        .trim_matches(|c: char| c.is_whitespace() || "<>\"'()[],;:.".contains(c))
        .trim_start_matches("mailto:")
        .trim_start_matches("rfc822:");
    let (local, domain) = s.rsplit_once('@')?;
    let ok_local = !local.is_empty()
        && local
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&c));
    let ok_domain = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
    (ok_local && ok_domain).then(|| s.to_ascii_lowercase())
}

/// Every address in `text` with its byte offset, in order.
pub fn find_addresses(text: &str) -> Vec<(String, usize)> {
    let b = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&c);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'@' {
            let mut s = i;
            while s > 0 && word(b[s - 1]) {
                s -= 1;
            }
            let mut e = i + 1;
            while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'-' || b[e] == b'.') {
                e += 1;
            }
            if let Some(a) = clean_address(&text[s..e]) {
                out.push((a, s));
            }
            i = e.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// True for addresses that send bounces rather than receive mail.
pub fn is_daemon(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or("");
    DAEMONS.contains(&local) || local.starts_with("mailer-daemon")
}

/// One recipient found in a free-text bounce: its address and the lines
/// that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRecipient {
    pub address: String,
    pub diagnostic: String,
}

/// Finds the failed recipients in the human-readable part of a bounce.
/// `exclude` holds the addresses that are surely not recipients (the
/// bounce's own sender and addressee, the original sender).
pub fn recipients(text: &str, exclude: &[String]) -> Vec<TextRecipient> {
    let text = before_original(text);
    let mut out: Vec<TextRecipient> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        for (addr, _) in find_addresses(line) {
            if exclude.contains(&addr) || is_daemon(&addr) || out.iter().any(|r| r.address == addr)
            {
                continue;
            }
            if is_header_line(line) {
                continue;
            }
            let diagnostic = explanation(&lines, n, &addr);
            out.push(TextRecipient {
                address: addr,
                diagnostic,
            });
        }
    }
    out
}

/// Lines of a copied header block (`From: ...`) name senders and hosts,
/// not failed recipients.
fn is_header_line(line: &str) -> bool {
    let l = line.trim_start().to_ascii_lowercase();
    [
        "from:",
        "reply-to:",
        "sender:",
        "return-path:",
        "message-id:",
        "received:",
        "by ",
        "for ",
        "id ",
        "with ",
        "references:",
        "in-reply-to:",
        "x-",
        "dkim",
        "list-",
        "envelope-from",
        "smtp.mailfrom",
        "(envelope-from",
    ]
    .iter()
    .any(|p| l.starts_with(p))
        || l.contains("envelope-from")
        || l.contains("mail from:")
        || l.contains("message-id")
}

/// The line naming a recipient and the lines after it up to a blank line
/// (at most a few), joined: where MTAs put the reason. A reply with another
/// code that does not name `address` ends it: in a transcript, Sendmail's
/// "421 ... Deferred: Connection timed out" after "550 <a@b>... User
/// unknown" is about the connection, not this recipient.
fn explanation(lines: &[&str], n: usize, address: &str) -> String {
    let mut out = String::from(lines[n].trim());
    let mut code = reply_code_at_start(lines[n]);
    for l in lines.iter().skip(n + 1).take(6) {
        let t = l.trim();
        if t.is_empty() {
            break;
        }
        if let Some(this) = reply_code_at_start(t) {
            let names = t.to_ascii_lowercase().contains(address);
            if code.is_some_and(|c| c != this) && !names {
                break;
            }
            code = Some(this);
        }
        out.push(' ');
        out.push_str(t);
    }
    out
}

/// The SMTP reply code a transcript line starts with: `550 ...`,
/// `550-...`, `<<< 550 ...`.
fn reply_code_at_start(line: &str) -> Option<&str> {
    let t = line.trim_start().trim_start_matches("<<<").trim_start();
    let b = t.as_bytes();
    let ok = b.len() >= 4
        && matches!(b[0], b'2' | b'4' | b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && matches!(b[3], b' ' | b'-');
    ok.then(|| &t[..3])
}

/// The first `Message-ID:` line in a text body (a copied original),
/// without brackets.
pub fn message_id_in(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim_start();
        let (name, value) = l.split_once(':')?;
        if !name.eq_ignore_ascii_case("message-id") {
            return None;
        }
        let v = value.trim().trim_start_matches('<');
        let v = v.split('>').next()?.trim();
        (!v.is_empty() && v.contains('@')).then(|| v.to_string())
    })
}

/// The address of the first `To:` line after the start of the returned
/// original in a text body.
pub fn original_to_in(text: &str) -> Option<String> {
    let start = before_original(text).len();
    text[start..].lines().find_map(|l| {
        let (name, value) = l.trim_start().split_once(':')?;
        if !name.eq_ignore_ascii_case("to") {
            return None;
        }
        find_addresses(value).into_iter().next().map(|a| a.0)
    })
}

/// True if a session transcript shows the server refusing after DATA.
pub fn refused_at_data(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let lines: Vec<&str> = lower
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // ">>> DATA" answered by "<<< 503 need RCPT" means RCPT failed first.
    let data_refused = lines.windows(2).any(|w| {
        w[0] == ">>> data"
            && w[1].trim_start_matches("<<< ").starts_with('5')
            && !w[1].contains("503")
    }) || lines
        .windows(2)
        .any(|w| w[0].ends_with("smtp command") && w[1] == "data");
    // With pipelining the RCPT refusal is read after DATA; a "503 need
    // RCPT" or "no valid recipients" after it shows that is what happened.
    let pipelined =
        lower.contains("no valid recipients") || lines.iter().any(|l| l.starts_with("<<< 503"));
    !pipelined && (data_refused || lower.contains("end of data") || lower.contains("after data"))
}

/// Strips HTML tags and decodes the few entities bounces use.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_status_codes() {
        assert_eq!(
            find_status("550 5.1.1 <a@b.c>: no").map(|s| s.0),
            Some("5.1.1".into())
        );
        assert_eq!(
            find_status("#5.2.2 full").map(|s| s.0),
            Some("5.2.2".into())
        );
        assert_eq!(
            find_status("ip 10.5.1.1 and 5.1.10 x").map(|s| s.0),
            Some("5.1.10".into())
        );
        assert_eq!(find_status("version 1.5.2.3"), None);
        assert_eq!(find_status("5."), None);
    }

    #[test]
    fn finds_reply_codes() {
        assert_eq!(find_reply_code("said: 550-5.1.1 x"), Some("550"));
        assert_eq!(find_reply_code("port 25"), None);
    }

    #[test]
    fn cleans_addresses() {
        assert_eq!(
            clean_address("<User@Example.ORG>:").as_deref(),
            Some("user@example.org")
        );
        assert_eq!(clean_address("rfc822;a@b"), None);
        assert_eq!(
            clean_address("\"x\" <a.b+c@d.example>").as_deref(),
            Some("a.b+c@d.example")
        );
    }

    #[test]
    fn finds_addresses_in_text() {
        let found = find_addresses("to <a@b.example>, c@d.example. and @nope");
        let addrs: Vec<_> = found.into_iter().map(|a| a.0).collect();
        assert_eq!(addrs, ["a@b.example", "c@d.example"]);
    }

    #[test]
    fn a_later_reply_about_the_connection_is_not_the_reason() {
        let text = "   ----- Transcript of session follows -----\n\
            >>> RCPT To:<a@b.example>\n\
            <<< 550 <a@b.example>, User Unknown\n\
            550 <a@b.example>... User unknown\n\
            421 b.example (smtp)... Deferred: Connection timed out\n";
        let r = recipients(text, &[]);
        assert_eq!(r[0].address, "a@b.example");
        assert!(r[0].diagnostic.ends_with("User unknown"), "{:?}", r[0]);
        // Continuation lines of one reply stay.
        let text = "<a@b.example>: host mx.b.example said:\n\
            550-5.1.1 The email account that you tried to reach does not exist.\n\
            550-5.1.1 Please try double-checking the recipient's email address\n";
        let r = recipients(text, &[]);
        assert!(r[0].diagnostic.contains("double-checking"), "{:?}", r[0]);
    }

    #[test]
    fn quoted_headers_are_not_recipients() {
        for marker in [
            "--- The header of the original message is following. ---",
            "Message headers follow.",
        ] {
            let text = format!(
                "The following address(es) failed:\n\nto@x.example:\n550 5.2.0 rejected\n\n\
                 {marker}\n\nTo: other@y.example\n"
            );
            let r = recipients(&text, &[]);
            let addrs: Vec<_> = r.iter().map(|r| r.address.as_str()).collect();
            assert_eq!(addrs, ["to@x.example"], "{marker}");
            assert_eq!(original_to_in(&text).as_deref(), Some("other@y.example"));
        }
    }

    #[test]
    fn qmail_style_recipient() {
        let text = "Hi. This is the qmail-send program at mx.example.net.\n\
            I'm afraid I wasn't able to deliver your message to the following addresses.\n\n\
            <nobody@example.net>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n\
            --- Below this line is a copy of the message.\n\nTo: other@example.net\n";
        let r = recipients(text, &[]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].address, "nobody@example.net");
        assert!(r[0].diagnostic.contains("no mailbox"), "{:?}", r[0]);
    }
}

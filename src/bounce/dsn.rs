//! RFC 3464 delivery-status fields (and RFC 6533 global ones): header-style
//! `Name: value` lines in blocks separated by blank lines. The first block
//! is about the message, each following one about a recipient. The same
//! reader serves the RFC 5965 feedback-report part (see `arf`).

/// One block of fields, names lower-cased, continuation lines unfolded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every value of a field, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a field part into blocks. Lines that are not fields (and do not
/// continue one) are skipped, so stray text around the fields is harmless.
pub fn blocks(text: &str) -> Vec<Fields> {
    let mut out = Vec::new();
    let mut cur = Fields::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !cur.0.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.0.last_mut() {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                cur.0
                    .push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    if !cur.0.is_empty() {
        out.push(cur);
    }
    out
}

/// One recipient as a DSN reports it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    pub address: Option<String>,
    pub action: Option<String>,
    pub status: Option<String>,
    pub diagnostic: String,
}

/// The per-recipient blocks of a delivery-status part: those with a
/// Final-Recipient, Original-Recipient or Action.
pub fn recipients(text: &str) -> Vec<DsnRecipient> {
    blocks(text)
        .into_iter()
        .flat_map(split_recipients)
        .filter(|b| {
            b.get("final-recipient").is_some()
                || b.get("original-recipient").is_some()
                || b.get("action").is_some()
        })
        .map(|b| {
            let address = b
                .get("final-recipient")
                .and_then(address_field)
                .or_else(|| b.get("original-recipient").and_then(address_field));
            let status = b
                .get("status")
                .and_then(|s| super::text::find_status(s).map(|(s, _)| s));
            let diagnostic = b
                .get("diagnostic-code")
                .map(|d| strip_type(d).trim().to_string())
                .unwrap_or_default();
            DsnRecipient {
                address,
                action: b.get("action").map(|a| a.trim().to_ascii_lowercase()),
                status,
                diagnostic,
            }
        })
        .collect()
}

/// Some MTAs forget the blank line between recipients: a second
/// Final-Recipient starts a new block.
fn split_recipients(block: Fields) -> Vec<Fields> {
    let mut out: Vec<Fields> = vec![Fields::default()];
    for (name, value) in block.0 {
        let cur = out.last_mut().expect("never empty");
        if name == "final-recipient" && cur.get("final-recipient").is_some() {
            out.push(Fields(vec![(name, value)]));
        } else {
            cur.0.push((name, value));
        }
    }
    out
}

/// `rfc822; user@example.org` -> `user@example.org`.
pub fn address_field(value: &str) -> Option<String> {
    super::text::clean_address(strip_type(value))
}

/// Drops an RFC 3464 type prefix such as `rfc822;` or `smtp;`.
fn strip_type(value: &str) -> &str {
    match value.split_once(';') {
        Some((ty, rest)) if !ty.contains(' ') && !ty.contains('@') && ty.len() < 16 => rest.trim(),
        _ => value.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_blocks_and_recipients() {
        let text = "Reporting-MTA: dns; mx.example.org\r\n\r\n\
            Final-Recipient: rfc822; Nobody@Example.COM\r\n\
            Action: failed\r\nStatus: 5.1.1\r\n\
            Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.com>:\r\n  user unknown\r\n\r\n\
            Final-Recipient: rfc822;other@example.com\r\nAction: delayed\r\nStatus: 4.4.7\r\n";
        let r = recipients(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].address.as_deref(), Some("nobody@example.com"));
        assert_eq!(r[0].status.as_deref(), Some("5.1.1"));
        assert_eq!(
            r[0].diagnostic,
            "550 5.1.1 <nobody@example.com>: user unknown"
        );
        assert_eq!(r[1].action.as_deref(), Some("delayed"));
    }

    #[test]
    fn tolerates_garbage() {
        assert!(recipients("").is_empty());
        assert!(recipients(":\n \n:x\n\u{0}").is_empty());
    }
}

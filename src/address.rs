//! Email addresses: validation and the one canonical form the store keys on.
//! No IO. The import, the CLI, the dispatcher and the web pages all call
//! [`normalize`], so an address typed in any of them finds the same person.
//!
//! The canonical form is the whole address in lower case with the domain in
//! ASCII (IDNA, punycode). Local parts are case-sensitive on paper, but no
//! mailbox provider treats them so, and a single form is what lets duplicates
//! merge and suppressions match.

use sha2::{Digest, Sha256};

/// Why an address was refused; the message is shown next to the CSV line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty email address")]
    Empty,
    #[error("missing @ in email address")]
    MissingAt,
    #[error("more than one @ in email address")]
    ManyAt,
    #[error("empty local part before @")]
    EmptyLocal,
    #[error("local part longer than 64 bytes")]
    LocalTooLong,
    #[error("invalid character {0:?} in local part")]
    LocalChar(char),
    #[error("dots misplaced in local part")]
    LocalDots,
    #[error("empty domain after @")]
    EmptyDomain,
    #[error("invalid domain {0:?}")]
    Domain(String),
    #[error("domain {0:?} has no dot")]
    NoDot(String),
    #[error("address longer than 254 bytes")]
    TooLong,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Trims, validates and returns the canonical form of `email`.
///
/// ```
/// assert_eq!(
///     bulletin::address::normalize(" José@Bücher.Example ").unwrap(),
///     "josé@xn--bcher-kva.example"
/// );
/// assert!(bulletin::address::normalize("no at sign").is_err());
/// ```
pub fn normalize(email: &str) -> Result<String> {
    let email = email.trim();
    if email.is_empty() {
        return Err(Error::Empty);
    }
    let (local, domain) = email.split_once('@').ok_or(Error::MissingAt)?;
    if domain.contains('@') {
        return Err(Error::ManyAt);
    }
    if local.is_empty() {
        return Err(Error::EmptyLocal);
    }
    if local.len() > 64 {
        return Err(Error::LocalTooLong);
    }
    // Dot-atom only (RFC 5321 with RFC 6531 UTF-8): quoted local parts are
    // legal but in a mailing list they are typos far more often than not.
    if let Some(c) = local.chars().find(|&c| !local_char(c)) {
        return Err(Error::LocalChar(c));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(Error::LocalDots);
    }
    if domain.is_empty() {
        return Err(Error::EmptyDomain);
    }
    let ascii = idna::domain_to_ascii(domain.trim_end_matches('.'))
        .map_err(|_| Error::Domain(domain.to_string()))?
        .to_ascii_lowercase();
    let labels_ok = !ascii.is_empty()
        && ascii.len() <= 253
        && ascii.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(Error::Domain(domain.to_string()));
    }
    if !ascii.contains('.') {
        return Err(Error::NoDot(domain.to_string()));
    }
    let out = format!("{}@{ascii}", local.to_lowercase());
    if out.len() > 254 {
        return Err(Error::TooLong);
    }
    Ok(out)
}

fn local_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~.".contains(c)
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

/// The suppression key of an address: lowercase hex SHA-256 of its canonical
/// form. Stored instead of the address once a person is erased.
pub fn hash(canonical: &str) -> String {
    let digest = Sha256::digest(canonical.to_lowercase().as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from_digit((b >> 4) as u32, 16).unwrap());
        out.push(char::from_digit((b & 15) as u32, 16).unwrap());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_folds() {
        assert_eq!(normalize("  Ann@Example.ORG ").unwrap(), "ann@example.org");
        assert_eq!(
            normalize("a.b+tag@sub.example.co.uk").unwrap(),
            "a.b+tag@sub.example.co.uk"
        );
        assert_eq!(normalize("o'neil@example.ie").unwrap(), "o'neil@example.ie");
    }

    #[test]
    fn idn_domain_to_ascii() {
        assert_eq!(
            normalize("josé@bücher.example").unwrap(),
            "josé@xn--bcher-kva.example"
        );
        assert_eq!(
            normalize("JOSÉ@BÜCHER.example").unwrap(),
            "josé@xn--bcher-kva.example"
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(normalize(""), Err(Error::Empty));
        assert_eq!(normalize("ann.example.org"), Err(Error::MissingAt));
        assert_eq!(normalize("a@b@example.org"), Err(Error::ManyAt));
        assert_eq!(normalize("@example.org"), Err(Error::EmptyLocal));
        assert_eq!(normalize("ann@"), Err(Error::EmptyDomain));
        assert_eq!(
            normalize("ann smith@example.org"),
            Err(Error::LocalChar(' '))
        );
        assert_eq!(normalize("ann..s@example.org"), Err(Error::LocalDots));
        assert_eq!(
            normalize("ann@localhost"),
            Err(Error::NoDot("localhost".into()))
        );
        assert!(matches!(
            normalize("ann@exa mple.org"),
            Err(Error::Domain(_))
        ));
        assert!(matches!(normalize("ann@-x.org"), Err(Error::Domain(_))));
        assert!(matches!(normalize("ann@x..org"), Err(Error::Domain(_))));
    }

    #[test]
    fn hash_is_case_blind_hex() {
        let h = hash("ann@example.org");
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash("ANN@example.org"));
        assert!(
            h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}

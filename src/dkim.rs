//! DKIM signing (RFC 6376; ed25519-sha256 from RFC 8463) of the exact bytes
//! that go on the wire, and the DNS TXT record that publishes the key. The
//! only module that signs messages. No IO: the caller reads the key file and
//! passes its text in.
//!
//! Signing works on the final, formatted message (mail-auth's signer on raw
//! bytes), never on a structure that is formatted again later: the headers
//! and body a verifier hashes are the ones we hashed. lettre's own `dkim`
//! module named `Content-Type` in `h=` without hashing it on multipart
//! messages, so every signature failed.
//!
//! The one clock read here is mail-auth's, for the signature's `t=` tag.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, Done};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

/// The headers every signature covers (`h=`), when the message has them.
pub const SIGNED_HEADERS: [&str; 10] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
];

/// A key that cannot be used, or a message that cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("algorithm {0:?}: use \"rsa\" or \"ed25519\"")]
    Algorithm(String),
    #[error(
        "not an RSA private key ({0}); expected a PEM \"RSA PRIVATE KEY\" (PKCS#1) or \"PRIVATE KEY\" (PKCS#8)"
    )]
    Rsa(String),
    #[error("not an ed25519 key ({0}); expected the base64 of the 32-byte seed, or a PKCS#8 PEM")]
    Ed25519(String),
    #[error("domain {0:?} is not a valid domain name")]
    Domain(String),
    #[error("selector {0:?}: use letters, digits, '-' and '.'")]
    Selector(String),
    #[error("cannot sign the message: {0}")]
    Sign(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

enum Key {
    Rsa(mail_auth::dkim::DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(mail_auth::dkim::DkimSigner<Ed25519Key, Done>),
}

/// A loaded key with its selector and domain.
pub struct DkimSigner {
    key: Key,
    selector: String,
    domain: String,
    /// `k=` and `p=` of the DNS record.
    key_type: &'static str,
    public_key: String,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    /// `algorithm` is `rsa` (PKCS#1 or PKCS#8 PEM) or `ed25519` (base64
    /// 32-byte seed, or PKCS#8 PEM); `key_text` is the key file's content.
    pub fn new(selector: &str, domain: &str, algorithm: &str, key_text: &str) -> Result<Self> {
        let domain = idna::domain_to_ascii(domain.trim().trim_end_matches('.'))
            .ok()
            .filter(|d| d.contains('.'))
            .ok_or_else(|| Error::Domain(domain.to_string()))?;
        let selector = selector.trim();
        if selector.is_empty()
            || !selector
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(Error::Selector(selector.to_string()));
        }
        let key_text = key_text.trim();
        let (key, key_type, public_key) = match algorithm {
            "rsa" => {
                let (key, public) = rsa_key(key_text)?;
                let signer = mail_auth::dkim::DkimSigner::from_key(key)
                    .domain(domain.clone())
                    .selector(selector)
                    .headers(SIGNED_HEADERS)
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Relaxed);
                (Key::Rsa(signer), "rsa", public)
            }
            "ed25519" => {
                let (key, public) = ed25519_key(key_text)?;
                let signer = mail_auth::dkim::DkimSigner::from_key(key)
                    .domain(domain.clone())
                    .selector(selector)
                    .headers(SIGNED_HEADERS)
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Relaxed);
                (Key::Ed25519(signer), "ed25519", public)
            }
            other => return Err(Error::Algorithm(other.to_string())),
        };
        Ok(DkimSigner {
            key,
            selector: selector.to_string(),
            domain,
            key_type,
            public_key,
        })
    }

    /// The message with a `DKIM-Signature` header in front of it.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let signature = match &self.key {
            Key::Rsa(s) => s.sign(message),
            Key::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| Error::Sign(e.to_string()))?;
        let header = signature.to_header();
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }

    /// Where the record goes: `SELECTOR._domainkey.DOMAIN`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record's value: `v=DKIM1; k=rsa; p=...`.
    pub fn dns_record(&self) -> String {
        format!("v=DKIM1; k={}; p={}", self.key_type, self.public_key)
    }

    /// The line to give whoever runs the DNS: `NAME TXT "VALUE"`.
    pub fn dns_line(&self) -> String {
        format!("{} TXT \"{}\"", self.dns_name(), self.dns_record())
    }
}

/// An RSA key from PKCS#1 or PKCS#8 PEM, and its public key (base64 of the
/// SubjectPublicKeyInfo DER, what `openssl rsa -pubout` prints).
fn rsa_key(pem: &str) -> Result<(RsaKey<Sha256>, String)> {
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(pem))
        .map_err(|e| Error::Rsa(e.to_string()))?;
    let public = rsa::RsaPublicKey::from(&key)
        .to_public_key_der()
        .map_err(|e| Error::Rsa(e.to_string()))?;
    let der = key.to_pkcs1_der().map_err(|e| Error::Rsa(e.to_string()))?;
    let signing = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(
        der.as_bytes().to_vec(),
    )))
    .map_err(|e| Error::Rsa(e.to_string()))?;
    Ok((signing, BASE64.encode(public.as_bytes())))
}

/// An ed25519 key from the base64 seed (lettre's format) or PKCS#8 PEM, and
/// its public key (base64 of the 32 raw bytes, RFC 8463).
fn ed25519_key(text: &str) -> Result<(Ed25519Key, String)> {
    let key = if text.starts_with("-----BEGIN") {
        ed25519_dalek::pkcs8::DecodePrivateKey::from_pkcs8_pem(text)
            .map_err(|e: ed25519_dalek::pkcs8::Error| Error::Ed25519(e.to_string()))?
    } else {
        let seed = BASE64
            .decode(text)
            .map_err(|e| Error::Ed25519(e.to_string()))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|s: Vec<u8>| Error::Ed25519(format!("{} bytes, not 32", s.len())))?;
        ed25519_dalek::SigningKey::from_bytes(&seed)
    };
    let public = key.verifying_key().to_bytes();
    let signing = Ed25519Key::from_seed_and_public_key(&key.to_bytes(), &public)
        .map_err(|e| Error::Ed25519(e.to_string()))?;
    Ok((signing, BASE64.encode(public)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = include_str!("../tests/data/dkim/rsa.pem");
    const RSA_PKCS8: &str = include_str!("../tests/data/dkim/rsa-pkcs8.pem");
    const RSA_PUB: &str = include_str!("../tests/data/dkim/rsa.pub");
    const ED_SEED: &str = include_str!("../tests/data/dkim/ed25519.seed");
    const ED_PUB: &str = include_str!("../tests/data/dkim/ed25519.pub");

    #[test]
    fn records_match_the_public_keys_openssl_derived() {
        let s = DkimSigner::new("s1", "Example.ORG", "rsa", RSA).unwrap();
        assert_eq!(s.dns_name(), "s1._domainkey.example.org");
        assert_eq!(
            s.dns_record(),
            format!("v=DKIM1; k=rsa; p={}", RSA_PUB.trim())
        );
        let s8 = DkimSigner::new("s1", "example.org", "rsa", RSA_PKCS8).unwrap();
        assert_eq!(s8.dns_record(), s.dns_record());
        let e = DkimSigner::new("e1", "bücher.example", "ed25519", ED_SEED).unwrap();
        assert_eq!(
            e.dns_line(),
            format!(
                "e1._domainkey.xn--bcher-kva.example TXT \"v=DKIM1; k=ed25519; p={}\"",
                ED_PUB.trim()
            )
        );
    }

    #[test]
    fn bad_keys_say_what_was_expected() {
        let e = DkimSigner::new("s", "example.org", "rsa", "nonsense").unwrap_err();
        assert!(e.to_string().contains("PKCS#1"), "{e}");
        let e = DkimSigner::new("s", "example.org", "ed25519", "AAAA").unwrap_err();
        assert!(e.to_string().contains("3 bytes, not 32"), "{e}");
        let e = DkimSigner::new("s", "example.org", "dsa", RSA).unwrap_err();
        assert!(e.to_string().contains("\"dsa\""), "{e}");
        let e = DkimSigner::new("a b", "example.org", "rsa", RSA).unwrap_err();
        assert!(e.to_string().contains("selector"), "{e}");
    }

    #[test]
    fn signature_names_the_headers_and_goes_in_front() {
        let s = DkimSigner::new("s1", "example.org", "ed25519", ED_SEED).unwrap();
        let msg = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: x\r\nContent-Type: text/plain\r\n\r\nbody\r\n";
        let signed = String::from_utf8(s.sign(msg).unwrap()).unwrap();
        assert!(
            signed.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
            "{signed}"
        );
        assert!(signed.ends_with(std::str::from_utf8(msg).unwrap()));
        let h = signed
            .split("h=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        let h: String = h.split_whitespace().collect();
        // Every listed header is named, present or not: one added later by
        // someone else breaks the signature.
        let mut named: Vec<String> = h.split(':').map(str::to_ascii_lowercase).collect();
        let mut expected: Vec<String> = SIGNED_HEADERS
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        named.sort();
        expected.sort();
        assert_eq!(named, expected);
    }
}

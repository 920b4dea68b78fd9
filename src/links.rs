//! Signed tokens for every link and return address that names a person:
//! unsubscribe, preferences, confirm (subscriber, list) and the VERP bounce
//! address (delivery). No IO.
//!
//! The addresses that carry a token are formatted and parsed here, side by
//! side, so the dispatcher that writes them and `bounce` that reads them
//! cannot drift apart: `verp_address`/`parse_verp` (the envelope sender
//! `bounces+TOKEN@domain`), `unsubscribe_address`/`parse_unsubscribe` (the
//! List-Unsubscribe mailto `unsubscribe+TOKEN@domain`) and
//! `message_id`/`parse_message_id` (`TOKEN@domain`, the same delivery token).
//!
//! A token is `version, purpose, a, b` (ids as LEB128 varints) followed by the
//! first 12 bytes of HMAC-SHA256 over those bytes, written in lowercase
//! base32 so it survives mail servers that fold the case of local parts.
//! Tokens never expire, so an old bulletin still unsubscribes; verification
//! tries the current secret and then each previous one, so links keep working
//! after a rotation. The MAC is compared in constant time (`verify_truncated_left`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const MAC_LEN: usize = 12;

/// What a token allows. The purpose is signed, so an unsubscribe token cannot
/// be replayed as a preferences token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// (subscriber, list): one-click unsubscribe from one list.
    Unsubscribe = 1,
    /// (subscriber, 0): the preference center.
    Preferences = 2,
    /// (subscriber, list): double opt-in confirmation.
    Confirm = 3,
    /// (delivery, 0): VERP return path.
    Bounce = 4,
    /// (subscriber, 0): the hidden field of the preference forms.
    Csrf = 5,
}

impl Purpose {
    fn from_u8(b: u8) -> Option<Purpose> {
        Some(match b {
            1 => Purpose::Unsubscribe,
            2 => Purpose::Preferences,
            3 => Purpose::Confirm,
            4 => Purpose::Bounce,
            5 => Purpose::Csrf,
            _ => return None,
        })
    }
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub purpose: Purpose,
    pub a: i64,
    pub b: i64,
}

/// Signs and verifies tokens.
#[derive(Clone)]
pub struct Signer {
    current: HmacSha256,
    previous: Vec<HmacSha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

fn key(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length")
}

impl Signer {
    pub fn new(current: &[u8], previous: &[&[u8]]) -> Signer {
        Signer {
            current: key(current),
            previous: previous.iter().map(|s| key(s)).collect(),
        }
    }

    /// Signs `(purpose, a, b)`.
    pub fn sign(&self, purpose: Purpose, a: i64, b: i64) -> String {
        let mut bytes = Vec::with_capacity(24);
        bytes.push(VERSION);
        bytes.push(purpose as u8);
        put_varint(&mut bytes, a as u64);
        put_varint(&mut bytes, b as u64);
        let mut mac = self.current.clone();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        base32_encode(&bytes)
    }

    /// Checks a token and returns its claims; `None` for anything tampered,
    /// truncated or signed with an unknown secret. Callers must not say which.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let bytes = base32_decode(token)?;
        if bytes.len() < 2 + 2 + MAC_LEN || bytes[0] != VERSION {
            return None;
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let ok = std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|k| {
                let mut mac = k.clone();
                mac.update(body);
                mac.verify_truncated_left(tag).is_ok()
            });
        if !ok {
            return None;
        }
        let purpose = Purpose::from_u8(body[1])?;
        let mut rest = &body[2..];
        let a = get_varint(&mut rest)?;
        let b = get_varint(&mut rest)?;
        if !rest.is_empty() {
            return None;
        }
        Some(Claims {
            purpose,
            a: a as i64,
            b: b as i64,
        })
    }

    /// Verifies and also checks the purpose.
    pub fn verify_for(&self, token: &str, purpose: Purpose) -> Option<Claims> {
        self.verify(token).filter(|c| c.purpose == purpose)
    }
}

/// The public URLs of `bulletin serve`, built the same way by the
/// dispatcher (in every message) and the web pages.
#[derive(Debug, Clone)]
pub struct Urls {
    base: String,
}

impl Urls {
    /// `base` is the public base URL, e.g. `https://news.example.org`.
    pub fn new(base: &str) -> Urls {
        Urls {
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn unsubscribe(&self, signer: &Signer, subscriber: i64, list: i64) -> String {
        format!(
            "{}/unsubscribe/{}",
            self.base,
            signer.sign(Purpose::Unsubscribe, subscriber, list)
        )
    }

    pub fn preferences(&self, signer: &Signer, subscriber: i64) -> String {
        self.preferences_via(signer, subscriber, 0)
    }

    /// The preference center from an email received through `list` (the
    /// page marks that list; 0 names none).
    pub fn preferences_via(&self, signer: &Signer, subscriber: i64, list: i64) -> String {
        format!(
            "{}/preferences/{}",
            self.base,
            signer.sign(Purpose::Preferences, subscriber, list)
        )
    }

    pub fn confirm(&self, signer: &Signer, subscriber: i64, list: i64) -> String {
        format!(
            "{}/confirm/{}",
            self.base,
            signer.sign(Purpose::Confirm, subscriber, list)
        )
    }

    /// The "view in browser" page of a campaign.
    pub fn archive(&self, campaign_slug: &str) -> String {
        format!("{}/archive/{}", self.base, campaign_slug)
    }
}

/// Local-part prefix of the VERP return path.
const VERP_PREFIX: &str = "bounces+";
/// Local-part prefix of the List-Unsubscribe mailto address.
const UNSUBSCRIBE_PREFIX: &str = "unsubscribe+";

/// The VERP envelope sender of one delivery: `bounces+TOKEN@domain`, where
/// TOKEN is `sign(Purpose::Bounce, delivery, 0)`.
pub fn verp_address(token: &str, domain: &str) -> String {
    format!("{VERP_PREFIX}{token}@{domain}")
}

/// The token of a VERP local part (`bounces+TOKEN`, any case); `None` for
/// any other local part. The token still has to be verified.
pub fn parse_verp(local: &str) -> Option<&str> {
    tagged_token(local, VERP_PREFIX)
}

/// The List-Unsubscribe mailto address: `unsubscribe+TOKEN@domain`, where
/// TOKEN is `sign(Purpose::Unsubscribe, subscriber, list)`.
pub fn unsubscribe_address(token: &str, domain: &str) -> String {
    format!("{UNSUBSCRIBE_PREFIX}{token}@{domain}")
}

/// The token of an unsubscribe local part (`unsubscribe+TOKEN`, any case).
pub fn parse_unsubscribe(local: &str) -> Option<&str> {
    tagged_token(local, UNSUBSCRIBE_PREFIX)
}

/// The Message-ID (without angle brackets) of one delivery: `TOKEN@domain`
/// with the same token as its VERP address, so a report that quotes only
/// the original's Message-ID still names the delivery.
pub fn message_id(token: &str, domain: &str) -> String {
    format!("{token}@{domain}")
}

/// The token of a Message-ID written by [`message_id`] (angle brackets
/// allowed); `None` when the left part cannot be a token.
pub fn parse_message_id(id: &str) -> Option<&str> {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, _domain) = id.rsplit_once('@')?;
    is_token_text(local).then_some(local)
}

fn tagged_token<'a>(local: &'a str, prefix: &str) -> Option<&'a str> {
    let head = local.get(..prefix.len())?;
    let token = &local[prefix.len()..];
    (head.eq_ignore_ascii_case(prefix) && is_token_text(token)).then_some(token)
}

/// Base32 in either case, as mail servers may fold it.
fn is_token_text(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buf, mut bits) = (0u32, 0);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() > 64 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buf, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = match c.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    // Canonical form only: fewer than 5 bits left over, all of them zero, so
    // each token has exactly one spelling (but for case).
    (bits < 5 && buf & ((1 << bits) - 1) == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = Signer::new(b"secret", &[]);
        for (a, b) in [(1, 2), (0, 0), (123_456_789, 42), (i64::MAX, 7)] {
            let t = s.sign(Purpose::Unsubscribe, a, b);
            assert_eq!(
                s.verify(&t),
                Some(Claims {
                    purpose: Purpose::Unsubscribe,
                    a,
                    b
                })
            );
            assert!(t.bytes().all(|c| ALPHABET.contains(&c)));
        }
    }

    #[test]
    fn case_folded_token_still_verifies() {
        let s = Signer::new(b"k", &[]);
        let t = s.sign(Purpose::Bounce, 99, 0);
        assert!(s.verify(&t.to_ascii_uppercase()).is_some());
    }

    #[test]
    fn tampered_truncated_and_foreign_tokens_fail() {
        let s = Signer::new(b"secret", &[]);
        let t = s.sign(Purpose::Preferences, 5, 0);
        let mut chars: Vec<char> = t.chars().collect();
        chars[4] = if chars[4] == 'a' { 'b' } else { 'a' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(s.verify(&tampered), None);
        assert_eq!(s.verify(&t[..t.len() - 1]), None);
        assert_eq!(s.verify(""), None);
        assert_eq!(s.verify("not a token!"), None);
        assert_eq!(Signer::new(b"other", &[]).verify(&t), None);
        assert_eq!(s.verify_for(&t, Purpose::Unsubscribe), None);
        assert!(s.verify_for(&t, Purpose::Preferences).is_some());
    }

    #[test]
    fn only_the_canonical_spelling_decodes() {
        for len in 1..20 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base32_encode(&bytes);
            assert_eq!(base32_decode(&text).as_deref(), Some(&bytes[..]));
            // One character more, or a spare bit set, never spells the same
            // bytes.
            let longer = base32_decode(&format!("{text}a"));
            assert_ne!(longer.as_deref(), Some(&bytes[..]), "{len}");
            let spare = (8 * len) % 5;
            if spare != 0 {
                let mut chars = text.into_bytes();
                let last = chars.len() - 1;
                let v = ALPHABET.iter().position(|&c| c == chars[last]).unwrap() ^ 1;
                chars[last] = ALPHABET[v];
                let odd = String::from_utf8(chars).unwrap();
                assert_eq!(base32_decode(&odd), None, "{len}");
            }
        }
    }

    #[test]
    fn previous_secrets_keep_old_links_working() {
        let old = Signer::new(b"old", &[]);
        let t = old.sign(Purpose::Unsubscribe, 1, 1);
        let rotated = Signer::new(b"new", &[b"old"]);
        assert!(rotated.verify(&t).is_some());
        assert!(Signer::new(b"new", &[]).verify(&t).is_none());
    }

    #[test]
    fn tokens_are_short_enough_for_a_local_part() {
        let s = Signer::new(b"k", &[]);
        let t = s.sign(Purpose::Bounce, i64::MAX, 0);
        assert!(VERP_PREFIX.len() + t.len() <= 64, "{}", t.len());
        let t = s.sign(Purpose::Unsubscribe, i64::MAX, i64::MAX);
        assert!(UNSUBSCRIBE_PREFIX.len() + t.len() <= 64, "{}", t.len());
    }

    fn local(address: &str) -> &str {
        address.split('@').next().unwrap()
    }

    #[test]
    fn verp_address_round_trips() {
        let s = Signer::new(b"k", &[]);
        let token = s.sign(Purpose::Bounce, 42, 0);
        let address = verp_address(&token, "news.example.org");
        assert_eq!(address, format!("bounces+{token}@news.example.org"));
        assert_eq!(parse_verp(local(&address)), Some(token.as_str()));
        let folded = address.to_ascii_uppercase();
        let parsed = parse_verp(local(&folded)).unwrap();
        assert_eq!(s.verify_for(parsed, Purpose::Bounce).unwrap().a, 42);
        // Neither recipe reads the other's address.
        assert_eq!(parse_unsubscribe(local(&address)), None);
    }

    #[test]
    fn unsubscribe_address_round_trips() {
        let s = Signer::new(b"k", &[]);
        let token = s.sign(Purpose::Unsubscribe, 7, 3);
        let address = unsubscribe_address(&token, "news.example.org");
        assert_eq!(address, format!("unsubscribe+{token}@news.example.org"));
        let parsed = parse_unsubscribe(local(&address)).unwrap();
        assert_eq!(parsed, token);
        let claims = s.verify_for(parsed, Purpose::Unsubscribe).unwrap();
        assert_eq!((claims.a, claims.b), (7, 3));
        assert_eq!(parse_verp(local(&address)), None);
    }

    #[test]
    fn message_id_round_trips() {
        let s = Signer::new(b"k", &[]);
        let token = s.sign(Purpose::Bounce, 9, 0);
        let id = message_id(&token, "news.example.org");
        assert_eq!(parse_message_id(&id), Some(token.as_str()));
        assert_eq!(parse_message_id(&format!("<{id}>")), Some(token.as_str()));
        assert_eq!(s.verify_for(&token, Purpose::Bounce).unwrap().a, 9);
    }

    #[test]
    fn other_local_parts_are_not_tokens() {
        for local in [
            "bounces+",
            "bounces",
            "xbounces+abc",
            "bounces+ab-c",
            "bounces+ab.c",
            "news",
            "",
            "bounces+abc19",
        ] {
            assert_eq!(parse_verp(local), None, "{local}");
        }
        assert_eq!(parse_unsubscribe("unsubscribe+"), None);
        assert_eq!(parse_unsubscribe("Unsubscribe+ZZ7"), Some("ZZ7"));
        for id in ["c7.s42@example.org", "no-at-sign", "@example.org", "<>"] {
            assert_eq!(parse_message_id(id), None, "{id}");
        }
    }
}

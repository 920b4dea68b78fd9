//! Signed tokens for every link and return address that names a person:
//! unsubscribe (subscriber, list, campaign), preferences, confirm and the
//! VERP bounce address (delivery). No IO.
//!
//! The addresses that carry a token are formatted and parsed here, side by
//! side, so the dispatcher that writes them and `bounce` that reads them
//! cannot drift apart: `verp_address`/`parse_verp` (the envelope sender
//! `bounces+TOKEN@domain`), `unsubscribe_address`/`parse_unsubscribe` (the
//! List-Unsubscribe mailto `unsubscribe+TOKEN@domain`) and
//! `message_id`/`parse_message_id` (`TOKEN@domain`, the same delivery token).
//!
//! Each purpose has its claims type with named fields (`Unsubscribe`,
//! `Preferences`, `Confirm`, `Bounce`, `Csrf`; the `Token` trait). A token
//! is `version, purpose` and the claims' ids (two, or three for an
//! unsubscribe that names its campaign; LEB128 varints) followed by the
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

/// One kind of token: the purpose it is signed for and the ids it names,
/// each under its own name. [`Signer::sign`] writes one,
/// [`Signer::verify`] reads one back for exactly that purpose.
pub trait Token: Sized {
    const PURPOSE: Purpose;
    /// The ids, in the order they are signed (two, or three).
    fn ids(&self) -> Vec<i64>;
    /// The claims of a verified token; `None` for ids this purpose never
    /// signs (a number of them it does not take).
    fn from_ids(ids: &[i64]) -> Option<Self>;
}

/// One-click unsubscribe from one list (the List-Unsubscribe URL and
/// mailto address), and the campaign whose email carried it. Tokens signed
/// before the campaign was added name none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe {
    pub subscriber: i64,
    pub list: i64,
    pub campaign: Option<i64>,
}

/// The preference center, from an email sent through `via_list` (the page
/// marks it), if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preferences {
    pub subscriber: i64,
    pub via_list: Option<i64>,
}

/// Double opt-in confirmation of one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirm {
    pub subscriber: i64,
    pub list: i64,
}

/// One delivery: the VERP return path and the Message-ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounce {
    pub delivery: i64,
}

/// The hidden field of one person's preference forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Csrf {
    pub subscriber: i64,
}

impl Token for Unsubscribe {
    const PURPOSE: Purpose = Purpose::Unsubscribe;
    fn ids(&self) -> Vec<i64> {
        let mut ids = vec![self.subscriber, self.list];
        ids.extend(self.campaign);
        ids
    }
    fn from_ids(ids: &[i64]) -> Option<Self> {
        match *ids {
            [subscriber, list] => Some(Unsubscribe {
                subscriber,
                list,
                campaign: None,
            }),
            [subscriber, list, campaign] => Some(Unsubscribe {
                subscriber,
                list,
                campaign: Some(campaign),
            }),
            _ => None,
        }
    }
}

impl Token for Preferences {
    const PURPOSE: Purpose = Purpose::Preferences;
    fn ids(&self) -> Vec<i64> {
        vec![self.subscriber, self.via_list.unwrap_or(0)]
    }
    fn from_ids(ids: &[i64]) -> Option<Self> {
        match *ids {
            [subscriber, via] => Some(Preferences {
                subscriber,
                via_list: (via != 0).then_some(via),
            }),
            _ => None,
        }
    }
}

impl Token for Confirm {
    const PURPOSE: Purpose = Purpose::Confirm;
    fn ids(&self) -> Vec<i64> {
        vec![self.subscriber, self.list]
    }
    fn from_ids(ids: &[i64]) -> Option<Self> {
        match *ids {
            [subscriber, list] => Some(Confirm { subscriber, list }),
            _ => None,
        }
    }
}

impl Token for Bounce {
    const PURPOSE: Purpose = Purpose::Bounce;
    fn ids(&self) -> Vec<i64> {
        vec![self.delivery, 0]
    }
    fn from_ids(ids: &[i64]) -> Option<Self> {
        match *ids {
            [delivery, 0] => Some(Bounce { delivery }),
            _ => None,
        }
    }
}

impl Token for Csrf {
    const PURPOSE: Purpose = Purpose::Csrf;
    fn ids(&self) -> Vec<i64> {
        vec![self.subscriber, 0]
    }
    fn from_ids(ids: &[i64]) -> Option<Self> {
        match *ids {
            [subscriber, 0] => Some(Csrf { subscriber }),
            _ => None,
        }
    }
}

/// Most ids a token carries.
const MAX_IDS: usize = 3;

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

    /// Signs `claims` for their purpose.
    pub fn sign<T: Token>(&self, claims: &T) -> String {
        let mut bytes = Vec::with_capacity(32);
        bytes.push(VERSION);
        bytes.push(T::PURPOSE as u8);
        for id in claims.ids() {
            put_varint(&mut bytes, id as u64);
        }
        let mut mac = self.current.clone();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        base32_encode(&bytes)
    }

    /// The claims of a token signed for `T`'s purpose; `None` for anything
    /// tampered, truncated, signed with an unknown secret or for another
    /// purpose. Callers must not say which.
    pub fn verify<T: Token>(&self, token: &str) -> Option<T> {
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
        if !ok || Purpose::from_u8(body[1])? != T::PURPOSE {
            return None;
        }
        let mut rest = &body[2..];
        let mut ids = Vec::with_capacity(MAX_IDS);
        while !rest.is_empty() && ids.len() < MAX_IDS {
            ids.push(get_varint(&mut rest)? as i64);
        }
        if !rest.is_empty() {
            return None;
        }
        T::from_ids(&ids)
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

    pub fn unsubscribe(&self, signer: &Signer, claims: &Unsubscribe) -> String {
        format!("{}/unsubscribe/{}", self.base, signer.sign(claims))
    }

    /// The preference center (from an email received through
    /// `claims.via_list`, which the page marks).
    pub fn preferences(&self, signer: &Signer, claims: &Preferences) -> String {
        format!("{}/preferences/{}", self.base, signer.sign(claims))
    }

    pub fn confirm(&self, signer: &Signer, claims: &Confirm) -> String {
        format!("{}/confirm/{}", self.base, signer.sign(claims))
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
/// TOKEN is `sign(&Bounce { delivery })`.
pub fn verp_address(token: &str, domain: &str) -> String {
    format!("{VERP_PREFIX}{token}@{domain}")
}

/// The token of a VERP local part (`bounces+TOKEN`, any case); `None` for
/// any other local part. The token still has to be verified.
pub fn parse_verp(local: &str) -> Option<&str> {
    tagged_token(local, VERP_PREFIX)
}

/// The List-Unsubscribe mailto address: `unsubscribe+TOKEN@domain`, where
/// TOKEN is `sign(&Unsubscribe { .. })`.
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
        for (subscriber, list) in [(1, 2), (0, 0), (123_456_789, 42), (i64::MAX, 7)] {
            for campaign in [None, Some(0), Some(5), Some(1 << 30)] {
                let claims = Unsubscribe {
                    subscriber,
                    list,
                    campaign,
                };
                let t = s.sign(&claims);
                assert_eq!(s.verify(&t), Some(claims));
                assert!(t.bytes().all(|c| ALPHABET.contains(&c)));
            }
        }
        let prefs = |via_list| Preferences {
            subscriber: 3,
            via_list,
        };
        for claims in [prefs(None), prefs(Some(4))] {
            assert_eq!(s.verify(&s.sign(&claims)), Some(claims));
        }
        let confirm = Confirm {
            subscriber: 3,
            list: 4,
        };
        assert_eq!(s.verify(&s.sign(&confirm)), Some(confirm));
        assert_eq!(
            s.verify(&s.sign(&Csrf { subscriber: 3 })),
            Some(Csrf { subscriber: 3 })
        );
    }

    /// The bytes the first version signed for every purpose: `version,
    /// purpose, a, b`.
    fn first_version_token(s: &Signer, purpose: Purpose, a: i64, b: i64) -> String {
        let mut bytes = vec![VERSION, purpose as u8];
        put_varint(&mut bytes, a as u64);
        put_varint(&mut bytes, b as u64);
        let mut mac = s.current.clone();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        base32_encode(&bytes)
    }

    #[test]
    fn tokens_signed_before_the_campaign_was_added_keep_working() {
        let s = Signer::new(b"secret", &[]);
        let old = first_version_token(&s, Purpose::Unsubscribe, 7, 3);
        let claims = Unsubscribe {
            subscriber: 7,
            list: 3,
            campaign: None,
        };
        assert_eq!(s.verify(&old), Some(claims));
        assert_eq!(s.sign(&claims), old, "without a campaign: the same token");
        let old = first_version_token(&s, Purpose::Preferences, 7, 0);
        assert_eq!(
            s.verify(&old),
            Some(Preferences {
                subscriber: 7,
                via_list: None
            })
        );
        let old = first_version_token(&s, Purpose::Bounce, 9, 0);
        assert_eq!(s.verify(&old), Some(Bounce { delivery: 9 }));
        // A third id only where a purpose signs one.
        let mut bytes = vec![VERSION, Purpose::Bounce as u8, 9, 0, 5];
        let mut mac = s.current.clone();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        assert_eq!(s.verify::<Bounce>(&base32_encode(&bytes)), None);
    }

    #[test]
    fn case_folded_token_still_verifies() {
        let s = Signer::new(b"k", &[]);
        let t = s.sign(&Bounce { delivery: 99 });
        assert!(s.verify::<Bounce>(&t.to_ascii_uppercase()).is_some());
    }

    #[test]
    fn tampered_truncated_and_foreign_tokens_fail() {
        let s = Signer::new(b"secret", &[]);
        let t = s.sign(&Preferences {
            subscriber: 5,
            via_list: None,
        });
        let mut chars: Vec<char> = t.chars().collect();
        chars[4] = if chars[4] == 'a' { 'b' } else { 'a' };
        let tampered: String = chars.into_iter().collect();
        type P = Preferences;
        assert_eq!(s.verify::<P>(&tampered), None);
        assert_eq!(s.verify::<P>(&t[..t.len() - 1]), None);
        assert_eq!(s.verify::<P>(""), None);
        assert_eq!(s.verify::<P>("not a token!"), None);
        assert_eq!(Signer::new(b"other", &[]).verify::<P>(&t), None);
        assert_eq!(s.verify::<Unsubscribe>(&t), None);
        assert_eq!(s.verify::<Csrf>(&t), None);
        assert!(s.verify::<P>(&t).is_some());
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
        let t = old.sign(&Confirm {
            subscriber: 1,
            list: 1,
        });
        let rotated = Signer::new(b"new", &[b"old"]);
        assert!(rotated.verify::<Confirm>(&t).is_some());
        assert!(Signer::new(b"new", &[]).verify::<Confirm>(&t).is_none());
    }

    #[test]
    fn tokens_are_short_enough_for_a_local_part() {
        let s = Signer::new(b"k", &[]);
        let t = s.sign(&Bounce { delivery: i64::MAX });
        assert!(VERP_PREFIX.len() + t.len() <= 64, "{}", t.len());
        let t = s.sign(&Unsubscribe {
            subscriber: i64::MAX,
            list: i64::MAX,
            campaign: None,
        });
        assert!(UNSUBSCRIBE_PREFIX.len() + t.len() <= 64, "{}", t.len());
        // With a campaign: 4 trillion people, 2 million lists and 268
        // million campaigns still fit.
        let t = s.sign(&Unsubscribe {
            subscriber: (1 << 42) - 1,
            list: (1 << 21) - 1,
            campaign: Some((1 << 28) - 1),
        });
        assert!(UNSUBSCRIBE_PREFIX.len() + t.len() <= 64, "{}", t.len());
    }

    fn local(address: &str) -> &str {
        address.split('@').next().unwrap()
    }

    #[test]
    fn verp_address_round_trips() {
        let s = Signer::new(b"k", &[]);
        let token = s.sign(&Bounce { delivery: 42 });
        let address = verp_address(&token, "news.example.org");
        assert_eq!(address, format!("bounces+{token}@news.example.org"));
        assert_eq!(parse_verp(local(&address)), Some(token.as_str()));
        let folded = address.to_ascii_uppercase();
        let parsed = parse_verp(local(&folded)).unwrap();
        assert_eq!(s.verify(parsed), Some(Bounce { delivery: 42 }));
        // Neither recipe reads the other's address.
        assert_eq!(parse_unsubscribe(local(&address)), None);
    }

    #[test]
    fn unsubscribe_address_round_trips() {
        let s = Signer::new(b"k", &[]);
        let claims = Unsubscribe {
            subscriber: 7,
            list: 3,
            campaign: Some(11),
        };
        let token = s.sign(&claims);
        let address = unsubscribe_address(&token, "news.example.org");
        assert_eq!(address, format!("unsubscribe+{token}@news.example.org"));
        let parsed = parse_unsubscribe(local(&address)).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(s.verify(parsed), Some(claims));
        assert_eq!(parse_verp(local(&address)), None);
    }

    #[test]
    fn message_id_round_trips() {
        let s = Signer::new(b"k", &[]);
        let token = s.sign(&Bounce { delivery: 9 });
        let id = message_id(&token, "news.example.org");
        assert_eq!(parse_message_id(&id), Some(token.as_str()));
        assert_eq!(parse_message_id(&format!("<{id}>")), Some(token.as_str()));
        assert_eq!(s.verify(&token), Some(Bounce { delivery: 9 }));
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

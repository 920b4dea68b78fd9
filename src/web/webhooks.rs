//! `POST /webhooks/{ses,postmark,mailgun,sendgrid}`: bounce and complaint
//! notifications from sending services. Each route answers 404 unless its
//! `[webhooks.*]` section is configured, authenticates the request the way
//! its service signs it (one file per service, the check beside the parser),
//! and turns the payload into [`Event`]s that [`apply`] maps to the same
//! rules as returned mail (hard: bounced, soft: counted, complaint:
//! unsubscribed from all lists), keyed on the service's own event id so a
//! replayed notification changes nothing.

mod mailgun;
mod postmark;
mod sendgrid;
mod ses;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use serde::Serialize;

use super::{AppState, Error};
use crate::links::Bounce;
use crate::store::{Action, SoftRule};

pub use ses::{CertificateCache, Ses};

/// Largest notification accepted (SendGrid posts batches).
const WEBHOOK_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The configured services; a missing one answers 404.
#[derive(Default)]
pub struct Settings {
    pub soft: Option<SoftRule>,
    pub ses: Option<Ses>,
    pub postmark: Option<postmark::Postmark>,
    pub mailgun: Option<mailgun::Mailgun>,
    pub sendgrid: Option<sendgrid::Sendgrid>,
}

impl Settings {
    pub fn new(soft: SoftRule) -> Settings {
        Settings {
            soft: Some(soft),
            ..Settings::default()
        }
    }

    /// Turns on `POST /webhooks/postmark` (basic auth `user`:`password`).
    pub fn postmark(mut self, user: &str, password: &str) -> Settings {
        self.postmark = Some(postmark::Postmark::new(user, password));
        self
    }

    /// Turns on `POST /webhooks/mailgun` (HMAC with `signing_key`).
    pub fn mailgun(mut self, signing_key: &str, max_age_secs: i64) -> Settings {
        self.mailgun = Some(mailgun::Mailgun::new(signing_key, max_age_secs));
        self
    }

    /// Turns on `POST /webhooks/sendgrid`; `public_key` is the base64 key
    /// SendGrid shows. A key that is not a P-256 public key is an error.
    pub fn sendgrid(mut self, public_key: &str, max_age_secs: i64) -> Result<Settings, String> {
        self.sendgrid = Some(sendgrid::Sendgrid::new(public_key, max_age_secs)?);
        Ok(self)
    }

    /// Turns on `POST /webhooks/ses`.
    pub fn ses(mut self, ses: Ses) -> Settings {
        self.ses = Some(ses);
        self
    }

    /// Which services are on, for the startup line.
    pub fn enabled(&self) -> Vec<&'static str> {
        [
            ("ses", self.ses.is_some()),
            ("postmark", self.postmark.is_some()),
            ("mailgun", self.mailgun.is_some()),
            ("sendgrid", self.sendgrid.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
    }
}

/// What a notification says about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The service's id for this event: the replay key.
    pub id: String,
    pub kind: EventKind,
    /// The recipient address the service reports.
    pub address: String,
    /// Our Message-ID of the original, when the service passes it through.
    pub message_id: Option<String>,
    /// The VERP token of our return path, when the service passes it through.
    pub verp: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Hard,
    Soft,
    Complaint,
    /// Something the service reports that changes nobody (a delay, an
    /// open, an auto-reply): recorded so a replay is known.
    Other,
}

/// The answer to a notification.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// Events that changed or counted against someone.
    pub applied: usize,
    /// Events seen before (a replayed notification).
    pub replayed: usize,
    /// Events about nobody stored here, or that change nothing.
    pub ignored: usize,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/ses", post(ses::receive))
        .route("/webhooks/postmark", post(postmark::receive))
        .route("/webhooks/mailgun", post(mailgun::receive))
        .route("/webhooks/sendgrid", post(sendgrid::receive))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
}

/// Applies each event once under `service:id`: matched by the VERP token,
/// then our Message-ID, then the address.
pub(super) async fn apply(
    state: &AppState,
    service: &str,
    events: Vec<Event>,
) -> Result<Outcome, Error> {
    let store = &state.inner.store;
    let soft = state
        .inner
        .webhooks
        .as_ref()
        .and_then(|w| w.soft)
        .ok_or(Error::NotFound)?;
    let now = crate::store::now();
    let mut outcome = Outcome::default();
    for event in events {
        let key = format!("{service}:{}", event.id);
        if store.inbound_seen(&key).await? {
            outcome.replayed += 1;
            continue;
        }
        let action = match event.kind {
            EventKind::Hard => Some(Action::Hard {
                reason: format!("{service}: {}", event.reason),
            }),
            EventKind::Soft => Some(Action::Soft {
                reason: format!("{service}: {}", event.reason),
            }),
            EventKind::Complaint => Some(Action::Complaint {
                reason: format!("complaint via {service}"),
            }),
            EventKind::Other => None,
        };
        let target = match action {
            Some(_) => find(state, &event).await?,
            None => None,
        };
        match (action, target) {
            (Some(action), Some((subscriber, campaign))) => {
                match store
                    .apply_inbound(
                        &key,
                        subscriber,
                        campaign,
                        &action,
                        soft,
                        &format!("webhook:{service}"),
                        now,
                    )
                    .await?
                {
                    Some(_) => outcome.applied += 1,
                    None => outcome.replayed += 1,
                }
            }
            _ => {
                let kind = match event.kind {
                    EventKind::Hard | EventKind::Soft => "bounce",
                    EventKind::Complaint => "complaint",
                    EventKind::Other => "none",
                };
                if store.inbound_record(&key, kind, now).await? {
                    outcome.ignored += 1;
                } else {
                    outcome.replayed += 1;
                }
            }
        }
    }
    Ok(outcome)
}

/// The subscriber (and campaign, when known) an event is about.
async fn find(state: &AppState, event: &Event) -> Result<Option<(i64, Option<i64>)>, Error> {
    let store = &state.inner.store;
    let message_token = event
        .message_id
        .as_deref()
        .and_then(crate::links::parse_message_id);
    for token in [event.verp.as_deref(), message_token].into_iter().flatten() {
        if let Some(claims) = state.inner.signer.verify::<Bounce>(token)
            && let Some(owner) = store.delivery_owner(claims.delivery).await?
        {
            return Ok(Some((owner.subscriber, Some(owner.campaign))));
        }
    }
    if crate::address::normalize(&event.address).is_err() {
        return Ok(None);
    }
    Ok(store
        .subscriber(&event.address)
        .await?
        .map(|subscriber| (subscriber.id, None)))
}

/// The VERP token in a return path `bounces+TOKEN@domain` (parsed by
/// `links`, the one place that knows the format).
fn verp_token(return_path: &str) -> Option<String> {
    let address = return_path.trim().trim_matches(|c| c == '<' || c == '>');
    let (local, _domain) = address.rsplit_once('@')?;
    crate::links::parse_verp(local).map(String::from)
}

/// Compares secrets without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key bits of a DER SubjectPublicKeyInfo (the BIT STRING's content
/// after its unused-bits byte): an EC point, or an RSAPublicKey.
fn spki_key(spki: &[u8]) -> Option<&[u8]> {
    let (tag, outer, _) = der_item(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = der_item(outer)?; // AlgorithmIdentifier
    let (tag, bits, _) = der_item(rest)?;
    match (tag, bits.split_first()) {
        (0x03, Some((0, key))) => Some(key),
        _ => None,
    }
}

/// One DER item: (tag, content, what follows).
fn der_item(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verp_tokens() {
        let signer = crate::links::Signer::new(b"a test secret of at least 32 bytes!", &[]);
        let token = signer.sign(&crate::links::Bounce { delivery: 7 });
        let address = crate::links::verp_address(&token, "alliance.example");
        assert_eq!(verp_token(&format!("<{address}>")), Some(token));
        assert_eq!(verp_token("news@alliance.example"), None);
    }

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn der_walks_a_p256_key() {
        use base64::Engine as _;
        // A P-256 SubjectPublicKeyInfo (the shape SendGrid shows).
        let spki = base64::engine::general_purpose::STANDARD
            .decode("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==")
            .unwrap();
        let key = spki_key(&spki).unwrap();
        assert_eq!((key.len(), key[0]), (65, 4));
        assert_eq!(spki_key(b"\x30\x03\x02\x01\x00"), None);
    }
}

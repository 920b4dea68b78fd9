//! Mailgun: one event per request, `{"signature": {timestamp, token,
//! signature}, "event-data": {...}}`, signed with HMAC-SHA256 over
//! timestamp + token under the webhook signing key
//! (`BULLETIN_MAILGUN_SIGNING_KEY`); a timestamp older than
//! `max_age_secs` (or as far in the future) is refused.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{Event, EventKind, Outcome, verp_token};
use crate::web::{AppState, Error};

pub struct Mailgun {
    key: Vec<u8>,
    max_age_secs: i64,
}

impl Mailgun {
    pub fn new(signing_key: &str, max_age_secs: i64) -> Mailgun {
        Mailgun {
            key: signing_key.as_bytes().to_vec(),
            max_age_secs,
        }
    }

    fn verify(&self, s: &Signature, now: i64) -> Result<(), Error> {
        let at: i64 = s
            .timestamp
            .parse()
            .map_err(|_| Error::Unauthorized("bad signature timestamp"))?;
        if (now - at).abs() > self.max_age_secs {
            return Err(Error::Unauthorized("stale signature timestamp"));
        }
        let expected = hex_decode(&s.signature).ok_or(Error::Unauthorized("bad signature"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(s.timestamp.as_bytes());
        mac.update(s.token.as_bytes());
        mac.verify_slice(&expected)
            .map_err(|_| Error::Unauthorized("bad signature"))
    }
}

#[derive(Deserialize)]
struct Payload {
    signature: Signature,
    #[serde(rename = "event-data")]
    event_data: EventData,
}

#[derive(Deserialize)]
struct Signature {
    timestamp: String,
    token: String,
    signature: String,
}

#[derive(Deserialize)]
struct EventData {
    id: String,
    event: String,
    #[serde(default)]
    severity: String,
    recipient: String,
    #[serde(default)]
    message: Option<Message>,
    #[serde(rename = "delivery-status", default)]
    delivery_status: Option<DeliveryStatus>,
    #[serde(default)]
    envelope: Option<Envelope>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    headers: Headers,
}

#[derive(Deserialize, Default)]
struct Headers {
    #[serde(rename = "message-id", default)]
    message_id: Option<String>,
}

#[derive(Deserialize)]
struct DeliveryStatus {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    sender: Option<String>,
}

pub(super) async fn receive(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Outcome>, Error> {
    let mailgun = state
        .inner
        .webhooks
        .as_ref()
        .and_then(|w| w.mailgun.as_ref())
        .ok_or(Error::NotFound)?;
    let payload: Payload = serde_json::from_slice(&body)
        .map_err(|_| Error::BadRequest("not a Mailgun webhook payload"))?;
    mailgun.verify(&payload.signature, crate::store::now())?;
    let events = vec![event(payload.event_data)];
    Ok(Json(super::apply(&state, "mailgun", events).await?))
}

fn event(data: EventData) -> Event {
    let kind = match (data.event.as_str(), data.severity.as_str()) {
        ("failed", "permanent") => EventKind::Hard,
        ("failed", "temporary") => EventKind::Soft,
        ("complained", _) => EventKind::Complaint,
        _ => EventKind::Other,
    };
    let reason = data
        .delivery_status
        .map(|d| {
            let code = d.code.map(|c| c.to_string()).unwrap_or_default();
            let text = if d.description.is_empty() {
                d.message
            } else {
                d.description
            };
            format!("{code} {text}").trim().to_string()
        })
        .unwrap_or_default();
    Event {
        id: data.id,
        kind,
        address: data.recipient,
        message_id: data.message.and_then(|m| m.headers.message_id),
        verp: data
            .envelope
            .and_then(|e| e.sender)
            .and_then(|s| verp_token(&s)),
        reason,
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

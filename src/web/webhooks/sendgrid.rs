//! SendGrid: the signed Event Webhook posts a JSON array of events. The
//! `X-Twilio-Email-Event-Webhook-Signature` header is an ECDSA P-256 /
//! SHA-256 signature (base64 DER) over the
//! `X-Twilio-Email-Event-Webhook-Timestamp` header followed by the raw body,
//! checked with the verification key SendGrid shows
//! (`[webhooks.sendgrid] public_key`); stale timestamps are refused.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine as _;
use serde::Deserialize;

use super::{Event, EventKind, Outcome, spki_key};
use crate::web::{AppState, Error};

pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

pub struct Sendgrid {
    /// The uncompressed P-256 point.
    point: Vec<u8>,
    max_age_secs: i64,
}

impl Sendgrid {
    pub fn new(public_key: &str, max_age_secs: i64) -> Result<Sendgrid, String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(public_key.trim())
            .map_err(|e| format!("webhooks.sendgrid.public_key is not base64: {e}"))?;
        let point = spki_key(&der)
            .filter(|k| k.len() == 65 && k[0] == 4)
            .ok_or("webhooks.sendgrid.public_key is not a P-256 public key (copy the verification key SendGrid shows)")?;
        Ok(Sendgrid {
            point: point.to_vec(),
            max_age_secs,
        })
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), Error> {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(Error::Unauthorized("missing signature headers"))
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(header(SIGNATURE_HEADER)?.trim())
            .map_err(|_| Error::Unauthorized("bad signature"))?;
        let timestamp = header(TIMESTAMP_HEADER)?;
        let at: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| Error::Unauthorized("bad signature timestamp"))?;
        if (now - at).abs() > self.max_age_secs {
            return Err(Error::Unauthorized("stale signature timestamp"));
        }
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(&signed, &signature)
        .map_err(|_| Error::Unauthorized("bad signature"))
    }
}

#[derive(Deserialize)]
struct Record {
    sg_event_id: String,
    event: String,
    email: String,
    #[serde(rename = "type", default)]
    bounce_type: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(rename = "smtp-id", default)]
    smtp_id: Option<String>,
}

pub(super) async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Outcome>, Error> {
    let sendgrid = state
        .inner
        .webhooks
        .as_ref()
        .and_then(|w| w.sendgrid.as_ref())
        .ok_or(Error::NotFound)?;
    sendgrid.verify(&headers, &body, crate::store::now())?;
    let records: Vec<Record> = serde_json::from_slice(&body)
        .map_err(|_| Error::BadRequest("not a SendGrid Event Webhook batch"))?;
    let events = records.into_iter().map(event).collect();
    Ok(Json(super::apply(&state, "sendgrid", events).await?))
}

fn event(r: Record) -> Event {
    let kind = match (r.event.as_str(), r.bounce_type.as_deref()) {
        ("bounce", Some("blocked")) => EventKind::Soft,
        ("bounce", _) => EventKind::Hard,
        ("spamreport", _) => EventKind::Complaint,
        _ => EventKind::Other,
    };
    Event {
        id: r.sg_event_id,
        kind,
        address: r.email,
        message_id: r.smtp_id,
        verp: None,
        reason: format!(
            "{} {}",
            r.status.unwrap_or_default(),
            r.reason.unwrap_or_default()
        )
        .trim()
        .to_string(),
    }
}

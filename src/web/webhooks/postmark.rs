//! Postmark: one JSON record per request (`RecordType` Bounce or
//! SpamComplaint), authenticated with HTTP basic auth set in the webhook URL
//! at Postmark (`[webhooks.postmark] user`, `BULLETIN_POSTMARK_PASSWORD`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use serde::Deserialize;

use super::{Event, EventKind, Outcome, same_secret};
use crate::web::{AppState, Error};

pub struct Postmark {
    /// `user:password`, as the Authorization header carries it.
    credentials: Vec<u8>,
}

impl Postmark {
    pub fn new(user: &str, password: &str) -> Postmark {
        Postmark {
            credentials: format!("{user}:{password}").into_bytes(),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .is_some_and(|given| same_secret(&given, &self.credentials))
    }
}

/// The fields of a Bounce or SpamComplaint record that matter here.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record {
    record_type: String,
    #[serde(rename = "ID")]
    id: serde_json::Value,
    #[serde(rename = "Type", default)]
    kind: String,
    email: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    details: String,
    /// The bounce message itself, when "include bounce content" is on.
    #[serde(default)]
    content: Option<String>,
}

pub(super) async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Outcome>, Error> {
    let settings = state.inner.webhooks.as_ref();
    let postmark = settings
        .and_then(|w| w.postmark.as_ref())
        .ok_or(Error::NotFound)?;
    if !postmark.authorized(&headers) {
        return Err(Error::Unauthorized("wrong or missing basic auth"));
    }
    let record: Record = serde_json::from_slice(&body)
        .map_err(|_| Error::BadRequest("not a Postmark Bounce or SpamComplaint record"))?;
    let events = vec![event(record)];
    Ok(Json(super::apply(&state, "postmark", events).await?))
}

fn event(record: Record) -> Event {
    let kind = match (record.record_type.as_str(), record.kind.as_str()) {
        ("SpamComplaint", _) | (_, "SpamComplaint") => EventKind::Complaint,
        ("Bounce", "HardBounce" | "BadEmailAddress" | "ManuallyDeactivated") => EventKind::Hard,
        ("Bounce", "SoftBounce" | "Transient" | "DnsError" | "Blocked") => EventKind::Soft,
        _ => EventKind::Other,
    };
    // The bounce itself may quote our Message-ID and VERP address.
    let report = record
        .content
        .as_deref()
        .map(|c| crate::bounce::parse(c.as_bytes()));
    Event {
        id: match &record.id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        kind,
        address: record.email,
        message_id: report.as_ref().and_then(|r| r.original_message_id.clone()),
        verp: report.and_then(|r| r.verp_token),
        reason: if record.details.is_empty() {
            format!("{}: {}", record.kind, record.description)
        } else {
            format!("{}: {}", record.kind, record.details)
        },
    }
}

//! Amazon SES through SNS: each POST is an SNS message (`Notification`,
//! `SubscriptionConfirmation`, `UnsubscribeConfirmation`) signed with the
//! RSA key of the certificate at `SigningCertURL` (SignatureVersion 1:
//! SHA1, 2: SHA256). The certificate URL must be an HTTPS
//! `sns.<region>.amazonaws.com` address of a `.pem`; certificates are kept
//! in memory and in the `[webhooks.ses] certificates` folder (a certificate
//! put there by hand, as the tests do, is used without fetching). Only the
//! configured topic is accepted. A verified subscription confirmation is
//! answered by fetching its `SubscribeURL`, as the SNS protocol asks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use base64::Engine as _;
use serde::Deserialize;

use super::{Event, EventKind, Outcome, spki_key, verp_token};
use crate::web::{AppState, Error};

/// How long fetching a certificate or confirming a subscription may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Ses {
    topic_arn: String,
    certificates: CertificateCache,
}

impl Ses {
    pub fn new(topic_arn: &str, certificates: CertificateCache) -> Ses {
        Ses {
            topic_arn: topic_arn.to_string(),
            certificates,
        }
    }
}

/// SNS signing certificates by URL: memory, then the folder, then HTTPS.
pub struct CertificateCache {
    dir: PathBuf,
    known: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl CertificateCache {
    pub fn new(dir: PathBuf) -> CertificateCache {
        CertificateCache {
            dir,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The DER certificate at `url` (already checked by [`cert_url_ok`]).
    async fn get(&self, url: &str) -> Result<Arc<Vec<u8>>, Error> {
        if let Some(der) = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
        {
            return Ok(der.clone());
        }
        let name = url.rsplit('/').next().unwrap_or_default();
        let path = self.dir.join(name);
        let pem = match tokio::fs::read(&path).await {
            Ok(pem) => pem,
            Err(_) => {
                let pem = https_get(url)
                    .await
                    .map_err(|e| Error::Internal(format!("fetching {url}: {e}")))?;
                let _ = tokio::fs::create_dir_all(&self.dir).await;
                if let Err(e) = tokio::fs::write(&path, &pem).await {
                    tracing::warn!("{}: {e}", path.display());
                }
                pem
            }
        };
        let der = Arc::new(pem_to_der(&pem).ok_or_else(|| {
            Error::Internal(format!("{}: not a PEM certificate", path.display()))
        })?);
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.to_string(), der.clone());
        Ok(der)
    }
}

/// An SNS message as posted.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Envelope {
    #[serde(rename = "Type")]
    kind: String,
    message_id: String,
    topic_arn: String,
    #[serde(default)]
    subject: Option<String>,
    message: String,
    timestamp: String,
    signature_version: String,
    signature: String,
    #[serde(rename = "SigningCertURL")]
    signing_cert_url: String,
    #[serde(rename = "SubscribeURL", default)]
    subscribe_url: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

pub(super) async fn receive(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Outcome>, Error> {
    let ses = state
        .inner
        .webhooks
        .as_ref()
        .and_then(|w| w.ses.as_ref())
        .ok_or(Error::NotFound)?;
    let envelope: Envelope =
        serde_json::from_slice(&body).map_err(|_| Error::BadRequest("not an SNS message"))?;
    if envelope.topic_arn != ses.topic_arn {
        return Err(Error::Unauthorized("not the configured SNS topic"));
    }
    if !cert_url_ok(&envelope.signing_cert_url) {
        return Err(Error::Unauthorized(
            "SigningCertURL is not an sns.<region>.amazonaws.com certificate",
        ));
    }
    let signed = string_to_sign(&envelope).ok_or(Error::BadRequest("unknown SNS message type"))?;
    let certificate = ses.certificates.get(&envelope.signing_cert_url).await?;
    verify(&certificate, &envelope, signed.as_bytes())?;
    match envelope.kind.as_str() {
        "Notification" => {
            let events = events(&envelope).ok_or(Error::BadRequest("not an SES event"))?;
            Ok(Json(super::apply(&state, "ses", events).await?))
        }
        "SubscriptionConfirmation" => {
            let url = envelope
                .subscribe_url
                .as_deref()
                .filter(|u| sns_host(u))
                .ok_or(Error::BadRequest("SubscribeURL is not an SNS address"))?;
            https_get(url)
                .await
                .map_err(|e| Error::Internal(format!("confirming the SNS subscription: {e}")))?;
            tracing::info!("confirmed the SNS subscription to {}", envelope.topic_arn);
            Ok(Json(Outcome::default()))
        }
        _ => Ok(Json(Outcome::default())),
    }
}

/// The text SNS signs: chosen fields as `Name\nvalue\n`, in this order.
pub(crate) fn string_to_sign(e: &Envelope) -> Option<String> {
    let fields: Vec<(&str, Option<&str>)> = match e.kind.as_str() {
        "Notification" => vec![
            ("Message", Some(&e.message)),
            ("MessageId", Some(&e.message_id)),
            ("Subject", e.subject.as_deref()),
            ("Timestamp", Some(&e.timestamp)),
            ("TopicArn", Some(&e.topic_arn)),
            ("Type", Some(&e.kind)),
        ],
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => vec![
            ("Message", Some(&e.message)),
            ("MessageId", Some(&e.message_id)),
            ("SubscribeURL", e.subscribe_url.as_deref()),
            ("Timestamp", Some(&e.timestamp)),
            ("Token", e.token.as_deref()),
            ("TopicArn", Some(&e.topic_arn)),
            ("Type", Some(&e.kind)),
        ],
        _ => return None,
    };
    Some(
        fields
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| format!("{name}\n{v}\n")))
            .collect(),
    )
}

fn verify(certificate: &[u8], e: &Envelope, signed: &[u8]) -> Result<(), Error> {
    let bad = || Error::Unauthorized("bad SNS signature");
    let signature = base64::engine::general_purpose::STANDARD
        .decode(e.signature.trim())
        .map_err(|_| bad())?;
    let der = tokio_rustls::rustls::pki_types::CertificateDer::from(certificate);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| bad())?;
    let spki = cert.subject_public_key_info();
    let rsa_key = spki_key(spki.as_ref()).ok_or_else(bad)?;
    let algorithm: &dyn ring::signature::VerificationAlgorithm = match e.signature_version.as_str()
    {
        "1" => &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        "2" => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        _ => return Err(Error::Unauthorized("unknown SNS SignatureVersion")),
    };
    ring::signature::UnparsedPublicKey::new(algorithm, rsa_key)
        .verify(signed, &signature)
        .map_err(|_| bad())
}

/// An HTTPS URL on `sns.<region>.amazonaws.com` (or `.com.cn`) ending in
/// `.pem`.
pub(crate) fn cert_url_ok(url: &str) -> bool {
    sns_host(url) && url.ends_with(".pem") && !url.contains('?')
}

fn sns_host(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let Some(region) = host.strip_prefix("sns.").and_then(|h| {
        h.strip_suffix(".amazonaws.com")
            .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
    }) else {
        return false;
    };
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The SES event inside a notification, one [`Event`] per recipient.
fn events(e: &Envelope) -> Option<Vec<Event>> {
    let message: serde_json::Value = serde_json::from_str(&e.message).ok()?;
    let kind = message
        .get("notificationType")
        .or_else(|| message.get("eventType"))?
        .as_str()?;
    let mail = message.get("mail");
    let header = |name: &str| {
        mail?.get("headers")?.as_array()?.iter().find_map(|h| {
            (h.get("name")?.as_str()?.eq_ignore_ascii_case(name))
                .then(|| h.get("value")?.as_str().map(String::from))
                .flatten()
        })
    };
    let message_id = mail
        .and_then(|m| m.pointer("/commonHeaders/messageId"))
        .and_then(|v| v.as_str())
        .map(String::from)
        .or_else(|| header("Message-ID"));
    let verp = mail
        .and_then(|m| m.get("source"))
        .and_then(|v| v.as_str())
        .and_then(verp_token);
    let text = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (event_kind, recipients, reason) = match kind {
        "Bounce" => {
            let bounce = message.get("bounce")?;
            let class = match bounce.get("bounceType")?.as_str()? {
                "Permanent" => EventKind::Hard,
                "Transient" => EventKind::Soft,
                _ => EventKind::Other,
            };
            let reason = format!(
                "{} {}",
                text(bounce, "bounceType"),
                text(bounce, "bounceSubType")
            );
            (
                class,
                bounce.get("bouncedRecipients")?.as_array()?.clone(),
                reason,
            )
        }
        "Complaint" => {
            let complaint = message.get("complaint")?;
            let reason = text(complaint, "complaintFeedbackType");
            (
                EventKind::Complaint,
                complaint.get("complainedRecipients")?.as_array()?.clone(),
                reason,
            )
        }
        _ => (EventKind::Other, Vec::new(), String::new()),
    };
    if recipients.is_empty() {
        return Some(vec![Event {
            id: e.message_id.clone(),
            kind: EventKind::Other,
            address: String::new(),
            message_id: None,
            verp: None,
            reason,
        }]);
    }
    Some(
        recipients
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let diagnostic = text(r, "diagnosticCode");
                Event {
                    id: format!("{}:{i}", e.message_id),
                    kind: event_kind,
                    address: text(r, "emailAddress"),
                    message_id: message_id.clone(),
                    verp: verp.clone(),
                    reason: format!("{} {}", reason.trim(), diagnostic)
                        .trim()
                        .to_string(),
                }
            })
            .collect(),
    )
}

fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = text[start..].find("-----END CERTIFICATE-----")? + start;
    let b64: String = text[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// GET over HTTPS (HTTP/1.0, so the body is whatever follows the head);
/// the body when the status is 200.
async fn https_get(url: &str) -> Result<Vec<u8>, String> {
    tokio::time::timeout(FETCH_TIMEOUT, https_get_unbounded(url))
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn https_get_unbounded(url: &str) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("https://").ok_or("not an https URL")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let tcp = tokio::net::TcpStream::connect((host, 443))
        .await
        .map_err(|e| e.to_string())?;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: bulletin\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    tls.take(1024 * 1024)
        .read_to_end(&mut reply)
        .await
        .map_err(|e| e.to_string())?;
    let head_end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP reply")?;
    let status = String::from_utf8_lossy(&reply[..head_end]);
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(status.lines().next().unwrap_or_default().to_string());
    }
    Ok(reply[head_end + 4..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_urls() {
        assert!(cert_url_ok(
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"
        ));
        assert!(cert_url_ok(
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem"
        ));
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.txt",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
        ] {
            assert!(!cert_url_ok(bad), "{bad}");
        }
    }

    #[test]
    fn notification_string_to_sign() {
        let e: Envelope = serde_json::from_value(serde_json::json!({
            "Type": "Notification", "MessageId": "m1", "TopicArn": "arn:t",
            "Message": "hello", "Timestamp": "2026-11-30T08:00:00.000Z",
            "SignatureVersion": "1", "Signature": "", "SigningCertURL": "",
        }))
        .unwrap();
        assert_eq!(
            string_to_sign(&e).unwrap(),
            "Message\nhello\nMessageId\nm1\nTimestamp\n2026-11-30T08:00:00.000Z\nTopicArn\narn:t\nType\nNotification\n"
        );
    }
}

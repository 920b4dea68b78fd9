//! The sending services' webhooks on a real socket (`web::serve` on
//! 127.0.0.1:0): for each service a notification with a valid signature is
//! applied once (a replay changes nothing), a bad or stale signature is
//! refused and a malformed body is a 400, neither changing anything. Keys
//! and certificates are made by the test (ring for SendGrid's P-256 key,
//! `openssl` for the SNS signing certificate, installed in the certificate
//! folder so nothing is fetched).

use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use hmac::Mac as _;
use ring::signature::KeyPair as _;

use bulletin::assets::Templates;
use bulletin::config::Organisation;
use bulletin::links::{Signer, Urls};
use bulletin::store::Store;
use bulletin::web::webhooks::{CertificateCache, Ses, Settings};
use bulletin::web::{self, AppState, Pages};

use crate::support::bulletin_in;
use crate::util::{HttpReply, http};

const NOW: i64 = 1_750_000_000;
const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:ses-bounces";
const CERT_URL: &str =
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem";
const POSTMARK_USER: &str = "postmark";
const POSTMARK_PASSWORD: &str = "postmark-basic-auth-password";
const MAILGUN_KEY: &str = "key-mailgun-signing-key-for-tests";

/// A served application with three people on `news` and every webhook on.
struct Site {
    addr: String,
    store: Store,
    sendgrid: ring::signature::EcdsaKeyPair,
    /// The SNS signing key (PEM), or `None` without `openssl`.
    sns_key: Option<std::path::PathBuf>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Site {
    async fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(crate::support::pg::location_in(dir.path()).await)
            .await
            .unwrap();
        store
            .create_list("news", "News", "", false, true, NOW)
            .await
            .unwrap();
        for email in ["hard@example.org", "soft@example.org", "angry@example.org"] {
            store
                .add_subscriber(email, None, "news", "cli", NOW)
                .await
                .unwrap();
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let sendgrid = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        // SubjectPublicKeyInfo of a P-256 key: fixed header, then the point.
        let mut spki = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
        spki.extend_from_slice(sendgrid.public_key().as_ref());
        let certificates = dir.path().join("sns-certificates");
        let sns_key = sns_certificate(&certificates);
        let settings = Settings::new(bulletin::store::SoftRule {
            limit: 3,
            window_secs: 30 * 86_400,
        })
        .postmark(POSTMARK_USER, POSTMARK_PASSWORD)
        .mailgun(MAILGUN_KEY, 300)
        .sendgrid(
            &base64::engine::general_purpose::STANDARD.encode(&spki),
            300,
        )
        .unwrap()
        .ses(Ses::new(TOPIC, CertificateCache::new(certificates)));
        let pages = Pages::new(&Templates::builtin(), &Organisation::default()).unwrap();
        let state = AppState::new(
            store.clone(),
            Signer::new(b"webhook-test-secret-at-least-32-bytes!", &[]),
            Urls::new("https://news.example.org"),
            pages,
            None,
            "News <news@example.org>".into(),
        )
        .with_webhooks(settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(web::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Site {
            addr,
            store,
            sendgrid,
            sns_key,
            _dir: dir,
            _stop: stop,
        }
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpReply {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        http(&self.addr, "POST", path, &all, body).await
    }

    /// (status, bounce and complaint events) of a person.
    async fn person(&self, email: &str) -> (String, usize) {
        let s = self.store.subscriber(email).await.unwrap().unwrap();
        let events = self.store.events(s.id).await.unwrap();
        let n = events
            .iter()
            .filter(|e| e.kind == "bounced" || e.kind == "complained")
            .count();
        (s.status, n)
    }

    /// What nobody should see change: everyone's status and event count.
    async fn snapshot(&self) -> Vec<(String, usize)> {
        let mut all = Vec::new();
        for email in ["hard@example.org", "soft@example.org", "angry@example.org"] {
            all.push(self.person(email).await);
        }
        all
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn now() -> i64 {
    bulletin::store::now()
}

/// Makes an RSA key and a self-signed certificate with `openssl`, installs
/// the certificate under the name of [`CERT_URL`], returns the key's path.
fn sns_certificate(dir: &Path) -> Option<std::path::PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("signing-key.pem");
    let cert = dir.join(CERT_URL.rsplit('/').next().unwrap());
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=sns.amazonaws.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match made {
        Ok(s) if s.success() => Some(key),
        _ => {
            assert!(
                std::env::var("BULLETIN_INTEROP").as_deref() != Ok("1"),
                "BULLETIN_INTEROP=1 but openssl is missing"
            );
            eprintln!("notice: openssl not installed; SES webhook test skipped");
            None
        }
    }
}

fn openssl_sign(key: &Path, digest: &str, text: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(["dgst", digest, "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    base64::engine::general_purpose::STANDARD.encode(out.stdout)
}

/// An SNS notification carrying `message`, signed as SNS does.
fn sns_notification(key: &Path, id: &str, message: &str, version: &str) -> Vec<u8> {
    let timestamp = "2026-11-30T08:00:00.000Z";
    let signed = format!(
        "Message\n{message}\nMessageId\n{id}\nTimestamp\n{timestamp}\nTopicArn\n{TOPIC}\nType\nNotification\n"
    );
    let digest = if version == "1" { "-sha1" } else { "-sha256" };
    serde_json::json!({
        "Type": "Notification",
        "MessageId": id,
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": timestamp,
        "SignatureVersion": version,
        "Signature": openssl_sign(key, digest, &signed),
        "SigningCertURL": CERT_URL,
    })
    .to_string()
    .into_bytes()
}

fn assert_status(reply: &HttpReply, status: u16) {
    assert_eq!(reply.status, status, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmark_basic_auth_bounce_and_complaint_applied_once() {
    let site = Site::new().await;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{POSTMARK_USER}:{POSTMARK_PASSWORD}"))
    );
    let bounce = serde_json::json!({
        "RecordType": "Bounce", "ID": 4323372036854775807u64, "Type": "HardBounce",
        "TypeCode": 1, "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 user unknown", "Email": "Hard@Example.org",
        "BouncedAt": "2026-11-30T08:00:00Z", "Inactive": true
    })
    .to_string();
    // Wrong password, no auth, malformed JSON: refused, nothing changed.
    let before = site.snapshot().await;
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{POSTMARK_USER}:nope"))
    );
    let r = site
        .post(
            "/webhooks/postmark",
            &[("Authorization", &wrong)],
            bounce.as_bytes(),
        )
        .await;
    assert_status(&r, 401);
    assert_status(
        &site
            .post("/webhooks/postmark", &[], bounce.as_bytes())
            .await,
        401,
    );
    let r = site
        .post(
            "/webhooks/postmark",
            &[("Authorization", &auth)],
            b"{\"RecordType\":",
        )
        .await;
    assert_status(&r, 400);
    assert_eq!(site.snapshot().await, before);

    // The real thing, twice.
    for round in 0..2 {
        let r = site
            .post(
                "/webhooks/postmark",
                &[("Authorization", &auth)],
                bounce.as_bytes(),
            )
            .await;
        assert_status(&r, 200);
        let expected = if round == 0 {
            "\"applied\":1"
        } else {
            "\"replayed\":1"
        };
        assert!(r.body.contains(expected), "{}", r.body);
    }
    assert_eq!(site.person("hard@example.org").await, ("bounced".into(), 1));

    let complaint = serde_json::json!({
        "RecordType": "SpamComplaint", "ID": 42, "Type": "SpamComplaint",
        "Email": "angry@example.org", "Description": "", "Details": "Test spam complaint details"
    })
    .to_string();
    for _ in 0..2 {
        let r = site
            .post(
                "/webhooks/postmark",
                &[("Authorization", &auth)],
                complaint.as_bytes(),
            )
            .await;
        assert_status(&r, 200);
    }
    assert_eq!(
        site.person("angry@example.org").await,
        ("complained".into(), 1)
    );
    assert_eq!(site.person("soft@example.org").await, ("active".into(), 0));
    // `bounces list` names the webhook.
    let events = site.store.bounce_events(0).await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        events.iter().all(|e| e.source == "webhook:postmark"),
        "{events:?}"
    );
}

fn mailgun_body(timestamp: i64, id: &str, event: &str, severity: &str, key: &str) -> Vec<u8> {
    let token = format!("token-{id}-{timestamp}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{timestamp}{token}").as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    serde_json::json!({
        "signature": {"timestamp": timestamp.to_string(), "token": token, "signature": signature},
        "event-data": {
            "id": id, "event": event, "severity": severity, "recipient": "soft@example.org",
            "timestamp": timestamp,
            "message": {"headers": {"message-id": "20261130080000.1.abc@mg.example.org"}},
            "delivery-status": {"code": 452, "message": "4.2.2 mailbox full", "description": ""}
        }
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailgun_hmac_soft_bounce_applied_once_stale_and_forged_refused() {
    let site = Site::new().await;
    let before = site.snapshot().await;
    for (body, status) in [
        // Signed with another key.
        (
            mailgun_body(now(), "ev1", "failed", "temporary", "key-other"),
            401,
        ),
        // Signed correctly, ten minutes ago: a replay of a captured request.
        (
            mailgun_body(now() - 600, "ev1", "failed", "temporary", MAILGUN_KEY),
            401,
        ),
        (b"{\"signature\": 1".to_vec(), 400),
    ] {
        assert_status(&site.post("/webhooks/mailgun", &[], &body).await, status);
    }
    assert_eq!(site.snapshot().await, before);

    let body = mailgun_body(now(), "ev1", "failed", "temporary", MAILGUN_KEY);
    let r = site.post("/webhooks/mailgun", &[], &body).await;
    assert_status(&r, 200);
    assert!(r.body.contains("\"applied\":1"), "{}", r.body);
    // The same event again (fresh signature, same event id): nothing more.
    let again = mailgun_body(now(), "ev1", "failed", "temporary", MAILGUN_KEY);
    let r = site.post("/webhooks/mailgun", &[], &again).await;
    assert!(r.body.contains("\"replayed\":1"), "{}", r.body);
    // A soft bounce is counted, not acted on.
    assert_eq!(site.person("soft@example.org").await, ("active".into(), 1));
}

/// An event whose recipient is nobody we know (a forwarding address) but
/// which carries our Message-ID is matched through the token to the
/// delivery: the person it was sent to is bounced, for that campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailgun_event_is_matched_by_our_message_id_not_the_address() {
    let site = Site::new().await;
    let news = site.store.require_list("news").await.unwrap();
    let campaign = site
        .store
        .insert_campaign(&bulletin::store::deliveries::NewCampaign {
            slug: "news-1",
            lists: &[news.id],
            subject: "News",
            compiled: "{}",
            source_hash: "h",
            send_at: NOW,
            now: NOW,
        })
        .await
        .unwrap();
    assert_eq!(site.store.materialise(campaign, NOW).await.unwrap(), 3);
    let hard = site
        .store
        .subscriber("hard@example.org")
        .await
        .unwrap()
        .unwrap();
    let raw = crate::support::db::raw(site.store.location()).await;
    let delivery: i64 = sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE campaign_id = $1 AND subscriber_id = $2",
    )
    .bind(campaign)
    .bind(hard.id)
    .fetch_one(&raw)
    .await
    .unwrap();
    let signer = Signer::new(b"webhook-test-secret-at-least-32-bytes!", &[]);
    let token = signer.sign(&bulletin::links::Bounce { delivery });
    let ours = bulletin::links::message_id(&token, "news.example.org");
    let body = String::from_utf8(mailgun_body(
        now(),
        "ev9",
        "failed",
        "permanent",
        MAILGUN_KEY,
    ))
    .unwrap()
    .replace("soft@example.org", "forwarded@elsewhere.example")
    .replace("20261130080000.1.abc@mg.example.org", &ours)
    .replace("\"code\":452", "\"code\":550")
    .replace("4.2.2 mailbox full", "5.1.1 user unknown");
    // The signature covers timestamp and token only, so the edits keep it
    // valid (each edit names its field: a bare "452" may be in the
    // signature's hex).
    let r = site.post("/webhooks/mailgun", &[], body.as_bytes()).await;
    assert_status(&r, 200);
    assert!(r.body.contains("\"applied\":1"), "{}", r.body);
    assert_eq!(site.person("hard@example.org").await, ("bounced".into(), 1));
    assert_eq!(site.person("soft@example.org").await, ("active".into(), 0));
    let events = site.store.events(hard.id).await.unwrap();
    let bounced = events.iter().find(|e| e.kind == "bounced").unwrap();
    assert_eq!(bounced.campaign.as_deref(), Some("news-1"), "{bounced:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_signed_batch_applied_once_bad_signature_refused() {
    let site = Site::new().await;
    let batch = serde_json::json!([
        {"email": "hard@example.org", "timestamp": NOW, "event": "bounce", "type": "bounce",
         "status": "5.1.1", "reason": "550 5.1.1 user unknown", "sg_event_id": "sg-1",
         "sg_message_id": "m1", "smtp-id": "<not-ours@example.org>"},
        {"email": "soft@example.org", "timestamp": NOW, "event": "bounce", "type": "blocked",
         "status": "4.0.0", "reason": "blocked", "sg_event_id": "sg-2"},
        {"email": "angry@example.org", "timestamp": NOW, "event": "spamreport", "sg_event_id": "sg-3"},
        {"email": "angry@example.org", "timestamp": NOW, "event": "open", "sg_event_id": "sg-4"}
    ])
    .to_string();
    let rng = ring::rand::SystemRandom::new();
    let sign = |timestamp: &str, body: &[u8]| {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        base64::engine::general_purpose::STANDARD
            .encode(site.sendgrid.sign(&rng, &signed).unwrap().as_ref())
    };
    let ts = now().to_string();
    let good = sign(&ts, batch.as_bytes());
    let before = site.snapshot().await;
    // The body changed after signing; a stale timestamp; no signature; bad JSON.
    let tampered = batch.replace("sg-1", "sg-9");
    let stale_ts = (now() - 3600).to_string();
    let stale = sign(&stale_ts, batch.as_bytes());
    let not_json = b"[{\"email\": ";
    let not_json_sig = sign(&ts, not_json);
    for (headers, body, status) in [
        (
            vec![
                ("X-Twilio-Email-Event-Webhook-Signature", good.as_str()),
                ("X-Twilio-Email-Event-Webhook-Timestamp", ts.as_str()),
            ],
            tampered.as_bytes(),
            401,
        ),
        (
            vec![
                ("X-Twilio-Email-Event-Webhook-Signature", stale.as_str()),
                ("X-Twilio-Email-Event-Webhook-Timestamp", stale_ts.as_str()),
            ],
            batch.as_bytes(),
            401,
        ),
        (vec![], batch.as_bytes(), 401),
        (
            vec![
                (
                    "X-Twilio-Email-Event-Webhook-Signature",
                    not_json_sig.as_str(),
                ),
                ("X-Twilio-Email-Event-Webhook-Timestamp", ts.as_str()),
            ],
            not_json.as_slice(),
            400,
        ),
    ] {
        assert_status(
            &site.post("/webhooks/sendgrid", &headers, body).await,
            status,
        );
    }
    assert_eq!(site.snapshot().await, before);

    let headers = [
        ("X-Twilio-Email-Event-Webhook-Signature", good.as_str()),
        ("X-Twilio-Email-Event-Webhook-Timestamp", ts.as_str()),
    ];
    let r = site
        .post("/webhooks/sendgrid", &headers, batch.as_bytes())
        .await;
    assert_status(&r, 200);
    assert!(
        r.body.contains("\"applied\":3") && r.body.contains("\"ignored\":1"),
        "{}",
        r.body
    );
    let r = site
        .post("/webhooks/sendgrid", &headers, batch.as_bytes())
        .await;
    assert!(r.body.contains("\"replayed\":4"), "{}", r.body);
    assert_eq!(site.person("hard@example.org").await, ("bounced".into(), 1));
    assert_eq!(site.person("soft@example.org").await, ("active".into(), 1));
    assert_eq!(
        site.person("angry@example.org").await,
        ("complained".into(), 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ses_sns_signatures_checked_against_the_certificate_applied_once() {
    let site = Site::new().await;
    let Some(key) = site.sns_key.clone() else {
        return;
    };
    let bounce = serde_json::json!({
        "notificationType": "Bounce",
        "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
                   "bouncedRecipients": [{"emailAddress": "hard@example.org", "status": "5.1.1",
                                          "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]},
        "mail": {"messageId": "0100018c-ses", "source": "news@example.org",
                 "commonHeaders": {"messageId": "<not-ours@example.org>"}}
    })
    .to_string();
    let complaint = serde_json::json!({
        "notificationType": "Complaint",
        "complaint": {"complainedRecipients": [{"emailAddress": "angry@example.org"}],
                      "complaintFeedbackType": "abuse"},
        "mail": {"messageId": "0100018c-ses2", "source": "news@example.org"}
    })
    .to_string();
    let before = site.snapshot().await;
    // Signed, then changed; another topic; a certificate URL off SNS; bad JSON.
    let good = sns_notification(&key, "sns-1", &bounce, "2");
    let tampered = String::from_utf8(good.clone())
        .unwrap()
        .replace("hard@example.org", "soft@example.org");
    let other_topic = String::from_utf8(good.clone())
        .unwrap()
        .replace(TOPIC, "arn:aws:sns:eu-west-1:999:other");
    let off_sns = String::from_utf8(good.clone()).unwrap().replace(
        "sns.eu-west-1.amazonaws.com",
        "sns.eu-west-1.amazonaws.com.evil.example",
    );
    for (body, status) in [
        (tampered.into_bytes(), 401),
        (other_topic.into_bytes(), 401),
        (off_sns.into_bytes(), 401),
        (b"{\"Type\": \"Notification\"".to_vec(), 400),
    ] {
        assert_status(&site.post("/webhooks/ses", &[], &body).await, status);
    }
    assert_eq!(site.snapshot().await, before);

    for round in 0..2 {
        let r = site.post("/webhooks/ses", &[], &good).await;
        assert_status(&r, 200);
        let expected = if round == 0 {
            "\"applied\":1"
        } else {
            "\"replayed\":1"
        };
        assert!(r.body.contains(expected), "{}", r.body);
    }
    assert_eq!(site.person("hard@example.org").await, ("bounced".into(), 1));
    // SignatureVersion 1 (SHA1), SNS's default.
    let r = site
        .post(
            "/webhooks/ses",
            &[],
            &sns_notification(&key, "sns-2", &complaint, "1"),
        )
        .await;
    assert_status(&r, 200);
    assert_eq!(
        site.person("angry@example.org").await,
        ("complained".into(), 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_not_configured_answer_404() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(crate::support::pg::location_in(dir.path()).await)
        .await
        .unwrap();
    let pages = Pages::new(&Templates::builtin(), &Organisation::default()).unwrap();
    let state = AppState::new(
        store,
        Signer::new(b"webhook-test-secret-at-least-32-bytes!", &[]),
        Urls::new("https://news.example.org"),
        pages,
        None,
        "News <news@example.org>".into(),
    )
    .with_webhooks(Settings::new(bulletin::store::SoftRule {
        limit: 3,
        window_secs: 86_400,
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(web::serve(listener, state, async {
        let _ = stopped.await;
    }));
    for service in ["ses", "postmark", "mailgun", "sendgrid"] {
        let r = http(&addr, "POST", &format!("/webhooks/{service}"), &[], b"{}").await;
        assert_eq!(r.status, 404, "{service}");
    }
}

#[tokio::test]
async fn serve_refuses_a_webhook_whose_secret_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::support::pg::db_setting(dir.path()).await;
    std::fs::write(
        dir.path().join("bulletin.toml"),
        format!("db = \"{db}\"\noutbox = \"outbox\"\nlisten = \"127.0.0.1:0\"\n[webhooks.postmark]\nuser = \"postmark\"\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        bulletin_in(dir.path())
            .env("BULLETIN_SECRET", "webhook-test-secret-at-least-32-bytes!")
            .args(["--config", "bulletin.toml"])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    let out = run(&["serve"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[webhooks.postmark]")
            && err.contains("bulletin.toml")
            && err.contains("BULLETIN_POSTMARK_PASSWORD"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ses_subscription_confirmation_is_checked_before_anything_is_fetched() {
    let site = Site::new().await;
    let Some(key) = site.sns_key.clone() else {
        return;
    };
    // A confirmation whose SubscribeURL points off SNS: signed correctly,
    // yet nothing is fetched (400); forged: refused (401).
    let subscribe_url = "https://evil.example/?Action=ConfirmSubscription";
    let timestamp = "2026-11-30T08:00:00.000Z";
    let message = "You have chosen to subscribe to the topic.";
    let signed = format!(
        "Message\n{message}\nMessageId\nsub-1\nSubscribeURL\n{subscribe_url}\nTimestamp\n{timestamp}\nToken\ntok\nTopicArn\n{TOPIC}\nType\nSubscriptionConfirmation\n"
    );
    let body = |signature: String| {
        serde_json::json!({
            "Type": "SubscriptionConfirmation", "MessageId": "sub-1", "Token": "tok",
            "TopicArn": TOPIC, "Message": message, "SubscribeURL": subscribe_url,
            "Timestamp": timestamp, "SignatureVersion": "1", "Signature": signature,
            "SigningCertURL": CERT_URL,
        })
        .to_string()
    };
    let good = body(openssl_sign(&key, "-sha1", &signed));
    let r = site.post("/webhooks/ses", &[], good.as_bytes()).await;
    assert_status(&r, 400);
    let forged = body(openssl_sign(&key, "-sha1", "something else"));
    let r = site.post("/webhooks/ses", &[], forged.as_bytes()).await;
    assert_status(&r, 401);
}

//! DKIM: campaigns sent by the real binary, taken as a real SMTP server
//! received them (the in-process sink, aiosmtpd), verified by two
//! implementations other than the signer: the `viadkim` crate and Debian's
//! python3-dkim (dkimpy). The key record is handed to both without DNS.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::Command;

use viadkim::{HeaderFields, VerificationStatus};

use crate::dispatch::Env;
use crate::support::servers::{self, PYTHON};
use crate::support::smtp_sink::{Behaviour, SmtpSink};

const SELECTOR: &str = "s1";
const DOMAIN: &str = "alliance.example";
/// The headers every signature must cover.
const REQUIRED: [&str; 10] = [
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-id",
];

#[derive(Clone, Copy, Debug)]
pub(crate) enum Algorithm {
    Rsa,
    Ed25519,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }

    fn key_file(self) -> &'static str {
        match self {
            Algorithm::Rsa => "tests/data/dkim/rsa.pem",
            Algorithm::Ed25519 => "tests/data/dkim/ed25519.seed",
        }
    }

    /// The DNS TXT record, from the public key openssl derived (not from
    /// the signer).
    pub(crate) fn record(self) -> String {
        let public = match self {
            Algorithm::Rsa => "tests/data/dkim/rsa.pub",
            Algorithm::Ed25519 => "tests/data/dkim/ed25519.pub",
        };
        let p = std::fs::read_to_string(crate::util::root().join(public)).unwrap();
        format!("v=DKIM1; k={}; p={}", self.name(), p.trim())
    }
}

/// Adds a `[dkim]` section and the key to an `Env`.
pub(crate) fn with_dkim(env: &Env, algorithm: Algorithm) {
    let dir = env.dir.path();
    std::fs::copy(
        crate::util::root().join(algorithm.key_file()),
        dir.join("dkim.key"),
    )
    .unwrap();
    let mut config = std::fs::read_to_string(dir.join("bulletin.toml")).unwrap();
    config.push_str(&format!(
        "\n[dkim]\nselector = \"{SELECTOR}\"\ndomain = \"{DOMAIN}\"\nkey_file = \"dkim.key\"\nalgorithm = \"{}\"\n",
        algorithm.name()
    ));
    std::fs::write(dir.join("bulletin.toml"), config).unwrap();
}

/// A TXT lookup that knows one record.
#[derive(Clone)]
struct OneRecord(String);

impl viadkim::verifier::LookupTxt for OneRecord {
    type Answer = Vec<io::Result<Vec<u8>>>;
    type Query<'a> = Pin<Box<dyn Future<Output = io::Result<Self::Answer>> + Send + 'a>>;

    fn lookup_txt(&self, domain: &str) -> Self::Query<'_> {
        let found = domain.trim_end_matches('.') == format!("{SELECTOR}._domainkey.{DOMAIN}");
        let record = self.0.clone().into_bytes();
        Box::pin(async move {
            if found {
                Ok(vec![Ok(record)])
            } else {
                Err(io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN"))
            }
        })
    }
}

/// viadkim's verdict on the first signature: `Ok(h=)` or the failure.
async fn viadkim_verify(message: &[u8], record: &str) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(message).expect("utf-8 message");
    let (head, body) = text.split_once("\r\n\r\n").expect("header and body");
    let headers: HeaderFields = format!("{head}\r\n").parse().expect("header fields");
    let config = viadkim::Config::default();
    let results = viadkim::verify(
        &OneRecord(record.to_string()),
        &headers,
        body.as_bytes(),
        &config,
    )
    .await;
    let first = results.into_iter().next().ok_or("no DKIM-Signature")?;
    match first.status {
        VerificationStatus::Success => Ok(first
            .signature
            .expect("signature")
            .signed_headers
            .iter()
            .map(|h| h.as_ref().to_ascii_lowercase())
            .collect()),
        VerificationStatus::Failure(e) => Err(format!("{e:?}")),
    }
}

/// dkimpy's verdict, or `None` (with a notice) when python3-dkim is not
/// installed and BULLETIN_INTEROP is not 1.
fn dkimpy_verify(message: &[u8], record: &str) -> Option<bool> {
    let have = Command::new(PYTHON)
        .args(["-c", "import dkim"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            !servers::interop_required(),
            "BULLETIN_INTEROP=1 but {PYTHON} cannot import dkim; install it with `apt-get install python3-dkim`"
        );
        eprintln!("notice: skipping python3-dkim check: not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("message.eml");
    std::fs::write(&file, message).unwrap();
    let script = r#"
import sys, dkim
message = open(sys.argv[1], "rb").read()
name, record = sys.argv[2].encode(), sys.argv[3].encode()
def dnsfunc(domain, timeout=5):
    return record if domain.rstrip(b".") == name else None
sys.exit(0 if dkim.verify(message, dnsfunc=dnsfunc) else 1)
"#;
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .arg(format!("{SELECTOR}._domainkey.{DOMAIN}"))
        .arg(record)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.status.success())
}

/// Sends the campaign to one subscriber through the in-process sink with
/// the given key; the message as the sink received it.
async fn sent_through_sink(algorithm: Algorithm) -> Vec<u8> {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    with_dkim(&env, algorithm);
    env.subscribers(0, &["ana@example.net"]).await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    messages[0].data.clone()
}

async fn assert_verifies(message: &[u8], algorithm: Algorithm) {
    let record = algorithm.record();
    let text = String::from_utf8_lossy(message);
    assert!(
        text.starts_with(&format!(
            "DKIM-Signature: v=1; a={}-sha256;",
            algorithm.name()
        )),
        "{text}"
    );
    let signed = viadkim_verify(message, &record)
        .await
        .unwrap_or_else(|e| panic!("viadkim: {e}\n{text}"));
    for h in REQUIRED {
        assert!(signed.iter().any(|s| s == h), "{h} not in h={signed:?}");
    }
    if let Some(ok) = dkimpy_verify(message, &record) {
        assert!(ok, "python3-dkim refused the signature:\n{text}");
    }
}

/// Changes `from` to `to` once in `message`.
fn tamper(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in the message");
    text.replacen(from, to, 1).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_signature_verifies_as_received() {
    let message = sent_through_sink(Algorithm::Rsa).await;
    assert_verifies(&message, Algorithm::Rsa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_signature_verifies_as_received() {
    let message = sent_through_sink(Algorithm::Ed25519).await;
    assert_verifies(&message, Algorithm::Ed25519).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_verifies_as_aiosmtpd_received_it() {
    let Some(server) = servers::aiosmtpd() else {
        return;
    };
    let env = Env::new(server.port(), "");
    with_dkim(&env, Algorithm::Rsa);
    env.subscribers(0, &["bola@example.net"]).await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let messages = server.wait_for(1, std::time::Duration::from_secs(10));
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, ["bola@example.net"]);
    assert_verifies(&messages[0].data, Algorithm::Rsa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_body_or_header_fails_verification() {
    for algorithm in [Algorithm::Rsa, Algorithm::Ed25519] {
        let message = sent_through_sink(algorithm).await;
        let record = algorithm.record();
        assert!(viadkim_verify(&message, &record).await.is_ok());
        let changed = [
            tamper(&message, "from Here", "from There"),
            tamper(&message, "Subject: News for", "Subject: Olds for"),
            tamper(
                &message,
                "List-Unsubscribe-Post: ",
                "List-Unsubscribe-Post:  x",
            ),
        ];
        for bad in changed {
            let verdict = viadkim_verify(&bad, &record).await;
            assert!(verdict.is_err(), "{algorithm:?}: viadkim accepted a change");
            if let Some(ok) = dkimpy_verify(&bad, &record) {
                assert!(!ok, "{algorithm:?}: python3-dkim accepted a change");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_emails_are_signed_too() {
    use bulletin::dispatch::Mailer;
    use bulletin::dispatch::transport::{SmtpUrl, Transport};
    let sink = SmtpSink::start(Behaviour::new());
    let key =
        std::fs::read_to_string(crate::util::root().join(Algorithm::Ed25519.key_file())).unwrap();
    let signer = bulletin::dkim::DkimSigner::new(SELECTOR, DOMAIN, "ed25519", &key).unwrap();
    let transport = Transport::Smtp {
        url: SmtpUrl::parse(&format!("smtp://127.0.0.1:{}?tls=none", sink.port()), None).unwrap(),
        timeout: std::time::Duration::from_secs(10),
        hello: DOMAIN.into(),
    };
    Mailer::new(transport, DOMAIN)
        .with_dkim(Some(std::sync::Arc::new(signer)))
        .send_text(
            &format!("News <news@{DOMAIN}>"),
            "ana@example.net",
            "Please confirm",
            "Click the link.\n",
        )
        .await
        .unwrap();
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let record = Algorithm::Ed25519.record();
    viadkim_verify(&messages[0].data, &record)
        .await
        .unwrap_or_else(|e| panic!("viadkim: {e}"));
    if let Some(ok) = dkimpy_verify(&messages[0].data, &record) {
        assert!(ok, "python3-dkim refused the signature");
    }
}

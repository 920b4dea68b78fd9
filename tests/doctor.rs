//! `bulletin doctor`, the real binary against real servers on loopback (the
//! in-process sink, aiosmtpd, Postfix's smtp-sink, `bulletin serve`): the
//! lines it prints and its exit status (0 ok, 1 warnings, 2 failures).

use std::process::Output;
use std::time::Duration;

use crate::dispatch::Env;
use crate::dkim::{Algorithm, with_dkim};
use crate::support::output;
use crate::support::servers;
use crate::support::smtp_sink::{Behaviour, SmtpSink};
use crate::util::free_port;
use crate::web::Served;

/// Long enough for doctor (32 bytes).
const GOOD_SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A project with a database, a DKIM key and the given SMTP URL.
async fn project(smtp_url: String) -> Env {
    let mut env = Env::new(0, "");
    with_dkim(&env, Algorithm::Rsa);
    env.ok(&["lists", "add", "news", "--name", "News"]).await;
    env.smtp_url = smtp_url;
    env
}

async fn doctor(env: &Env, secret: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = env.command(&[&["doctor"], args].concat());
    cmd.env("BULLETIN_SECRET", secret);
    let out: Output = output(cmd).await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    (
        out.status.code(),
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// The line for `topic`, e.g. `("ok", "smtp")`; panics if absent.
fn line<'a>(out: &'a str, topic: &str) -> (&'a str, &'a str) {
    out.lines()
        .find_map(|l| {
            let (level, rest) = l.split_once("  ")?;
            let text = rest.trim_start().strip_prefix(&format!("{topic}: "))?;
            Some((level.trim(), text))
        })
        .unwrap_or_else(|| panic!("no {topic} line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_ok_against_the_sink_with_credentials() {
    let sink = SmtpSink::start(Behaviour::new().credentials("mailer", "pw"));
    let env = project(format!(
        "smtp://mailer:pw@127.0.0.1:{}?tls=none",
        sink.port()
    ))
    .await;
    let (code, out) = doctor(&env, GOOD_SECRET, &["--campaign", "campaigns/news-1.md"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(line(&out, "config").0, "ok");
    assert!(line(&out, "config").1.ends_with("(--config flag)"), "{out}");
    assert!(line(&out, "database").1.contains("(db in "), "{out}");
    assert_eq!(line(&out, "secret").0, "ok");
    assert_eq!(line(&out, "base_url").0, "ok");
    assert_eq!(line(&out, "smtp").0, "ok");
    assert!(
        line(&out, "smtp")
            .1
            .starts_with(&format!("127.0.0.1:{} answers", sink.port()))
    );
    assert_eq!(
        line(&out, "smtp auth"),
        ("ok", "credentials for mailer accepted")
    );
    let size = line(&out, "smtp size");
    assert_eq!(size.0, "ok");
    assert!(size.1.ends_with("the server takes up to 33554432"), "{out}");
    assert_eq!(line(&out, "smtp utf8").0, "ok");
    assert_eq!(line(&out, "smtp pipelining").0, "ok");
    // The exact record to publish, with the public key openssl derived.
    let record = format!(
        "      s1._domainkey.alliance.example TXT \"{}\"",
        Algorithm::Rsa.record()
    );
    assert!(out.lines().any(|l| l == record), "{out}");
    assert!(out.contains("verdict: ready to send"), "{out}");
    assert!(sink.messages().is_empty(), "doctor sent nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_sends_one_signed_message() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = project(format!("smtp://127.0.0.1:{}?tls=none", sink.port())).await;
    let (code, out) = doctor(&env, GOOD_SECRET, &["--send-test", "me@example.net"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(line(&out, "send test").0, "ok");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, ["me@example.net"]);
    assert!(
        messages[0]
            .data
            .starts_with(b"DKIM-Signature: v=1; a=rsa-sha256;")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_fails() {
    let env = project(format!("smtp://127.0.0.1:{}?tls=none", free_port())).await;
    let (code, out) = doctor(&env, GOOD_SECRET, &[]).await;
    assert_eq!(code, Some(2), "{out}");
    let smtp = line(&out, "smtp");
    assert_eq!(smtp.0, "FAIL");
    assert!(smtp.1.starts_with("cannot connect to 127.0.0.1:"), "{out}");
    assert!(out.contains("verdict: 1 failure(s)"), "{out}");
}

// See: issue 14. The database line names the engine; on PostgreSQL a
// "database server" line says whether the server answers and which schema
// step it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_line_names_the_engine_and_checks_the_postgresql_server() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = project(format!("smtp://127.0.0.1:{}?tls=none", sink.port())).await;
    let (code, out) = doctor(&env, GOOD_SECRET, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    let database = line(&out, "database");
    assert_eq!(database.0, "ok");
    if crate::support::pg::engine() == crate::support::pg::Engine::Sqlite {
        assert!(database.1.starts_with("SQLite "), "{out}");
        assert!(!out.contains("database server:"), "{out}");
        return;
    }
    assert!(database.1.starts_with("PostgreSQL postgres://"), "{out}");
    let server = line(&out, "database server");
    assert_eq!(server.0, "ok", "{out}");
    let latest = bulletin::store::schema::steps(bulletin::store::schema::POSTGRES_SQL)
        .unwrap()
        .len();
    assert!(server.1.starts_with("PostgreSQL "), "{out}");
    assert!(
        server
            .1
            .ends_with(&format!("answers; schema step {latest} of {latest}")),
        "{out}"
    );
    // A database with no bulletin schema: a warning that says what to run.
    let empty = crate::support::pg::fresh_database().await;
    let mut cmd = env.command(&["--db", &empty, "doctor"]);
    cmd.env("BULLETIN_SECRET", GOOD_SECRET);
    let out = output(cmd).await;
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let server = line(&out, "database server");
    assert_eq!(server.0, "warn", "{out}");
    assert!(server.1.contains("`bulletin init` creates it"), "{out}");
}

// See: issue 14. A PostgreSQL server that cannot be reached (nothing on
// port 1 of loopback) is a failure naming the setting; no server needed, so
// this runs on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgresql_server_fails_naming_the_setting() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = project(format!("smtp://127.0.0.1:{}?tls=none", sink.port())).await;
    let mut cmd = env.command(&["doctor"]);
    cmd.env("BULLETIN_SECRET", GOOD_SECRET)
        .env("BULLETIN_DB", "postgres://bulletin:sekrit@127.0.0.1:1/news");
    let out = output(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert_eq!(
        line(&text, "database"),
        (
            "ok",
            "PostgreSQL postgres://bulletin:***@127.0.0.1:1/news (BULLETIN_DB)"
        )
    );
    let server = line(&text, "database server");
    assert_eq!(server.0, "FAIL", "{text}");
    assert!(
        server
            .1
            .starts_with("the database server cannot be reached: ")
            && server
                .1
                .ends_with("; start it, or fix the host and port (BULLETIN_DB)"),
        "{text}"
    );
    assert!(!text.contains("sekrit"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_starttls_with_a_user_fails_against_aiosmtpd() {
    let Some(server) = servers::aiosmtpd() else {
        return;
    };
    let env = project(format!("smtp://mailer@127.0.0.1:{}", server.port())).await;
    let (code, out) = doctor(&env, GOOD_SECRET, &[]).await;
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(line(&out, "smtp").0, "ok");
    let tls = line(&out, "smtp tls");
    assert_eq!(tls.0, "FAIL");
    assert!(
        tls.1.contains("does not offer STARTTLS") && tls.1.contains("in clear"),
        "{out}"
    );
    assert!(out.contains("smtp auth: not tried"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_over_the_size_limit_fails_against_aiosmtpd() {
    let Some(server) = servers::aiosmtpd_with(&["-s", "2000"]) else {
        return;
    };
    let env = project(format!("smtp://127.0.0.1:{}?tls=none", server.port())).await;
    let (code, out) = doctor(&env, GOOD_SECRET, &["--campaign", "campaigns/news-1.md"]).await;
    assert_eq!(code, Some(2), "{out}");
    let size = line(&out, "smtp size");
    assert_eq!(size.0, "FAIL");
    assert!(size.1.ends_with("the server takes at most 2000"), "{out}");
    // aiosmtpd offers no PIPELINING: a warning, not a failure.
    assert_eq!(line(&out, "smtp pipelining").0, "warn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_smtp_sink_answers() {
    let Some(server) = servers::postfix_smtp_sink() else {
        return;
    };
    let env = project(format!("smtp://127.0.0.1:{}?tls=none", server.port())).await;
    let (code, out) = doctor(&env, GOOD_SECRET, &[]).await;
    assert_eq!(line(&out, "smtp").0, "ok", "{out}");
    assert_eq!(line(&out, "smtp advertises").0, "ok");
    assert_eq!(line(&out, "smtp pipelining").0, "ok", "{out}");
    assert_ne!(code, Some(2), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dkim_key_and_short_secret_fail() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = project(format!("smtp://127.0.0.1:{}?tls=none", sink.port())).await;
    std::fs::write(env.dir.path().join("dkim.key"), "not a key\n").unwrap();
    let (code, out) = doctor(&env, "too-short", &[]).await;
    assert_eq!(code, Some(2), "{out}");
    let dkim = line(&out, "dkim");
    assert_eq!(dkim.0, "FAIL");
    assert!(
        dkim.1.contains("dkim.key") && dkim.1.contains("PKCS#1"),
        "names the file and what it should hold: {out}"
    );
    let secret = line(&out, "secret");
    assert_eq!(secret.0, "FAIL");
    assert!(secret.1.contains("9 bytes; use at least 32"), "{out}");
    assert_eq!(line(&out, "smtp").0, "ok");
    assert!(out.contains("verdict: 2 failure(s)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_check_reaches_serve_healthz() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = project(format!("smtp://127.0.0.1:{}?tls=none", sink.port())).await;
    let served = Served::start(&env).await;
    let base_url = format!("http://{}", served.addr);
    let mut cmd = env.command(&["doctor", "--web"]);
    cmd.env("BULLETIN_SECRET", GOOD_SECRET)
        .env("BULLETIN_BASE_URL", &base_url);
    let out = output(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        line(&text, "web"),
        ("ok", format!("{base_url}/healthz answers 200").as_str())
    );
    // A loopback base_url is for testing: a warning, so exit 1.
    assert_eq!(line(&text, "base_url").0, "warn");
    assert_eq!(out.status.code(), Some(1), "{text}");
    drop(served);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut cmd = env.command(&["doctor", "--web"]);
    cmd.env("BULLETIN_SECRET", GOOD_SECRET)
        .env("BULLETIN_BASE_URL", &base_url);
    let out = output(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(line(&text, "web").0, "FAIL", "{text}");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_an_untrusted_certificate_fails_against_aiosmtpd() {
    let tls = crate::util::root().join("tests/data/tls");
    let cert = tls.join("self-signed.crt");
    let key = tls.join("self-signed.key");
    let Some(server) = servers::aiosmtpd_with(&[
        "--tlscert",
        cert.to_str().unwrap(),
        "--tlskey",
        key.to_str().unwrap(),
    ]) else {
        return;
    };
    let env = project(format!("smtp://mailer@127.0.0.1:{}", server.port())).await;
    let (code, out) = doctor(&env, GOOD_SECRET, &[]).await;
    assert_eq!(code, Some(2), "{out}");
    let tls = line(&out, "smtp tls");
    assert_eq!(tls.0, "FAIL");
    assert!(
        tls.1
            .starts_with("STARTTLS offered, but the TLS handshake failed")
            && tls.1.contains("certificate"),
        "{out}"
    );
    assert!(!out.contains("smtp auth: credentials"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_clock_fails() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = project(format!("smtp://127.0.0.1:{}?tls=none", sink.port())).await;
    let mut cmd = env.command(&["doctor"]);
    cmd.env("BULLETIN_SECRET", "x".repeat(32))
        .env("BULLETIN_NOW", "1800000000");
    let out: Output = output(cmd).await;
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let clock = line(&out, "clock");
    assert_eq!(clock.0, "FAIL", "{out}");
    assert!(clock.1.contains("BULLETIN_NOW=1800000000"), "{out}");
    let (_, unset) = doctor(&env, &"x".repeat(32), &[]).await;
    assert!(
        !unset.contains("clock:"),
        "no clock line without BULLETIN_NOW: {unset}"
    );
}

//! SMTP servers for the tests (and, through `#[path]`, the examples), the
//! engine under test, the binary as a test project runs it, plus the lettre
//! plumbing every SMTP test needs.

#![allow(dead_code)]

pub mod db; // an independent sqlx pool on a test's database file: raw rows, arranged or inspected
pub mod pg; // the engine under test: BULLETIN_TEST_POSTGRES, a fresh PostgreSQL database per test, the `db` setting
pub mod returned; // returned mail: RFC 3464 reports for a message the sink received
pub mod scripted; // a server whose answer per phase is scripted: hangs, late answers, closes
pub mod servers; // Postfix smtp-sink and aiosmtpd as child processes, gated by BULLETIN_INTEROP
pub mod smtp_sink; // the scriptable in-process sink

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, Message, Tokio1Executor};

/// The `bulletin` binary, to run in `dir`, with none of the `BULLETIN_*`
/// variables of the test's own environment.
pub fn bulletin_in(dir: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("bulletin"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BULLETIN_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir);
    cmd
}

/// [`bulletin_in`] a test project's folder as its cron job runs it: the
/// project's `bulletin.toml`, `secret` and `smtp_url` in the environment,
/// then `args`.
pub fn project_command(dir: &Path, secret: &str, smtp_url: &str, args: &[&str]) -> Command {
    let mut cmd = bulletin_in(dir);
    cmd.env("BULLETIN_SECRET", secret)
        .env("BULLETIN_SMTP_URL", smtp_url)
        .args(["--config", "bulletin.toml"])
        .args(args);
    cmd
}

/// Runs `cmd` to the end, off the async threads.
pub async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The standard output of the binary run with `args`, which must have
/// succeeded (else both outputs are shown).
pub fn stdout_of_success(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "bulletin {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A plain-text lettre transport to `127.0.0.1:port`, one connection per
/// message (the `pool` feature is off), no TLS.
pub fn transport(port: u16) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(30)))
        .build()
}

/// A text message from `from` to `to` with `body`.
pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Message {
    Message::builder()
        .from(from.parse().unwrap())
        .to(to.parse().unwrap())
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body.to_string())
        .unwrap()
}

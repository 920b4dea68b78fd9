//! How the dispatcher reacts to SMTP faults, through the real binary
//! against scripted servers on loopback (`support::scripted`): only the
//! recipient's fault is a bounce; an answer lost after the final dot is
//! `unknown` and not resent; connection-level failures charge nobody and
//! keep the campaign queued; SIGTERM ends a run against a hung server.
//! Also `bulletin subscribers reactivate`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::dispatch::Env;
use crate::support::output;
use crate::support::scripted::{CLOSE, Dot, SILENT, Script, Scripted};
use crate::support::smtp_sink::{Behaviour, SmtpSink};

/// An `Env` sending to `server`, with `[smtp] timeout_secs` set.
fn env(port: u16, timeout_secs: u64, dispatch: &str) -> Env {
    let env = Env::new(port, dispatch);
    let path = env.dir.path().join("bulletin.toml");
    let config = std::fs::read_to_string(&path).unwrap().replace(
        "timeout_secs = 10",
        &format!("timeout_secs = {timeout_secs}"),
    );
    std::fs::write(path, config).unwrap();
    env
}

/// Per address: (delivery status, attempts), from the database.
async fn deliveries(env: &Env) -> BTreeMap<String, (String, i64)> {
    let store = env.store().await;
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT s.email, d.status, d.attempts FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id",
    )
    .fetch_all(&crate::support::db::raw(store.location()).await)
    .await
    .unwrap();
    rows.into_iter().map(|(e, s, a)| (e, (s, a))).collect()
}

/// Per address: the subscriber's status.
async fn people(env: &Env) -> BTreeMap<String, String> {
    let store = env.store().await;
    sqlx::query_as("SELECT email, status FROM subscribers WHERE email IS NOT NULL")
        .fetch_all(&crate::support::db::raw(store.location()).await)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn campaign_status(env: &Env) -> String {
    let out = env.ok(&["status", "--format", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    v["status"].as_str().unwrap().to_string()
}

/// Every delivery in `state` with `attempts`.
fn assert_all(d: &BTreeMap<String, (String, i64)>, n: usize, state: &str, attempts: i64) {
    assert_eq!(d.len(), n, "{d:?}");
    for (email, (s, a)) in d {
        assert_eq!((s.as_str(), *a), (state, attempts), "{email}: {d:?}");
    }
}

/// Nobody was read in full by the server more than `max` times.
fn assert_at_most(server: &Scripted, all: &[String], max: usize) {
    for a in all {
        assert!(
            server.received_by(a) <= max,
            "{a} received {}",
            server.received_by(a)
        );
    }
}

fn assert_nobody_bounced(p: &BTreeMap<String, String>) {
    assert!(p.values().all(|s| s == "active"), "{p:?}");
}

/// `send` of news-1 that exits 1 (not every message went): each of the `n`
/// deliveries is `state` after one attempt, and nobody is bounced. Returns
/// what the send printed.
async fn assert_send_fails_once(env: &Env, n: usize, state: &str) -> std::process::Output {
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_all(&deliveries(env).await, n, state, 1);
    assert_nobody_bounced(&people(env).await);
    out
}

/// The server read each of `all` in full exactly once.
fn assert_each_received_once(server: &Scripted, all: &[String]) {
    for a in all {
        assert_eq!(server.received_by(a), 1, "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_dot_never_answered_is_unknown_and_never_resent() {
    let server = Scripted::start(Script::new().dot(Dot::Never));
    let env = env(server.port(), 3, "");
    let all = env.subscribers(3, &[]).await;
    let out = assert_send_fails_once(&env, 3, "unknown").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unknown 3"), "{stdout}");
    assert_each_received_once(&server, &all);
    // Not resent by a later run.
    let out = env.run(&["dispatch"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_at_most(&server, &all, 1);
    assert_eq!(campaign_status(&env).await, "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_to_the_dot_then_close_is_unknown_once() {
    let late = Dot::Late(Duration::from_secs(6), "250 2.0.0 queued".into());
    let server = Scripted::start(Script::new().dot(late));
    let env = env(server.port(), 3, "");
    let all = env.subscribers(6, &[]).await;
    assert_send_fails_once(&env, 6, "unknown").await;
    assert_each_received_once(&server, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_taken_without_an_answer_is_unknown_once() {
    let server = Scripted::start(Script::new().dot(Dot::Close));
    let env = env(server.port(), 5, "max_attempts = 6");
    let all = env.subscribers(8, &[]).await;
    assert_send_fails_once(&env, 8, "unknown").await;
    assert_each_received_once(&server, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resend_policy_resends_unanswered_messages_up_to_max_attempts() {
    let server = Scripted::start(Script::new().dot(Dot::Close));
    let policy = "in_flight = \"resend\"\nmax_attempts = 2";
    let env = env(server.port(), 5, policy);
    let all = env.subscribers(3, &[]).await;
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_all(&deliveries(&env).await, 3, "unknown", 2);
    for a in &all {
        assert_eq!(server.received_by(a), 2, "resent once: {a}");
    }
}

/// A server that fails at connection level: the run stops with one line,
/// every delivery is still queued with no attempt charged, the campaign is
/// not finished, and a later dispatch against a working server sends each
/// message once.
async fn assert_stops_and_resumes(env: Env, n: usize, expect: &str) {
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains(expect), "{stderr}");
    assert!(stderr.contains("stays queued"), "{stderr}");
    assert_all(&deliveries(&env).await, n, "queued", 0);
    assert_nobody_bounced(&people(&env).await);
    assert_eq!(campaign_status(&env).await, "sending");

    let sink = SmtpSink::start(Behaviour::new());
    let env = Env {
        smtp_url: format!("smtp://127.0.0.1:{}?tls=none", sink.port()),
        ..env
    };
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains(&format!("sent {n} (finished)")), "{out}");
    let mut got: Vec<String> = sink
        .messages()
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), n, "each once");
    assert_eq!(sink.messages().len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_greeting_stops_the_run_without_charging_anyone() {
    let server = Scripted::start(Script::new().greeting("421 4.3.2 service not available"));
    let env = env(server.port(), 5, "");
    env.subscribers(10, &[]).await;
    assert_stops_and_resumes(env, 10, "421").await;
    assert!(server.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_530_at_mail_stops_the_run_and_the_campaign_stays_queued() {
    let server = Scripted::start(Script::new().mail("530 5.7.0 authentication required"));
    let env = env(server.port(), 5, "");
    env.subscribers(500, &[]).await;
    assert_stops_and_resumes(env, 500, "530 5.7.0 authentication required").await;
    assert!(server.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_stops_the_run_without_charging_anyone() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let env = env(port, 5, "");
    env.subscribers(5, &[]).await;
    assert_stops_and_resumes(env, 5, "cannot connect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_authentication_stops_the_run_without_charging_anyone() {
    let sink = SmtpSink::start(Behaviour::new().credentials("mailer", "s3cret"));
    let mut env = env(sink.port(), 5, "");
    env.subscribers(5, &[]).await;
    env.smtp_url = format!("smtp://mailer@127.0.0.1:{}?tls=none", sink.port());
    let mut cmd = env.command(&["send", "campaigns/news-1.md", "--yes"]);
    cmd.env("BULLETIN_SMTP_PASSWORD", "wrong");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert_all(&deliveries(&env).await, 5, "queued", 0);
    assert_nobody_bounced(&people(&env).await);
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_silent_at_mail_stops_the_run_without_charging_anyone() {
    let server = Scripted::start(Script::new().mail(SILENT));
    let env = env(server.port(), 3, "");
    env.subscribers(5, &[]).await;
    assert_stops_and_resumes(env, 5, "the server stopped answering").await;
    assert!(server.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_at_mail_stops_the_run_without_charging_anyone() {
    let server = Scripted::start(Script::new().mail(CLOSE));
    let env = env(server.port(), 3, "");
    env.subscribers(5, &[]).await;
    assert_stops_and_resumes(env, 5, "closed a new connection").await;
    assert!(server.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_554_at_mail_fails_the_deliveries_without_bouncing_anyone() {
    let server = Scripted::start(Script::new().mail("554 5.7.1 sender address rejected"));
    let env = env(server.port(), 5, "");
    env.subscribers(5, &[]).await;
    assert_send_fails_once(&env, 5, "failed").await;
    assert!(server.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_at_rcpt_is_a_hard_bounce_and_can_be_reactivated() {
    let server = Scripted::start(
        Script::new()
            .rcpt("gone", "550 5.1.1 user unknown")
            .rcpt("left", "550 5.1.1 user unknown"),
    );
    let env = env(server.port(), 5, "");
    let all = env
        .subscribers(5, &["gone@example.net", "left@example.net"])
        .await;
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let d = deliveries(&env).await;
    assert_eq!(d["gone@example.net"], ("failed".into(), 1));
    assert_eq!(d.values().filter(|(s, _)| s == "sent").count(), 5, "{d:?}");
    let p = people(&env).await;
    assert_eq!(p["gone@example.net"], "bounced");
    assert_eq!(p.values().filter(|s| *s == "active").count(), 5);
    assert_eq!(server.received_by("gone@example.net"), 0);
    assert_at_most(&server, &all, 1);

    // The address works again: the operator returns it to active.
    let out = env
        .ok(&["subscribers", "reactivate", "gone@example.net"])
        .await;
    assert!(out.starts_with("reactivated gone@example.net"), "{out}");
    assert!(
        out.contains("the next campaign to news includes them"),
        "{out}"
    );
    assert_eq!(people(&env).await["gone@example.net"], "active");
    // Someone on no list any more is told so, not promised the next campaign.
    env.ok(&[
        "subscribers",
        "remove",
        "left@example.net",
        "--list",
        "news",
    ])
    .await;
    let out = env
        .ok(&["subscribers", "reactivate", "left@example.net"])
        .await;
    assert!(out.contains("confirmed on no list"), "{out}");
    assert!(!out.contains("next campaign"), "{out}");
    let show = env.ok(&["subscribers", "show", "gone@example.net"]).await;
    assert!(show.contains("reactivated via cli: was bounced"), "{show}");
    let again = env
        .ok(&["subscribers", "reactivate", "gone@example.net"])
        .await;
    assert!(again.contains("already active"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_big_at_data_fails_without_bouncing() {
    let too_big = Dot::Reply("552 5.3.4 message size exceeds fixed limit".into());
    let server = Scripted::start(Script::new().dot(too_big));
    let env = env(server.port(), 5, "");
    let all = env.subscribers(3, &[]).await;
    assert_send_fails_once(&env, 3, "failed").await;
    // Read once each, refused, never tried again.
    assert_each_received_once(&server, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_errors_fail_without_bouncing() {
    let server = Scripted::start(Script::new().rcpt("", "500 5.5.2 syntax error"));
    let env = env(server.port(), 5, "");
    env.subscribers(4, &[]).await;
    assert_send_fails_once(&env, 4, "failed").await;
    assert!(server.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_alike_refusals_in_a_row_stop_the_run_and_keep_everyone_queued() {
    let spam = Dot::Reply("554 5.7.1 message rejected as spam".into());
    let server = Scripted::start(Script::new().dot(spam));
    let env = env(server.port(), 5, "");
    let all = env.subscribers(30, &[]).await;
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("20 recipients in a row refused") && stderr.contains("554 5.7.1"),
        "{stderr}"
    );
    assert_all(&deliveries(&env).await, 30, "queued", 0);
    assert_nobody_bounced(&people(&env).await);
    assert_eq!(campaign_status(&env).await, "sending");
    assert_at_most(&server, &all, 1);
    assert!(server.received().len() >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_rejects_our_sender_at_rcpt_bounces_nobody() {
    // Postfix with delayed reject says it at RCPT, with a 5.1.x code.
    let sender = "550 5.1.0 <bounces@alliance.example>: Sender address rejected: User unknown";
    let server = Scripted::start(Script::new().rcpt("", sender));
    let env = env(server.port(), 5, "");
    env.subscribers(30, &[]).await;
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("20 recipients in a row refused") && stderr.contains("Sender address"),
        "{stderr}"
    );
    assert_all(&deliveries(&env).await, 30, "queued", 0);
    assert_nobody_bounced(&people(&env).await);
    assert_eq!(campaign_status(&env).await, "sending");
    assert!(server.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_run_against_a_hung_server_within_seconds() {
    let server = Scripted::start(Script::new().dot(Dot::Never));
    // No timeout would end this run soon: only the signal can.
    let env = env(server.port(), 300, "");
    let all = env.subscribers(10, &[]).await;
    let child = env
        .command(&["send", "campaigns/news-1.md", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Four connections, each hung after its first message.
    assert_eq!(server.wait_received(4, Duration::from_secs(60)).await, 4);
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let signalled = Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let took = signalled.elapsed();
    // A liveness bound, generous on a shared machine.
    assert!(
        took < Duration::from_secs(20),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("interrupted"),
        "{out:?}"
    );
    let d = deliveries(&env).await;
    let state = |s: &str| d.values().filter(|(x, _)| x == s).count();
    assert_eq!((state("unknown"), state("queued")), (4, 6), "{d:?}");
    for (email, (s, _)) in &d {
        let want = if s == "unknown" { 1 } else { 0 };
        assert_eq!(server.received_by(email), want, "{email}: {d:?}");
    }
    assert_nobody_bounced(&people(&env).await);
    assert_at_most(&server, &all, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_quit_does_not_hold_up_the_run() {
    let server = Scripted::start(Script::new().quit(SILENT));
    // A long timeout: only the short bound on QUIT lets the run end soon.
    let env = env(server.port(), 300, "");
    let all = env.subscribers(6, &[]).await;
    let started = Instant::now();
    let out = env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let took = started.elapsed();
    assert!(out.contains("sent 6 (finished)"), "{out}");
    // A liveness bound, generous on a shared machine.
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_all(&deliveries(&env).await, 6, "sent", 1);
    assert_each_received_once(&server, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactivate_never_overrides_an_unsubscribe_a_complaint_or_an_erasure() {
    let env = env(1, 5, "");
    env.subscribers(
        0,
        &[
            "left@example.net",
            "angry@example.net",
            "gone@example.net",
            "fine@example.net",
        ],
    )
    .await;
    env.ok(&["subscribers", "remove", "left@example.net"]).await;
    env.ok(&["subscribers", "forget", "gone@example.net"]).await;
    {
        let store = env.store().await;
        let angry = store
            .subscriber("angry@example.net")
            .await
            .unwrap()
            .unwrap();
        store
            .set_status(angry.id, "complained", "bounce", Some("abuse report"), 1)
            .await
            .unwrap();
        let fine = store.subscriber("fine@example.net").await.unwrap().unwrap();
        store
            .set_status(fine.id, "bounced", "bounce", Some("550 no such user"), 1)
            .await
            .unwrap();
        assert!(store.is_suppressed("fine@example.net").await.unwrap());
    }
    for (email, why) in [
        ("left@example.net", "unsubscribed"),
        ("angry@example.net", "complained"),
        ("gone@example.net", "erased"),
    ] {
        let out = env.run(&["subscribers", "reactivate", email]).await;
        assert_eq!(out.status.code(), Some(2), "{email}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(why) && stderr.contains("not reactivated"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let p = people(&env).await;
    assert_eq!(p["left@example.net"], "unsubscribed");
    assert_eq!(p["angry@example.net"], "complained");
    // A bounce recorded from returned mail: active again, no longer suppressed.
    env.ok(&["subscribers", "reactivate", "fine@example.net"])
        .await;
    let store = env.store().await;
    assert!(!store.is_suppressed("fine@example.net").await.unwrap());
    assert_eq!(people(&env).await["fine@example.net"], "active");
    let out = env
        .run(&["subscribers", "reactivate", "nobody@example.net"])
        .await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_dispatch_before_the_next_campaign() {
    let server = Scripted::start(Script::new().dot(Dot::Never));
    let env = env(server.port(), 300, "");
    env.subscribers(6, &[]).await;
    let campaigns = env.dir.path().join("campaigns");
    std::fs::copy(campaigns.join("news-1.md"), campaigns.join("news-2.md")).unwrap();
    // Far enough ahead that both are still scheduled on a loaded machine.
    let due = chrono::Utc::now() + chrono::Duration::seconds(10);
    for c in ["campaigns/news-1.md", "campaigns/news-2.md"] {
        let out = env
            .ok(&["send", c, "--yes", "--at", &due.to_rfc3339()])
            .await;
        assert!(out.contains("scheduled"), "{out}");
    }
    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(1100)).await;
    let child = env
        .command(&["dispatch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(server.wait_received(4, Duration::from_secs(60)).await, 4);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let signalled = Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(
        !stdout.contains("news-2"),
        "the next campaign never started: {stdout}"
    );
    assert_eq!(server.received().len(), 4);
    let status = env.ok(&["status", "news-2", "--format", "json"]).await;
    assert!(status.contains("\"status\":\"scheduled\""), "{status}");
}

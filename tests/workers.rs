//! Several `bulletin dispatch` processes sharing one campaign on PostgreSQL
//! (issue 14 item 3), against the in-process SMTP sink: each recipient
//! exactly once, a worker killed with SIGKILL mid-run settled by the
//! in-flight policy, and `[smtp] rate` held across workers. PostgreSQL
//! only: SQLite keeps one run per campaign (the lease, `dispatch.rs`), so
//! these tests print a notice and pass without `BULLETIN_TEST_POSTGRES`.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::AnyPool;

use crate::support::pg::{self, Engine};
use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};
use crate::support::{output, project_command, stdout_of_success};

const SECRET: &str = "test-secret-for-workers-32-bytes-at-least";

/// The lease (and heartbeat window) the tests run with: short, so a dead
/// worker is noticed within seconds.
const LEASE_SECS: u64 = 5;

/// True (after a notice) when the PostgreSQL half was not asked for.
fn skipped(test: &str) -> bool {
    if pg::engine() == Engine::Sqlite {
        eprintln!(
            "workers::{test}: skipped, several workers share a campaign on PostgreSQL only; set {} (`.ci/postgres` starts a server)",
            pg::VARIABLE
        );
        return true;
    }
    false
}

/// A project on a fresh PostgreSQL database with list `news`.
struct Env {
    dir: tempfile::TempDir,
    db: String,
    smtp_url: String,
}

impl Env {
    /// `smtp`: extra `[smtp]` keys; `dispatch`: extra `[dispatch]` keys.
    async fn new(port: u16, smtp: &str, dispatch: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = pg::db_setting(dir.path()).await;
        std::fs::write(
            dir.path().join("bulletin.toml"),
            format!(
                "db = {db:?}\nbase_url = \"https://news.example.org\"\n\
                 [organisation]\nname = \"Test Alliance\"\naddress = \"1 Road, Town\"\n\
                 [sender]\nfrom = \"Test Alliance <news@alliance.example>\"\nbounce_domain = \"alliance.example\"\n\
                 [smtp]\nconnections = 4\ntimeout_secs = 10\n{smtp}\n\
                 [dispatch]\nlease_secs = {LEASE_SECS}\nretry_base_secs = 1\nretry_wait_secs = 5\n{dispatch}\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("campaigns")).unwrap();
        std::fs::write(
            dir.path().join("campaigns/news-1.md"),
            "+++\nsubject = \"News\"\npreheader = \"p\"\nlist = \"news\"\n+++\n# Section\n\nHello {{subscriber.name}}.\n",
        )
        .unwrap();
        let env = Env {
            dir,
            db,
            smtp_url: format!("smtp://127.0.0.1:{port}?tls=none"),
        };
        env.ok(&["lists", "add", "news", "--name", "News"]).await;
        env
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = project_command(self.dir.path(), SECRET, &self.smtp_url, args);
        cmd.stdin(Stdio::null());
        cmd
    }

    async fn ok(&self, args: &[&str]) -> String {
        stdout_of_success(output(self.command(args)).await, args)
    }

    async fn raw(&self) -> AnyPool {
        crate::support::db::raw(
            bulletin::store::Location::parse(std::path::Path::new(&self.db), None).unwrap(),
        )
        .await
    }

    /// `n` confirmed subscribers of `news`, `person{i}@example.net`, in
    /// one statement (the import is not what is under test).
    async fn subscribers(&self, n: i64) {
        let raw = self.raw().await;
        sqlx::query(
            "WITH people AS (
                 INSERT INTO subscribers (email, email_hash, name, created_at, updated_at)
                 SELECT 'person' || i || '@example.net',
                        encode(sha256(convert_to('person' || i || '@example.net', 'UTF8')), 'hex'),
                        'Person ' || i, 1, 1
                 FROM generate_series(0, $1 - 1) i
                 RETURNING id)
             INSERT INTO subscriptions (subscriber_id, list_id, status, source, created_at, updated_at)
             SELECT id, (SELECT id FROM lists WHERE slug = 'news'), 'confirmed', 'test', 1, 1 FROM people",
        )
        .bind(n)
        .execute(&raw)
        .await
        .unwrap();
        raw.close().await;
    }

    /// Freezes `news-1` due in two seconds and waits until it is due, so
    /// that the dispatchers started next all find it at once.
    async fn freeze_due_soon(&self) {
        let at = chrono::Utc::now() + chrono::Duration::seconds(2);
        self.ok(&[
            "send",
            "campaigns/news-1.md",
            "--yes",
            "--at",
            &at.to_rfc3339(),
        ])
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }

    fn spawn_dispatch(&self) -> Child {
        self.command(&["dispatch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Delivery counts by status.
    async fn counts(&self) -> BTreeMap<String, i64> {
        let raw = self.raw().await;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
                .fetch_all(&raw)
                .await
                .unwrap();
        raw.close().await;
        rows.into_iter().collect()
    }

    /// The addresses of the rows in `status`.
    async fn addresses(&self, status: &str) -> Vec<String> {
        let raw = self.raw().await;
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
             WHERE d.status = $1",
        )
        .bind(status)
        .fetch_all(&raw)
        .await
        .unwrap();
        raw.close().await;
        rows
    }

    async fn campaign_status(&self) -> String {
        let raw = self.raw().await;
        let status: String = sqlx::query_scalar("SELECT status FROM campaigns")
            .fetch_one(&raw)
            .await
            .unwrap();
        raw.close().await;
        status
    }
}

/// How many times each address was received.
fn received_counts(messages: &[Received]) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in messages.iter().flat_map(|m| m.rcpt_to.clone()) {
        *seen.entry(r).or_default() += 1;
    }
    seen
}

fn assert_nobody_twice(seen: &HashMap<String, usize>) {
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "mailed more than once: {twice:?}");
}

/// How many messages a `dispatch` says it sent ("news-1: sent N (…)").
fn sent_by(out: &std::process::Output) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_once(": sent ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits for a child to end; returns its exit status and output.
async fn finish(child: Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// `news-1` due now to `n` subscribers, and a sink that answers each
/// message after 20 ms, so that every connection has a message in flight
/// most of the time.
async fn due_behind_a_slow_sink(n: i64) -> (SmtpSink, Env) {
    let slow = Behaviour::new().delay_data_reply("", Duration::from_millis(20));
    due(n, slow, "").await
}

/// A sink that keeps no message bodies (`behaviour`'s other answers), and
/// a campaign to `n` people due now, with `smtp` as extra `[smtp]` keys.
async fn due(n: i64, behaviour: Behaviour, smtp: &str) -> (SmtpSink, Env) {
    let sink = SmtpSink::start(behaviour.discard_data());
    let env = Env::new(sink.port(), smtp, "").await;
    env.subscribers(n).await;
    env.freeze_due_soon().await;
    (sink, env)
}

/// After a worker was lost mid-run: waits until its heartbeat is stale,
/// runs `dispatch` (which settles the lost worker's rows in flight by the
/// default policy, unknown, and sends the rest), then checks the campaign
/// of `total` recipients: finished, every row sent or unknown, `unknown`
/// within `in_flight` (`why`), nobody received twice, everyone sent
/// received, and nobody missing but the unknown.
async fn finish_after_a_lost_worker(
    env: &Env,
    sink: &SmtpSink,
    total: i64,
    in_flight: std::ops::RangeInclusive<i64>,
    why: &str,
) {
    tokio::time::sleep(Duration::from_secs(LEASE_SECS + 2)).await;
    env.ok(&["dispatch"]).await;
    let counts = env.counts().await;
    let sent = counts.get("sent").copied().unwrap_or(0);
    let unknown = counts.get("unknown").copied().unwrap_or(0);
    assert_eq!(
        sent + unknown,
        total,
        "nothing else open or lost: {counts:?}"
    );
    assert!(in_flight.contains(&unknown), "{why}: {counts:?}");
    let seen = received_counts(&sink.messages());
    assert_nobody_twice(&seen);
    for address in env.addresses("sent").await {
        assert_eq!(
            seen.get(&address),
            Some(&1),
            "{address} is sent but was not received"
        );
    }
    let missing = total - seen.len() as i64;
    assert!(
        missing <= unknown,
        "{missing} recipients never received, beyond the {unknown} in flight"
    );
    assert_eq!(env.campaign_status().await, "sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn four_workers_share_a_campaign_and_mail_each_recipient_exactly_once() {
    if skipped("four_workers_share_a_campaign_and_mail_each_recipient_exactly_once") {
        return;
    }
    let (sink, env) = due(5000, Behaviour::new(), "").await;
    let workers: Vec<Child> = (0..4).map(|_| env.spawn_dispatch()).collect();
    let mut outputs = Vec::new();
    for w in workers {
        outputs.push(finish(w).await);
    }
    for out in &outputs {
        assert!(
            out.status.success(),
            "a worker failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let seen = received_counts(&sink.messages());
    assert_nobody_twice(&seen);
    assert_eq!(seen.len(), 5000, "every recipient once");
    assert_eq!(env.counts().await, BTreeMap::from([("sent".into(), 5000)]));
    assert_eq!(env.campaign_status().await, "sent", "finished once");
    // The work was shared: more than one worker sent messages.
    // Each end line is true of the campaign: finished (by whichever worker),
    // or left to workers still holding rows; never "retries pending", as
    // nothing was deferred (a worker reading the rows while another
    // finished its last ones said so).
    let mut finished = 0;
    for out in &outputs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("cancelled"), "a worker gave up: {stdout}");
        assert!(!stdout.contains("retries pending"), "no retries: {stdout}");
        let Some(line) = stdout.lines().find(|l| l.starts_with("news-1: ")) else {
            // Quiet for cron: it sent nothing and left the rest to others.
            assert_eq!(sent_by(out), 0, "{stdout}");
            continue;
        };
        assert!(
            line.ends_with("(finished)") || line.ends_with("(other workers are sending the rest)"),
            "{line}"
        );
        finished += usize::from(line.ends_with("(finished)"));
    }
    assert!(finished >= 1, "the last worker says finished");
    let senders = outputs.iter().filter(|o| sent_by(o) > 0).count();
    let total: u64 = outputs.iter().map(sent_by).sum();
    assert_eq!(total, 5000, "the workers' own counts add up");
    assert!(senders > 1, "only {senders} of 4 workers sent anything");
    sink.shutdown().await;
}

/// A worker starting a campaign while another holds the write lock for
/// longer than the busy timeout (another worker queueing a large list, on
/// a loaded machine) waits for it rather than fail: queueing is patient.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_waits_for_the_write_lock_to_queue_its_campaign() {
    if skipped("a_worker_waits_for_the_write_lock_to_queue_its_campaign") {
        return;
    }
    let (sink, env) = due(50, Behaviour::new(), "").await;
    // The store's write lock, held by another connection for more than
    // twice the busy timeout.
    let location = bulletin::store::Location::parse(std::path::Path::new(&env.db), None).unwrap();
    let holder = crate::web::hold_write_lock(&location).await;
    let worker = env.spawn_dispatch();
    tokio::time::sleep(Duration::from_secs(11)).await;
    holder.rollback().await.unwrap();
    let out = finish(worker).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sent_by(&out), 50);
    assert_eq!(env.counts().await, BTreeMap::from([("sent".into(), 50)]));
    sink.shutdown().await;
}

/// Queueing waits long for the write lock only (above): once it holds it,
/// a row another transaction holds makes it wait the busy timeout, as any
/// write does, and say so, not a minute. Here a transaction that has not
/// committed its own row for one of the people makes queueing wait for it.
#[tokio::test(flavor = "multi_thread")]
async fn queueing_waits_the_busy_timeout_for_a_row_once_it_holds_the_lock() {
    if skipped("queueing_waits_the_busy_timeout_for_a_row_once_it_holds_the_lock") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let busy = Duration::from_millis(300);
    let (setting, store, id) = campaign_frozen_for(dir.path(), "rowwait", 2, busy).await;
    let first = store.subscriber("p0@example.net").await.unwrap().unwrap();
    let raw = crate::support::db::raw(pg::location(&setting)).await;
    let mut other = raw.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO deliveries (campaign_id, subscriber_id, status, updated_at) VALUES ($1, $2, 'queued', 1)",
    )
    .bind(id)
    .bind(first.id)
    .execute(&mut *other)
    .await
    .unwrap();
    // A hang detector, 100 times the busy timeout: waiting the write
    // lock's 60 s for a row would run into it.
    let queued = tokio::time::timeout(Duration::from_secs(30), store.materialise(id, 2)).await;
    let err = queued
        .expect("queueing waited for the row far past the busy timeout")
        .unwrap_err();
    assert!(matches!(err, bulletin::store::Error::Locked(_)), "{err:?}");
    assert!(err.is_transient());
    other.rollback().await.unwrap();
    assert_eq!(store.materialise(id, 3).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_run_leaves_only_its_in_flight_rows_settled_by_policy() {
    if skipped("a_worker_killed_mid_run_leaves_only_its_in_flight_rows_settled_by_policy") {
        return;
    }
    // Slow answers keep every worker's connections busy, so the one killed
    // surely has rows in flight.
    let (sink, env) = due_behind_a_slow_sink(5000).await;
    let mut workers: Vec<Child> = (0..4).map(|_| env.spawn_dispatch()).collect();
    sink.wait_for(500, Duration::from_secs(120)).await;
    let mut victim = workers.remove(0);
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    for w in workers {
        let out = finish(w).await;
        assert!(
            out.status.success(),
            "a surviving worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The dead worker's heartbeat goes stale; the next dispatch notices
    // and settles its rows (unknown: never sent again), then finishes.
    finish_after_a_lost_worker(
        &env,
        &sink,
        5000,
        1..=4,
        "only the killed worker's in-flight rows (at most its 4 connections) are unknown",
    )
    .await;
    sink.shutdown().await;
}

/// Has the server end every other client connection to `raw`'s database,
/// as a restart would; asserts (`what`) that there was one. Only clients
/// of our own role: an autovacuum worker busy in the database is the
/// server's (a superuser's), which the role may not end.
async fn drop_the_other_connections(raw: &AnyPool, what: &str) {
    let dropped: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND backend_type = 'client backend' AND usename = current_user",
    )
    .fetch_all(raw)
    .await
    .unwrap();
    assert!(dropped.iter().any(|d| *d), "{what}");
}

/// The ledger keeps one connection for its rounds (`Store::ledger`), so a
/// connection the server drops mid-run is no longer replaced by the pool
/// unseen: the round on it fails. Nothing may be lost for it: the outcomes
/// waiting are recorded by the ledger's last try on a new connection, the
/// run ends with the transient exit code, and the next `dispatch` finishes
/// the campaign with nobody mailed twice.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_dropping_the_ledgers_connection_loses_nothing_and_mails_nobody_twice() {
    if skipped("the_server_dropping_the_ledgers_connection_loses_nothing_and_mails_nobody_twice") {
        return;
    }
    let (sink, env) = due_behind_a_slow_sink(1000).await;
    let worker = env.spawn_dispatch();
    sink.wait_for(200, Duration::from_secs(120)).await;
    let raw = env.raw().await;
    drop_the_other_connections(&raw, "the dispatcher's connections were there to drop").await;
    raw.close().await;
    let first = finish(worker).await;
    let code = first.status.code();
    assert!(
        code == Some(75) || code == Some(0),
        "a dropped connection is transient (75), or went unnoticed at the end of the run: {code:?}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&first.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The first run's worker row goes stale, and the next run settles what
    // it left in flight by policy, then sends the rest.
    finish_after_a_lost_worker(
        &env,
        &sink,
        1000,
        0..=4,
        "at most the rows in flight on the 4 connections are unknown",
    )
    .await;
    sink.shutdown().await;
}

/// A TCP proxy in front of the PostgreSQL server on `server` that loses
/// one answer: on the connection that carries the `nth` round of
/// deliveries (a message with outcomes in it: `"]]` and the sender's
/// domain), it passes the round on, waits for the server's whole answer
/// (`ReadyForQuery`, so the round is committed), and closes the connection
/// instead of passing the answer back. Everything else goes through. Its
/// port, and whether it has lost the answer of a round that succeeded.
async fn a_proxy_that_loses_one_answer(
    server: u16,
    nth: usize,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn has(chunk: &[u8], what: &[u8]) -> bool {
        chunk.windows(what.len()).any(|w| w == what)
    }
    /// Whether the server's messages (a type byte, a 4-byte length that
    /// counts itself, the body) hold an ErrorResponse.
    fn has_error(mut messages: &[u8]) -> bool {
        while messages.len() >= 5 {
            if messages[0] == b'E' {
                return true;
            }
            let len = u32::from_be_bytes(messages[1..5].try_into().unwrap()) as usize;
            messages = &messages[(1 + len).min(messages.len())..];
        }
        false
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let rounds = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicBool::new(false));
    let lost_out = lost.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", server)).await else {
                continue;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let lose = Arc::new(AtomicBool::new(false));
            let (rounds, lose_here) = (rounds.clone(), lose.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                    let chunk = &buf[..n];
                    if has(chunk, b"alliance.example")
                        && has(chunk, b"\"]]")
                        && rounds.fetch_add(1, SeqCst) + 1 == nth
                    {
                        lose_here.store(true, SeqCst);
                    }
                    if to_server.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            });
            let lost = lost.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut held = Vec::new();
                while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                    if lose.load(SeqCst) {
                        held.extend_from_slice(&buf[..n]);
                        if held.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
                            // Committed and answered (unless the answer
                            // holds an error): the answer goes nowhere.
                            lost.store(!has_error(&held), SeqCst);
                            break;
                        }
                        continue;
                    }
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, lost_out)
}

/// A round the server commits but whose answer the dispatcher never gets
/// (the connection lost between the two): the rows it claimed reached no
/// SMTP connection. They are queued again when the run ends, not left
/// `sending` for the next run to settle as `unknown` (never sent), and the
/// next `dispatch` sends them: nobody lost, nobody twice.
#[tokio::test(flavor = "multi_thread")]
async fn rows_claimed_by_a_round_whose_answer_was_lost_are_queued_again() {
    if skipped("rows_claimed_by_a_round_whose_answer_was_lost_are_queued_again") {
        return;
    }
    let (sink, env) = due_behind_a_slow_sink(300).await;
    let url = url::Url::parse(&env.db).unwrap();
    let (proxy, lost) = a_proxy_that_loses_one_answer(url.port().unwrap(), 10).await;
    let config = env.dir.path().join("bulletin.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // In clear: the proxy reads the protocol to find the round to lose,
    // and the cluster offers TLS, which bulletin takes when it may.
    let through = env
        .db
        .replace(&format!(":{}/", url.port().unwrap()), &format!(":{proxy}/"));
    let through = if through.contains('?') {
        format!("{through}&sslmode=disable")
    } else {
        format!("{through}?sslmode=disable")
    };
    std::fs::write(&config, text.replace(&env.db, &through)).unwrap();

    let first = finish(env.spawn_dispatch()).await;
    assert!(
        lost.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy lost an answer"
    );
    assert_eq!(
        first.status.code(),
        Some(75),
        "a lost connection is transient\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let counts = env.counts().await;
    assert_eq!(
        counts.get("sending"),
        None,
        "nothing left in flight: {counts:?}"
    );
    assert!(counts.get("queued").is_some_and(|n| *n > 0), "{counts:?}");
    finish_after_a_lost_worker(&env, &sink, 300, 0..=0, "nobody is unknown").await;
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_holds_across_workers() {
    if skipped("the_rate_limit_holds_across_workers") {
        return;
    }
    const RATE: f64 = 20.0;
    const RECIPIENTS: i64 = 120;
    let (sink, env) = due(RECIPIENTS, Behaviour::new(), &format!("rate = {RATE}")).await;
    let workers: Vec<Child> = (0..2).map(|_| env.spawn_dispatch()).collect();
    for w in workers {
        let out = finish(w).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let messages = sink.messages();
    assert_eq!(messages.len(), RECIPIENTS as usize);
    assert_nobody_twice(&received_counts(&messages));
    let first = messages.iter().map(|m| m.at).min().unwrap();
    let last = messages.iter().map(|m| m.at).max().unwrap();
    let span = (last - first).as_secs_f64();
    // 120 messages at 20/s take at least 119/20 = 5.95 s across both
    // workers; each process pacing alone would take half that. Slack: 25%.
    let rate = (RECIPIENTS - 1) as f64 / span;
    assert!(
        rate <= RATE * 1.25,
        "{rate:.1} messages/s over {span:.2} s with rate = {RATE}"
    );
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_live_workers() {
    if skipped("status_shows_the_live_workers") {
        return;
    }
    let (sink, env) = due(200, Behaviour::new(), "rate = 20").await;
    let mut workers: Vec<Child> = (0..3).map(|_| env.spawn_dispatch()).collect();
    sink.wait_for(20, Duration::from_secs(60)).await;
    // A worker of this machine killed a moment ago is not shown as live,
    // though its last heartbeat is recent.
    let mut killed = workers.remove(0);
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();
    let json = env.ok(&["status", "--format", "json"]).await;
    let report: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    let live = report["workers"].as_array().expect("workers listed");
    let mut pids: Vec<u64> = live.iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    pids.sort();
    let mut expected: Vec<u64> = workers.iter().map(|w| u64::from(w.id())).collect();
    expected.sort();
    assert_eq!(pids, expected, "{json}");
    assert!(
        live.iter()
            .all(|w| w["host"].as_str().is_some_and(|h| !h.is_empty()))
    );
    let text = env.ok(&["status"]).await;
    assert_eq!(text.matches("  worker: ").count(), 2, "{text}");
    for w in workers {
        finish(w).await;
    }
    let json = env.ok(&["status", "--format", "json"]).await;
    assert!(
        !json.contains("\"workers\""),
        "finished workers are gone: {json}"
    );
    sink.shutdown().await;
}

/// A fresh PostgreSQL database `name` (under `dir`) with list `news` of
/// `n` subscribers `p{i}@example.net` and campaign `c` to it, queued:
/// (the `db` setting, the store, the campaign's row).
async fn campaign_queued_to(
    dir: &std::path::Path,
    name: &str,
    n: usize,
) -> (
    String,
    bulletin::store::Store,
    bulletin::store::deliveries::CampaignRow,
) {
    let busy = bulletin::store::BUSY_TIMEOUT;
    let (setting, store, id) = campaign_frozen_for(dir, name, n, busy).await;
    store.materialise(id, 1).await.unwrap();
    let c = store.campaign_by_id(id).await.unwrap().unwrap();
    (setting, store, c)
}

/// [`campaign_queued_to`] before queueing, its store opened with `busy`
/// as the busy timeout: (the `db` setting, the store, the campaign's id).
async fn campaign_frozen_for(
    dir: &std::path::Path,
    name: &str,
    n: usize,
    busy: Duration,
) -> (String, bulletin::store::Store, i64) {
    use bulletin::store::deliveries::NewCampaign;
    let setting = pg::db_named(dir, name).await;
    let store = bulletin::store::Store::open_with(pg::location(&setting), busy)
        .await
        .unwrap();
    let list = store
        .create_list("news", "News", "", false, false, 1)
        .await
        .unwrap()
        .id;
    for i in 0..n {
        let email = format!("p{i}@example.net");
        store
            .add_subscriber(&email, None, "news", "test", 1)
            .await
            .unwrap();
    }
    let new = NewCampaign {
        slug: "c",
        lists: &[list],
        subject: "s",
        compiled: "{}",
        source_hash: "h",
        send_at: 1,
        now: 1,
    };
    let id = store.insert_campaign(&new).await.unwrap();
    (setting, store, id)
}

/// The dispatcher's round on PostgreSQL, through the store: a round of
/// deliveries records them and claims in one statement, on the rows its
/// worker holds only; a round that delivered to someone with a bounce score
/// records, lowers the score and claims all the same; a claim that finds
/// fewer due rows than asked says nothing more is due.
#[tokio::test(flavor = "multi_thread")]
async fn a_round_records_only_its_own_rows_lowers_scores_and_claims() {
    use bulletin::store::deliveries::{Job, Outcome};
    if skipped("a_round_records_only_its_own_rows_lowers_scores_and_claims") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (setting, store, c) = campaign_queued_to(dir.path(), "rounds", 6).await;
    let (a, b) = ("h:1:a", "h:2:b");
    let first = store.record_and_claim(&c, a, 2, &[], 10).await.unwrap();
    let theirs = store.record_and_claim(&c, b, 1, &[], 10).await.unwrap();
    assert_eq!((first.jobs.len(), theirs.jobs.len()), (2, 1));
    let sent = |job: &Job| {
        let message_id = format!("<{}@x>", job.delivery_id);
        let reply = "250 ok".to_string();
        (
            job.delivery_id,
            job.subscriber_id,
            Outcome::Sent { reply, message_id },
        )
    };
    let raw = crate::support::db::raw(pg::location(&setting)).await;
    let scored = first.jobs[0].subscriber_id;
    sqlx::query("INSERT INTO bounce_scores (subscriber_id, score, computed_at, half_life) VALUES ($1, 2.0, 10, 2592000)")
        .bind(scored)
        .execute(&raw)
        .await
        .unwrap();
    let counts = || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status || ' ' || COALESCE(worker_id, '-'), COUNT(*) FROM deliveries GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&raw)
        .await
        .unwrap();
        rows
    };

    // b reports a row that a holds: nothing changes on it; b claims one.
    let stray = store
        .record_and_claim(&c, b, 1, &[sent(&first.jobs[1])], 11)
        .await
        .unwrap();
    assert_eq!(stray.jobs.len(), 1);
    assert_eq!(
        counts().await,
        [
            ("queued -".to_string(), 2),
            (format!("sending {a}"), 2),
            (format!("sending {b}"), 2)
        ]
    );

    // a delivered to both, one of them scored: both recorded, the score
    // halved (with its event), and the two queued rows claimed.
    let outcomes = [sent(&first.jobs[0]), sent(&first.jobs[1])];
    let second = store
        .record_and_claim(&c, a, 3, &outcomes, 12)
        .await
        .unwrap();
    assert_eq!(second.jobs.len(), 2);
    assert!(second.exhausted, "two rows were due, three asked for");
    let score: f64 = sqlx::query_scalar("SELECT score FROM bounce_scores WHERE subscriber_id = $1")
        .bind(scored)
        .fetch_one(&raw)
        .await
        .unwrap();
    assert!((score - 1.0).abs() < 0.01, "score {score}");
    let lowered: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE kind = 'bounce_score_lowered' AND subscriber_id = $1",
    )
    .bind(scored)
    .fetch_one(&raw)
    .await
    .unwrap();
    assert_eq!(lowered, 1);
    assert_eq!(
        counts().await,
        [
            (format!("sending {a}"), 2),
            (format!("sending {b}"), 2),
            (format!("sent {a}"), 2)
        ]
    );

    // A round of deliveries only, with nothing left to claim.
    let outcomes = [sent(&second.jobs[0]), sent(&second.jobs[1])];
    let last = store
        .record_and_claim(&c, a, 1, &outcomes, 13)
        .await
        .unwrap();
    assert!(last.jobs.is_empty() && last.exhausted);
    assert_eq!(
        counts().await,
        [(format!("sending {b}"), 2), (format!("sent {a}"), 4)]
    );
    raw.close().await;
}

/// The ledger's held connection (`Store::ledger`) dropped by the server
/// while idle, as a restart or a proxy's idle timeout would: the next
/// round, after the idle second, tests it, takes a new one and records and
/// claims as if nothing happened (the pool used to do this for every
/// round; a held connection must not turn it into a failed run).
#[tokio::test(flavor = "multi_thread")]
async fn the_ledgers_connection_dropped_while_idle_is_replaced_before_its_next_round() {
    use bulletin::store::deliveries::Outcome;
    if skipped("the_ledgers_connection_dropped_while_idle_is_replaced_before_its_next_round") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (setting, store, c) = campaign_queued_to(dir.path(), "idle", 3).await;
    let mut ledger = store.ledger().await.unwrap();
    let first = ledger
        .record_and_claim(&c, "h:1:a", 1, &[], 10)
        .await
        .unwrap();
    assert_eq!(first.jobs.len(), 1);

    let raw = crate::support::db::raw(pg::location(&setting)).await;
    drop_the_other_connections(&raw, "the ledger's connection was dropped").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let job = &first.jobs[0];
    let outcome = Outcome::Sent {
        reply: "250 ok".into(),
        message_id: "<1@x>".into(),
    };
    let next = ledger
        .record_and_claim(
            &c,
            "h:1:a",
            1,
            &[(job.delivery_id, job.subscriber_id, outcome)],
            11,
        )
        .await
        .expect("the round runs on a new connection");
    assert_eq!(next.jobs.len(), 1);
    assert_ne!(next.jobs[0].delivery_id, job.delivery_id);
    let status: String = sqlx::query_scalar("SELECT status FROM deliveries WHERE id = $1")
        .bind(job.delivery_id)
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(status, "sent", "the outcome was recorded");
    raw.close().await;
}

/// `Outcome::Sent` for a claimed job, as a worker reports it.
fn sent(
    job: &bulletin::store::deliveries::Job,
) -> (i64, i64, bulletin::store::deliveries::Outcome) {
    let outcome = bulletin::store::deliveries::Outcome::Sent {
        reply: "250 ok".into(),
        message_id: format!("<{}@x>", job.delivery_id),
    };
    (job.delivery_id, job.subscriber_id, outcome)
}

/// A round of worker `h:1:a`: every job of `claimed` delivered, two more
/// rows claimed.
async fn deliver_and_claim(
    ledger: &mut bulletin::store::deliveries::Ledger,
    c: &bulletin::store::deliveries::CampaignRow,
    claimed: &bulletin::store::deliveries::Claimed,
    now: i64,
) -> bulletin::store::deliveries::Claimed {
    let outcomes: Vec<_> = claimed.jobs.iter().map(sent).collect();
    ledger
        .record_and_claim(c, "h:1:a", 2, &outcomes, now)
        .await
        .unwrap()
}

/// The delivery ids of a claim, in the order handed out.
fn ids(claimed: &bulletin::store::deliveries::Claimed) -> Vec<i64> {
    claimed.jobs.iter().map(|j| j.delivery_id).collect()
}

/// A ledger's claims go on from the last row they took (the cursor that
/// spares them the index entries of the rows sent so far), through both
/// kinds of round (a round's transaction, and the one statement of a round
/// of deliveries); a row given back behind the cursor is taken once
/// nothing is left after it (in either kind of round), before the pass is
/// told nothing more is due; and every row is sent once.
#[tokio::test(flavor = "multi_thread")]
async fn claims_go_on_from_the_last_row_taken_and_come_back_for_rows_given_back() {
    use bulletin::store::deliveries::Outcome;
    if skipped("claims_go_on_from_the_last_row_taken_and_come_back_for_rows_given_back") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (setting, store, c) = campaign_queued_to(dir.path(), "cursor", 7).await;
    let raw = crate::support::db::raw(pg::location(&setting)).await;
    let d: Vec<i64> = sqlx::query_scalar("SELECT id FROM deliveries ORDER BY id")
        .fetch_all(&raw)
        .await
        .unwrap();
    let w = "h:1:a";
    let mut ledger = store.ledger().await.unwrap();

    let first = ledger.record_and_claim(&c, w, 2, &[], 10).await.unwrap();
    assert_eq!(ids(&first), [d[0], d[1]]);
    // d0 given back (its worker went away), d1 sent: a round's transaction.
    let back = (d[0], first.jobs[0].subscriber_id, Outcome::Unclaimed);
    let outcomes = [back, sent(&first.jobs[1])];
    let second = ledger
        .record_and_claim(&c, w, 2, &outcomes, 11)
        .await
        .unwrap();
    assert_eq!(ids(&second), [d[2], d[3]], "on from d1, d0 waits");
    // Deliveries only: the round's one statement.
    let third = deliver_and_claim(&mut ledger, &c, &second, 12).await;
    assert_eq!(ids(&third), [d[4], d[5]], "on from d3, d0 waits");
    let fourth = deliver_and_claim(&mut ledger, &c, &third, 13).await;
    assert_eq!(ids(&fourth), [d[6], d[0]], "after the last, back to d0");
    assert!(!fourth.exhausted);
    // d0 given back again, d6 sent: the round's transaction finds nothing
    // after the cursor and d0 behind it; then nothing more is due.
    let back = (d[0], fourth.jobs[1].subscriber_id, Outcome::Unclaimed);
    let outcomes = [sent(&fourth.jobs[0]), back];
    let fifth = ledger
        .record_and_claim(&c, w, 2, &outcomes, 14)
        .await
        .unwrap();
    assert_eq!(ids(&fifth), [d[0]], "from the start, d0 again");
    assert!(fifth.exhausted);
    let last = deliver_and_claim(&mut ledger, &c, &fifth, 15).await;
    assert!(last.jobs.is_empty() && last.exhausted);

    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT status, attempts, COUNT(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&raw)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [("sent".to_string(), 1, 7)],
        "each sent, each attempted once"
    );
    raw.close().await;
}

/// The index buffers a PostgreSQL claim's search for queued rows reads
/// (its `deliveries_work` scan, in `EXPLAIN (ANALYZE, BUFFERS)`), run in a
/// transaction rolled back.
async fn queued_search_buffers(raw: &AnyPool, text: &str, binds: &[i64]) -> i64 {
    let mut text = text.replace("{want}", "4");
    for n in (1..=binds.len()).rev() {
        text = text.replace(&format!("?{n}"), &format!("${n}"));
    }
    let explain = format!("EXPLAIN (ANALYZE, BUFFERS) {text}");
    let mut tx = raw.begin().await.unwrap();
    let mut q = sqlx::query_scalar::<_, String>(&explain);
    for (n, value) in binds.iter().enumerate() {
        // ?6, the worker, is text.
        q = if n == 5 {
            q.bind(value.to_string())
        } else {
            q.bind(*value)
        };
    }
    let plan: Vec<String> = q.fetch_all(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    // Each node: its line ("->  Index Scan using …"), then its details.
    let mut sum = 0;
    for (i, line) in plan.iter().enumerate() {
        if !line.contains("Index Scan using deliveries_work on ") {
            continue;
        }
        let details: Vec<&String> = plan[i + 1..]
            .iter()
            .take_while(|l| !l.trim_start().starts_with("->"))
            .collect();
        if !details
            .iter()
            .any(|l| l.contains("Index Cond") && l.contains("'queued'"))
        {
            continue;
        }
        let buffers = details
            .iter()
            .find_map(|l| l.trim().strip_prefix("Buffers: shared "))
            .unwrap_or_else(|| panic!("no buffers in\n{}", plan.join("\n")));
        for part in buffers.split_whitespace() {
            if let Some(("hit" | "read", n)) = part.split_once('=') {
                sum += n.parse::<i64>().unwrap();
            }
        }
    }
    assert!(sum > 0, "no search for queued rows in\n{}", plan.join("\n"));
    sum
}

/// On PostgreSQL an update leaves the old index entry until vacuum, so a
/// claim that searched for queued rows from the start would read the
/// entries of every row sent so far; from the cursor it reads what a claim
/// at the start of the campaign reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_from_the_cursor_reads_no_entries_of_rows_already_sent() {
    use bulletin::store::deliveries::{CLAIM_AFTER_SQL_PG, CLAIM_SQL_PG};
    if skipped("a_claim_from_the_cursor_reads_no_entries_of_rows_already_sent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (setting, _store, c) = campaign_queued_to(dir.path(), "cursor_cost", 1000).await;
    let raw = crate::support::db::raw(pg::location(&setting)).await;
    sqlx::query("ALTER TABLE deliveries SET (autovacuum_enabled = off)")
        .execute(&raw)
        .await
        .unwrap();
    let binds = |after: Option<i64>| {
        let mut b = vec![c.id, c.list_id, 10, 4, 10, 0];
        b.extend(after);
        b
    };
    let at_start = queued_search_buffers(&raw, CLAIM_SQL_PG, &binds(None)).await;
    let last_sent: i64 = sqlx::query_scalar(
        "WITH s AS (UPDATE deliveries SET status = 'sent' WHERE id IN
             (SELECT id FROM deliveries ORDER BY id LIMIT 900) RETURNING id)
         SELECT MAX(id) FROM s",
    )
    .fetch_one(&raw)
    .await
    .unwrap();
    let from_start = queued_search_buffers(&raw, CLAIM_SQL_PG, &binds(None)).await;
    let from_cursor =
        queued_search_buffers(&raw, CLAIM_AFTER_SQL_PG, &binds(Some(last_sent))).await;
    eprintln!(
        "buffers: at the start {at_start}, after 900 sent from the start {from_start}, from the cursor {from_cursor}"
    );
    assert!(
        from_start >= at_start + 5,
        "the sent rows' entries are read from the start: {from_start} against {at_start}"
    );
    assert!(
        from_cursor <= at_start + 1,
        "from the cursor: {from_cursor} against {at_start} at the start"
    );
    raw.close().await;
}

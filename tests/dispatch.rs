//! The dispatcher against real SMTP servers on loopback: the in-process
//! sink here, Postfix's smtp-sink and aiosmtpd in `interop.rs`. Every test
//! runs the real `bulletin` binary on a real database: a SQLite file, or a
//! fresh PostgreSQL database with `BULLETIN_TEST_POSTGRES` (`support::pg`).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bulletin::links::Signer;

use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};
use crate::support::{bulletin_in, output, project_command, stdout_of_success};

pub(crate) const SECRET: &str = "test-secret-for-dispatch-32-bytes-at-least";

/// A project folder with a config, a campaign and a database.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) smtp_url: String,
    /// The `db` setting in bulletin.toml (`support::pg::db_setting`).
    pub(crate) db: String,
}

impl Env {
    /// `port`: the SMTP sink; `dispatch`: extra `[dispatch]` keys.
    pub(crate) fn new(port: u16, dispatch: &str) -> Env {
        let env = Env::sqlite(port, dispatch);
        // The engine under test: `b.db`, or that line pointed at a fresh
        // PostgreSQL database (one per test folder).
        let db = crate::support::pg::config_db(env.dir.path());
        Env { db, ..env }
    }

    /// [`Env::new`] on SQLite (`b.db`) whatever the engine under test, for
    /// tests about the SQLite file itself (`db copy` reads one).
    pub(crate) fn sqlite(port: u16, dispatch: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bulletin.toml"),
            format!(
                "db = \"b.db\"\nbase_url = \"https://news.example.org\"\n\
                 [organisation]\nname = \"Test Alliance\"\naddress = \"1 Road, Town\"\n\
                 [sender]\nfrom = \"Test Alliance <news@alliance.example>\"\nbounce_domain = \"alliance.example\"\n\
                 [smtp]\nconnections = 4\ntimeout_secs = 10\n\
                 [dispatch]\n{dispatch}\n{}",
                ["retry_base_secs = 1", "retry_wait_secs = 5"]
                    .iter()
                    .filter(|d| !dispatch.contains(d.split(' ').next().unwrap()))
                    .map(|d| format!("{d}\n"))
                    .collect::<String>()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("campaigns")).unwrap();
        std::fs::write(
            dir.path().join("campaigns/news-1.md"),
            "+++\nsubject = \"News for {{subscriber.name | \\\"you\\\"}}\"\npreheader = \"p\"\nlist = \"news\"\n+++\n\
             # Section\n\n## Article\n\nHello {{subscriber.name}}, from {{subscriber.city}}.\n",
        )
        .unwrap();
        Env {
            db: dir.path().join("b.db").display().to_string(),
            dir,
            smtp_url: format!("smtp://127.0.0.1:{port}?tls=none"),
        }
    }

    /// Where the project's database is.
    pub(crate) fn location(&self) -> bulletin::store::Location {
        bulletin::store::Location::parse(std::path::Path::new(&self.db), None).unwrap()
    }

    /// The project's database, opened by the store (schema applied).
    pub(crate) async fn store(&self) -> bulletin::store::Store {
        bulletin::store::Store::open(self.location()).await.unwrap()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = project_command(self.dir.path(), SECRET, &self.smtp_url, args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs the binary to the end, off the async threads.
    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        output(self.command(args)).await
    }

    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        self.ok_at(None, args).await
    }

    /// [`Env::ok`] with the command's clock fixed at `now` (unix seconds,
    /// `BULLETIN_NOW`) when given: a time "one second ahead" stays ahead
    /// however long the command takes to start on a loaded machine.
    pub(crate) async fn ok_at(&self, now: Option<i64>, args: &[&str]) -> String {
        let mut cmd = self.command(args);
        if let Some(now) = now {
            cmd.env("BULLETIN_NOW", now.to_string());
        }
        stdout_of_success(output(cmd).await, args)
    }

    /// `subscribers add EMAIL --list LIST --confirmed`: confirmed at once,
    /// with consent on record and no confirmation email. What it printed.
    pub(crate) async fn add_confirmed(&self, email: &str, list: &str) -> String {
        self.ok(&["subscribers", "add", email, "--list", list, "--confirmed"])
            .await
    }

    /// `send FILE --yes --at` `secs` seconds from now, the command's clock
    /// fixed at now ([`Env::ok_at`]): the campaign is queued, due `secs`
    /// seconds later however slowly the command started.
    pub(crate) async fn send_in(&self, file: &str, secs: i64) -> String {
        let now = chrono::Utc::now();
        let at = (now + chrono::Duration::seconds(secs)).to_rfc3339();
        self.ok_at(Some(now.timestamp()), &["send", file, "--yes", "--at", &at])
            .await
    }

    /// Creates list `news` with `n` subscribers; returns their addresses.
    pub(crate) async fn subscribers(&self, n: usize, special: &[&str]) -> Vec<String> {
        self.ok(&["lists", "add", "news", "--name", "News"]).await;
        let mut csv = String::from("email,name,city\n");
        let mut all = Vec::new();
        for s in special {
            csv.push_str(&format!("{s},Special,Here\n"));
            all.push(s.to_string());
        }
        for i in 0..n {
            let email = format!("person{i}@example.net");
            csv.push_str(&format!("{email},Person {i},City {i}\n"));
            all.push(email);
        }
        std::fs::write(self.path("people.csv"), csv).unwrap();
        self.ok(&["subscribers", "import", "people.csv", "--list", "news"])
            .await;
        all
    }

    async fn status(&self) -> serde_json::Value {
        let out = self.ok(&["status", "--format", "json"]).await;
        serde_json::from_str(out.lines().next().expect("a campaign")).unwrap()
    }
}

fn recipients(messages: &[Received]) -> Vec<String> {
    messages.iter().flat_map(|m| m.rcpt_to.clone()).collect()
}

/// Each address at most once; returns the set.
fn assert_no_duplicates(messages: &[Received]) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in recipients(messages) {
        *seen.entry(r).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "mailed more than once: {twice:?}");
    seen.into_keys().collect()
}

pub(crate) fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = raw.split("\r\n\r\n").next()?;
    head.split("\r\n")
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .map(|l| l[name.len() + 1..].trim())
}

pub(crate) fn unfold(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_recipients_each_receive_exactly_once() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    let all = env.subscribers(2000, &[]).await;
    let out = env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert!(out.contains("news-1: sent 2000 (finished)"), "{out}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 2000);
    let got = assert_no_duplicates(&messages);
    assert_eq!(got, all.into_iter().collect::<BTreeSet<_>>());
    let status = env.status().await;
    assert_eq!(status["deliveries"]["sent"], 2000);
    assert_eq!(status["status"], "sent");
    // Sending the same campaign again is refused...
    let again = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already sent"),
        "{again:?}"
    );
    assert_eq!(sink.messages().len(), 2000, "nothing more sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_required_header_is_on_the_received_message() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(0, &["ana@example.net"]).await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let m = &sink.messages()[0];
    let raw = unfold(&m.data);
    assert_eq!(m.rcpt_to, ["ana@example.net"]);
    assert_eq!(
        header(&raw, "From"),
        Some("\"Test Alliance\" <news@alliance.example>")
    );
    assert_eq!(header(&raw, "To"), Some("Special <ana@example.net>"));
    assert_eq!(header(&raw, "Subject"), Some("News for Special"));
    assert!(
        header(&raw, "Date").is_some_and(|d| d.ends_with("+0000")),
        "{raw}"
    );
    let message_id = header(&raw, "Message-ID").unwrap();
    assert!(
        message_id.starts_with('<') && message_id.ends_with("@alliance.example>"),
        "{message_id}"
    );
    let unsub = header(&raw, "List-Unsubscribe").unwrap();
    assert!(
        unsub.starts_with("<https://news.example.org/unsubscribe/"),
        "{unsub}"
    );
    assert!(unsub.contains("<mailto:unsubscribe+"), "{unsub}");
    assert_eq!(
        header(&raw, "List-Unsubscribe-Post"),
        Some("List-Unsubscribe=One-Click")
    );
    assert_eq!(
        header(&raw, "List-Id"),
        Some("\"News\" <news.alliance.example>")
    );
    assert!(
        header(&raw, "Content-Type")
            .unwrap()
            .starts_with("multipart/alternative")
    );
    let text_at = raw.find("Content-Type: text/plain").unwrap();
    let html_at = raw.find("Content-Type: text/html").unwrap();
    assert!(text_at < html_at, "text part first");
    // VERP: the envelope sender names this delivery, and cannot be forged.
    let token = m
        .mail_from
        .strip_prefix("bounces+")
        .and_then(|r| r.strip_suffix("@alliance.example"))
        .unwrap_or_else(|| panic!("VERP sender, got {}", m.mail_from));
    let claims = Signer::new(SECRET.as_bytes(), &[])
        .verify::<bulletin::links::Bounce>(token)
        .unwrap();
    assert!(claims.delivery > 0, "delivery id");
    assert!(
        Signer::new(b"other", &[])
            .verify::<bulletin::links::Bounce>(token)
            .is_none()
    );
    // The Message-ID carries the same token, for bounces that quote it.
    assert_eq!(message_id, format!("<{token}@alliance.example>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_fail_and_bounce_deferrals_retry() {
    let sink = SmtpSink::start(
        Behaviour::new()
            .rcpt_reply("reject", "550 5.1.1 user unknown")
            .data_reply("full", "552 5.2.2 mailbox full")
            .defer_first("flaky", 2)
            .drop_after_data("dropme"),
    );
    let env = Env::new(sink.port(), "max_attempts = 3");
    env.subscribers(
        20,
        &[
            "reject@example.net",
            "full@example.net",
            "flaky@example.net",
            "dropme@example.net",
        ],
    )
    .await;
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "failures make exit 1: {stdout}");
    let got = assert_no_duplicates(&sink.messages());
    assert!(
        got.contains("flaky@example.net"),
        "deferred twice, then sent"
    );
    assert_eq!(sink.rcpt_attempts("flaky@example.net"), 3);
    assert!(!got.contains("reject@example.net"));
    assert!(!got.contains("full@example.net"));
    assert!(!got.contains("dropme@example.net"));
    assert_eq!(got.len(), 21, "the 20 plain ones and flaky");
    // One bad address never stopped the campaign; the unknown user is a
    // hard bounce, the full mailbox is not the address's fault.
    let status = env.status().await;
    assert_eq!(status["deliveries"]["sent"], 21);
    assert_eq!(status["deliveries"]["failed"], 2, "{status}");
    let show = env.ok(&["subscribers", "show", "reject@example.net"]).await;
    assert!(show.contains("status:      bounced"), "{show}");
    let show = env.ok(&["subscribers", "show", "full@example.net"]).await;
    assert!(show.contains("status:      active"), "{show}");
    // The connection dropped after the whole message: maybe delivered, so
    // `unknown`, sent once, never again, and not a bounce.
    assert_eq!(status["deliveries"]["unknown"], 1, "{status}");
    assert_eq!(sink.rcpt_attempts("dropme@example.net"), 1);
    let show = env.ok(&["subscribers", "show", "dropme@example.net"]).await;
    assert!(show.contains("status:      active"), "{show}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_messages_are_sent_by_a_later_dispatch() {
    let sink = SmtpSink::start(Behaviour::new().defer_first("slow", 1));
    // A retry 3 s ahead: not due again within a run slowed by a busy machine.
    let env = Env::new(sink.port(), "retry_wait_secs = 0\nretry_base_secs = 3");
    env.subscribers(5, &["slow@example.net"]).await;
    let out = env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert!(out.contains("deferred 1"), "{out}");
    assert_eq!(sink.messages().len(), 5);
    assert_eq!(env.status().await["status"], "sending");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains("news-1: sent 1 (finished)"), "{out}");
    let got = assert_no_duplicates(&sink.messages());
    assert!(got.contains("slow@example.net"));
    // Nothing due: dispatch is silent and succeeds.
    let out = env.run(&["dispatch"]).await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_campaign_resumes_without_mailing_anyone_twice() {
    // Slow replies make a wide window to kill the process in.
    let sink = SmtpSink::start(Behaviour::new().delay_data_reply("", Duration::from_millis(15)));
    let env = Env::new(sink.port(), "");
    let all = env.subscribers(600, &[]).await;
    let mut child = env
        .command(&["send", "campaigns/news-1.md", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(sink.wait_for(150, Duration::from_secs(60)).await >= 150);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = sink.messages().len();
    assert!(before < 600, "killed before the end");

    // The next dispatch resumes (the dead run's lease is taken over at once).
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains("news-1: sent"), "{out}");
    let got = assert_no_duplicates(&sink.messages());
    let status = env.status().await;
    let unknown = status["deliveries"]["unknown"].as_u64().unwrap_or(0) as usize;
    assert!(
        unknown <= 4,
        "at most one in flight per connection: {status}"
    );
    assert!(
        got.len() <= all.len() && got.len() + unknown >= all.len(),
        "{status}"
    );
    // Messages accepted while the run was dying may be `unknown` in the log
    // but were received once; none was sent twice.
    let sent = status["deliveries"]["sent"].as_u64().unwrap() as usize;
    assert!(sent + unknown >= got.len() && sent <= got.len(), "{status}");
    // Nor does the killed run stay on record as a worker.
    let workers = env.store().await.live_workers(0).await.unwrap();
    assert!(workers.is_empty(), "{workers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatch_runs_started_together_send_each_message_once() {
    let sink = SmtpSink::start(Behaviour::new().delay_data_reply("", Duration::from_millis(2)));
    let env = Env::new(sink.port(), "");
    let all = env.subscribers(800, &[]).await;
    let out = env.send_in("campaigns/news-1.md", 2).await;
    assert!(out.contains("scheduled"), "{out}");
    assert!(sink.messages().is_empty());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = env
        .command(&["dispatch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let b = env
        .command(&["dispatch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = tokio::task::spawn_blocking(move || {
        (a.wait_with_output().unwrap(), b.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    assert!(a.status.success() || b.status.success(), "{a:?} {b:?}");
    let got = assert_no_duplicates(&sink.messages());
    assert_eq!(got, all.into_iter().collect::<BTreeSet<_>>());
    assert_eq!(env.status().await["deliveries"]["sent"], 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_stops_cleanly_and_the_campaign_resumes() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = Env::new(closed, "");
    env.subscribers(10, &[]).await;
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(stderr.contains("stays queued"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    let status = env.status().await;
    assert_eq!(status["deliveries"]["queued"], 10, "{status}");

    let sink = SmtpSink::start(Behaviour::new());
    let env = Env {
        smtp_url: format!("smtp://127.0.0.1:{}?tls=none", sink.port()),
        ..env
    };
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains("sent 10 (finished)"), "{out}");
    assert_eq!(assert_no_duplicates(&sink.messages()).len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_what_is_in_flight_and_resumes_later() {
    let sink = SmtpSink::start(Behaviour::new().delay_data_reply("", Duration::from_millis(20)));
    let env = Env::new(sink.port(), "");
    env.subscribers(400, &[]).await;
    let child = env
        .command(&["send", "campaigns/news-1.md", "--yes"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(sink.wait_for(40, Duration::from_secs(60)).await >= 40);
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "interrupted");
    assert!(String::from_utf8_lossy(&out.stdout).contains("interrupted"));
    let status = env.status().await;
    assert!(
        status["deliveries"].get("sending").is_none(),
        "nothing left in flight: {status}"
    );
    assert!(status["deliveries"].get("unknown").is_none(), "{status}");
    assert_eq!(
        status["deliveries"]["sent"].as_u64().unwrap() as usize,
        sink.messages().len()
    );
    env.ok(&["dispatch"]).await;
    assert_eq!(assert_no_duplicates(&sink.messages()).len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_overdue_campaign_is_held_not_sent() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "hold_after_hours = 0");
    env.subscribers(3, &[]).await;
    env.send_in("campaigns/news-1.md", 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = env.run(&["dispatch"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("news-1: held, it was due"), "{stdout}");
    assert!(sink.messages().is_empty());
    assert_eq!(env.status().await["status"], "held");
    // The operator decides: send it anyway.
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(sink.messages().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_copy_is_marked_and_not_logged() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(2, &[]).await;
    let out = env
        .ok(&["test", "campaigns/news-1.md", "--to", "editor@example.org"])
        .await;
    assert!(out.contains("sent a test copy"), "{out}");
    let m = &sink.messages()[0];
    assert_eq!(m.rcpt_to, ["editor@example.org"]);
    let raw = unfold(&m.data);
    assert!(header(&raw, "Subject").unwrap().starts_with("[TEST] "));
    let status = env.ok(&["status"]).await;
    assert!(status.contains("no campaigns yet"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_send_keeps_the_frozen_content() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(2, &[]).await;
    env.send_in("campaigns/news-1.md", 1).await;
    // Edit the file after queueing: the queued send does not change.
    let path = env.path("campaigns/news-1.md");
    let edited = std::fs::read_to_string(&path)
        .unwrap()
        .replace("Hello", "EDITED");
    std::fs::write(&path, edited).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.ok(&["dispatch"]).await;
    for m in sink.messages() {
        let raw = String::from_utf8_lossy(&m.data);
        assert!(!raw.contains("EDITED"), "frozen content was sent");
    }
    assert_eq!(sink.messages().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_from_url_and_environment() {
    let sink = SmtpSink::start(Behaviour::new().credentials("mailer", "s3cret"));
    let mut env = Env::new(sink.port(), "");
    env.subscribers(3, &[]).await;
    env.smtp_url = format!("smtp://mailer@127.0.0.1:{}?tls=none", sink.port());
    // Wrong password: the run stops with one clear line, nothing is lost.
    let mut cmd = env.command(&["send", "campaigns/news-1.md", "--yes"]);
    cmd.env("BULLETIN_SMTP_PASSWORD", "wrong");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("authentication failed for mailer"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong"),
        "no password in messages: {stderr}"
    );
    assert!(sink.messages().is_empty());
    // The right one, from the environment.
    let mut cmd = env.command(&["dispatch"]);
    cmd.env("BULLETIN_SMTP_PASSWORD", "s3cret");
    let out = output(cmd).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(assert_no_duplicates(&sink.messages()).len(), 3);
}

/// `bulletin quickstart` in `dir`, with no BULLETIN_* variable.
async fn quickstart(dir: &std::path::Path) -> std::process::Output {
    let mut cmd = bulletin_in(dir);
    cmd.arg("quickstart").stdin(Stdio::null());
    output(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_sends_the_example_to_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::util::root();
    for f in [
        "bulletin.toml",
        "campaigns/2026-11-ebulletin.md",
        "examples/subscribers.csv",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        crate::util::write(dir.path(), f, &text);
    }
    let out = quickstart(dir.path()).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2026-11-ebulletin: written to outbox/: 25 (finished)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("sent"),
        "outbox files are never called sent: {stdout}"
    );
    let emls: Vec<_> = std::fs::read_dir(dir.path().join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(emls.len(), 25);
    let one = std::fs::read_to_string(&emls[0])
        .unwrap()
        .replace("\r\n ", " ");
    assert!(one.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    assert!(one.contains("Subject: GAATW e-bulletin"));
    // Again: nobody is mailed twice.
    let out = quickstart(dir.path()).await;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("already written to outbox/ by an earlier quickstart")
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("outbox"))
            .unwrap()
            .count(),
        25
    );
    // See: walkthrough report D. `report` and `status` say written, not sent.
    let bulletin = |args: &'static [&'static str]| {
        let out = bulletin_in(dir.path()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for args in [
        &["report", "2026-11-ebulletin"][..],
        &["report", "2026-11-ebulletin", "--format", "csv"],
        &[
            "report",
            "2026-11-ebulletin",
            "--state",
            "written",
            "--format",
            "json",
        ],
        &["status", "2026-11-ebulletin"],
    ] {
        let text = bulletin(args);
        assert!(text.contains("written"), "{args:?}: {text}");
        assert!(
            !text.replace("\"sent\"", "").contains("sent"),
            "{args:?}: outbox files are never called sent: {text}"
        );
    }
    let json = bulletin(&[
        "report",
        "2026-11-ebulletin",
        "--state",
        "written",
        "--format",
        "json",
    ]);
    assert_eq!(json.lines().count(), 25, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_runs_in_an_empty_folder_and_keeps_an_edited_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = quickstart(dir.path()).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("wrote campaigns/2026-11-ebulletin.md"),
        "{stdout}"
    );
    assert!(
        stdout.contains("written to outbox/: 25 (finished)"),
        "{stdout}"
    );
    let root = crate::util::root();
    assert_eq!(
        std::fs::read(dir.path().join("examples/subscribers.csv")).unwrap(),
        std::fs::read(root.join("examples/subscribers.csv")).unwrap(),
        "the embedded example is the repository's"
    );
    // A file the user edited is never overwritten.
    let campaign = dir.path().join("campaigns/2026-11-ebulletin.md");
    std::fs::write(&campaign, "edited").unwrap();
    let out = quickstart(dir.path()).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&campaign).unwrap(), "edited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signature_covers_the_list_unsubscribe_headers() {
    use base64::Engine as _;
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    // An ed25519 key is its 32-byte seed, base64.
    let seed = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    std::fs::write(env.path("dkim.key"), seed).unwrap();
    let mut config = std::fs::read_to_string(env.path("bulletin.toml")).unwrap();
    config.push_str("[dkim]\ndomain = \"alliance.example\"\nselector = \"s1\"\nkey_file = \"dkim.key\"\nalgorithm = \"ed25519\"\n");
    std::fs::write(env.path("bulletin.toml"), config).unwrap();
    env.subscribers(1, &[]).await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let raw = unfold(&sink.messages()[0].data);
    let sig = header(&raw, "DKIM-Signature").expect("signed");
    assert!(sig.contains("a=ed25519-sha256"), "{sig}");
    assert!(
        sig.contains("d=alliance.example") && sig.contains("s=s1"),
        "{sig}"
    );
    let signed: Vec<String> = sig
        .split(';')
        .map(str::trim)
        .find_map(|t| t.strip_prefix("h="))
        .unwrap()
        .split(':')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for h in [
        "from",
        "subject",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "message-id",
    ] {
        assert!(signed.iter().any(|s| s == h), "{h} not signed: {sig}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_without_a_terminal_needs_yes_and_sends_nothing() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(2, &[]).await;
    let out = env.run(&["send", "campaigns/news-1.md"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("add --yes") && stderr.contains("2 recipients of news"),
        "{stderr}"
    );
    assert!(sink.messages().is_empty());
    assert!(
        env.ok(&["status"]).await.contains("no campaigns yet"),
        "nothing frozen"
    );
    // A campaign whose list does not exist names the line to fix.
    let path = env.path("campaigns/news-1.md");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("list = \"news\"", "list = \"nope\"");
    std::fs::write(&path, text).unwrap();
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("campaigns/news-1.md:4: list \"nope\" does not exist"),
        "{stderr}"
    );
}

/// Reads the delivery status of each subscriber id for the only campaign.
async fn delivery_status(env: &Env, ids: &[i64]) -> Vec<(String, Option<String>)> {
    let store = env.store().await;
    let mut out = Vec::new();
    for id in ids {
        let row: (String, Option<String>) =
            sqlx::query_as("SELECT status, last_reply FROM deliveries WHERE subscriber_id = $1")
                .bind(id)
                .fetch_one(&crate::support::db::raw(store.location()).await)
                .await
                .unwrap();
        out.push(row);
    }
    store.close().await;
    out
}

// See: "Eligibility at the moment of sending": people who left five seconds
// into a rate-limited send were mailed 15-20 s later, the erased one with
// their address and name in To:.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_who_leave_during_a_send_are_skipped_not_mailed() {
    use axum::http::StatusCode;
    use bulletin::links::Urls;

    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    let config = env.path("bulletin.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("[smtp]\n", "[smtp]\nrate = 20\n")).unwrap();
    // 200 people; the four who will leave come last in the send order.
    let leavers = [
        "oneclick@example.net",
        "removed@example.net",
        "erased@example.net",
        "bounced@example.net",
    ];
    let mut csv = String::from("email,name,city\n");
    let mut stayers = BTreeSet::new();
    for i in 0..196 {
        csv.push_str(&format!("person{i}@example.net,Person {i},City {i}\n"));
        stayers.insert(format!("person{i}@example.net"));
    }
    for email in leavers {
        csv.push_str(&format!("{email},Leaving Person,Gone\n"));
    }
    std::fs::write(env.path("people.csv"), csv).unwrap();
    env.ok(&["lists", "add", "news", "--name", "News"]).await;
    env.ok(&["subscribers", "import", "people.csv", "--list", "news"])
        .await;
    let store = env.store().await;
    let list = store.list("news").await.unwrap().unwrap();
    let mut ids = Vec::new();
    for email in leavers {
        ids.push(store.subscriber(email).await.unwrap().unwrap().id);
    }

    let child = env
        .command(&["send", "campaigns/news-1.md", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A second into the send (20 messages at 20/s), four people leave.
    assert!(sink.wait_for(20, Duration::from_secs(60)).await >= 20);
    let signer = Signer::new(SECRET.as_bytes(), &[]);
    let leave = bulletin::links::Unsubscribe {
        subscriber: ids[0],
        list: list.id,
        campaign: None,
    };
    let url = Urls::new("https://news.example.org").unsubscribe(&signer, &leave);
    let path = url.strip_prefix("https://news.example.org").unwrap();
    let app = bulletin::web::router(crate::web::app_state(store.clone(), signer, None));
    let body = b"List-Unsubscribe=One-Click".to_vec();
    let form = Some("application/x-www-form-urlencoded");
    let r = crate::web::call(&app, crate::web::request("POST", path, form, body)).await;
    assert_eq!(r.status, StatusCode::OK, "one-click unsubscribe");
    env.ok(&["subscribers", "remove", leavers[1], "--list", "news"])
        .await;
    env.ok(&["subscribers", "forget", leavers[2]]).await;
    store
        .set_status(
            ids[3],
            "bounced",
            "bounce",
            Some("test"),
            bulletin::store::now(),
        )
        .await
        .unwrap();
    let during = sink.messages().len();
    assert!(during < 196, "they left while the send ran ({during} sent)");

    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sent 196") && stdout.contains("skipped 4"),
        "{stdout}"
    );
    let messages = sink.messages();
    let got = assert_no_duplicates(&messages);
    assert_eq!(got, stayers, "everyone else got one copy, the four none");
    for m in &messages {
        let data = String::from_utf8_lossy(&m.data);
        assert!(!data.contains("Leaving Person"), "{data}");
        for email in leavers {
            assert!(!data.contains(email), "{email} in a message");
        }
    }
    let rows = delivery_status(&env, &ids).await;
    for (email, (status, reason)) in leavers.iter().zip(&rows) {
        assert_eq!(status, "skipped", "{email}: {reason:?}");
    }
    let reasons: Vec<&str> = rows.iter().filter_map(|(_, r)| r.as_deref()).collect();
    assert_eq!(
        reasons,
        [
            "subscription unsubscribed before their turn",
            "subscription unsubscribed before their turn",
            // Erasure scrubs SMTP replies; the skip comes after it.
            "erased before their turn",
            "bounced before their turn",
        ]
    );
    store.close().await;
}

//! Returned mail acted on: bounces, complaints and mailto unsubscribes that
//! come back for a real campaign (sent through the sink) are matched to the
//! right subscriber by their VERP token or Message-ID, the rules applied once,
//! and the next campaign skips those people.

use std::time::Duration;

use crate::support::returned::{dsn_for, header};
use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};
use crate::support::{project_command, stdout_of_success};

/// A project folder like the dispatch tests use, its database on the
/// engine under test.
struct Env {
    dir: tempfile::TempDir,
    smtp: String,
    /// The `db` setting (`support::pg::db_setting`).
    db: String,
}

impl Env {
    async fn new(port: u16) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::support::pg::db_setting(dir.path()).await;
        std::fs::write(
            dir.path().join("bulletin.toml"),
            format!(
                "db = \"{db}\"\nbase_url = \"https://news.example.org\"\n\
                 [sender]\nfrom = \"News <news@alliance.example>\"\nbounce_domain = \"alliance.example\"\n\
                 [bounces]\nsoft_limit = 3\nsoft_window_days = 30\n"
            ),
        )
        .unwrap();
        for n in 1..=3 {
            crate::util::write(
                dir.path(),
                &format!("campaigns/news-{n}.md"),
                &format!(
                    "+++\nsubject = \"News {n}\"\npreheader = \"p\"\nlist = \"news\"\n+++\nHello {{{{subscriber.name}}}}.\n"
                ),
            );
        }
        Env {
            dir,
            smtp: format!("smtp://127.0.0.1:{port}?tls=none"),
            db,
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<Vec<u8>>) -> std::process::Output {
        self.run_at(args, stdin, None).await
    }

    /// Runs with the clock set to `now` (unix seconds, `BULLETIN_NOW`).
    async fn run_at(
        &self,
        args: &[&str],
        stdin: Option<Vec<u8>>,
        now: Option<i64>,
    ) -> std::process::Output {
        let secret = "bounce-test-secret-at-least-32-bytes-long";
        let mut cmd = project_command(self.dir.path(), secret, &self.smtp, args);
        if let Some(now) = now {
            cmd.env("BULLETIN_NOW", now.to_string());
        }
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let mut input = child.stdin.take().unwrap();
            if let Some(bytes) = stdin {
                input.write_all(&bytes).unwrap();
            }
            drop(input);
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        self.ok_at(args, None).await
    }

    /// Creates list `news` and adds each of `people` to it.
    async fn news_list(&self, people: &[&str]) {
        self.ok(&["lists", "add", "news", "--name", "News"]).await;
        for p in people {
            self.ok(&["subscribers", "add", p, "--list", "news"]).await;
        }
    }

    async fn ok_at(&self, args: &[&str], now: Option<i64>) -> String {
        stdout_of_success(self.run_at(args, None, now).await, args)
    }
}

/// The message the sink received for `to`.
fn received_for<'a>(messages: &'a [Received], to: &str) -> &'a Received {
    messages
        .iter()
        .find(|m| m.rcpt_to == [to])
        .unwrap_or_else(|| panic!("nothing sent to {to}"))
}

/// An RFC 3464 report sent back to the VERP address of `m`, named after
/// its connection and size, so that each message's report is new mail.
fn dsn(m: &Received, status: &str, diagnostic: &str) -> Vec<u8> {
    dsn_for(m, &rand_id(m), status, diagnostic)
}

fn rand_id(m: &Received) -> String {
    format!("{}{}", m.connection, m.data.len())
}

/// An RFC 5965 abuse report quoting the original (matched by Message-ID:
/// feedback loops strip the VERP address).
fn arf(m: &Received) -> Vec<u8> {
    format!(
        "From: complaints@isp.example\r\nTo: abuse@alliance.example\r\nSubject: Abuse report\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"b2\"\r\n\r\n\
         --b2\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n\
         --b2\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: ISP-FBL/1.0\r\nVersion: 1\r\n\r\n\
         --b2\r\nContent-Type: message/rfc822\r\n\r\nFrom: News <news@alliance.example>\r\nTo: {to}\r\n\
         Subject: News 1\r\nMessage-ID: {mid}\r\n\r\nHello.\r\n\r\n--b2--\r\n",
        to = m.rcpt_to[0],
        mid = header(m, "Message-ID"),
    )
    .into_bytes()
}

/// What a mail client sends to the List-Unsubscribe mailto address of `m`.
fn mailto_unsubscribe(m: &Received) -> Vec<u8> {
    let list_unsubscribe = header(m, "List-Unsubscribe");
    let mailto = list_unsubscribe
        .split("<mailto:")
        .nth(1)
        .and_then(|r| r.split('?').next())
        .unwrap()
        .to_string();
    format!(
        "From: {from}\r\nTo: {mailto}\r\nSubject: unsubscribe\r\nMessage-ID: <u1@client.example>\r\n\r\nunsubscribe\r\n",
        from = m.rcpt_to[0]
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_complaints_and_mailto_unsubscribes_stop_mail() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port()).await;
    env.news_list(&[
        "hard@example.net",
        "soft@example.net",
        "complainer@example.net",
        "leaver@example.net",
        "stays@example.net",
    ])
    .await;
    env.ok(&["lists", "add", "other", "--name", "Other"]).await;
    env.ok(&[
        "subscribers",
        "add",
        "complainer@example.net",
        "--list",
        "other",
    ])
    .await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let first = sink.messages();
    assert_eq!(first.len(), 5);

    // A hard bounce, ingested from standard input as an MTA alias would.
    let hard = dsn(
        received_for(&first, "hard@example.net"),
        "5.1.1",
        "550 5.1.1 <hard@example.net>: user unknown",
    );
    let out = env.run(&["bounces", "ingest"], Some(hard.clone())).await;
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("hard bounce: hard@example.net is now bounced (campaign news-1)"),
        "{line}"
    );
    // See: walkthrough report D. The history names the campaign, not its id.
    let show = env
        .run(&["subscribers", "show", "hard@example.net"], None)
        .await;
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains(" campaign=news-1"), "{show}");
    // The same message again changes nothing.
    let out = env.run(&["bounces", "ingest"], Some(hard)).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("already processed"));

    // A mailbox-full 5.2.2 is soft: recorded, still subscribed.
    let dir = env.dir.path();
    std::fs::write(
        dir.join("soft1.eml"),
        dsn(
            received_for(&first, "soft@example.net"),
            "5.2.2",
            "552 5.2.2 mailbox full",
        ),
    )
    .unwrap();
    let out = env.ok(&["bounces", "ingest", "soft1.eml"]).await;
    assert!(out.contains("soft bounce: recorded"), "{out}");

    // A complaint quoting the original's Message-ID.
    std::fs::write(
        dir.join("arf.eml"),
        arf(received_for(&first, "complainer@example.net")),
    )
    .unwrap();
    let out = env.ok(&["bounces", "ingest", "arf.eml"]).await;
    assert!(
        out.contains("complaint: complainer@example.net is now complained (campaign news-1)"),
        "{out}"
    );
    let show = env
        .ok(&["subscribers", "show", "complainer@example.net"])
        .await;
    assert!(
        !show.contains("confirmed"),
        "unsubscribed from every list: {show}"
    );

    // Mail to the List-Unsubscribe mailto address.
    std::fs::write(
        dir.join("leave.eml"),
        mailto_unsubscribe(received_for(&first, "leaver@example.net")),
    )
    .unwrap();
    let out = env.ok(&["bounces", "ingest", "leave.eml"]).await;
    assert!(
        out.contains("unsubscribe by mail: leaver@example.net unsubscribed"),
        "{out}"
    );

    // An out-of-office reply is not a bounce.
    std::fs::write(
        dir.join("ooo.eml"),
        "From: stays@example.net\r\nTo: news@alliance.example\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n",
    )
    .unwrap();
    let out = env.ok(&["bounces", "ingest", "ooo.eml"]).await;
    assert!(out.contains("auto-reply, ignored"), "{out}");

    // The next campaign skips the hard bounce, the complainer and the leaver.
    env.ok(&["send", "campaigns/news-2.md", "--yes"]).await;
    assert!(sink.wait_for(7, Duration::from_secs(10)).await >= 7);
    let second: Vec<_> = sink.messages()[5..]
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    let mut second_sorted = second.clone();
    second_sorted.sort();
    assert_eq!(second_sorted, ["soft@example.net", "stays@example.net"]);

    // Two more soft bounces from two more campaigns: bounced (3 in 30 days).
    let all = sink.messages();
    std::fs::write(
        dir.join("soft2.eml"),
        dsn(
            received_for(&all[5..], "soft@example.net"),
            "4.2.2",
            "452 4.2.2 mailbox full",
        ),
    )
    .unwrap();
    env.ok(&["bounces", "ingest", "soft2.eml"]).await;
    env.ok(&["send", "campaigns/news-3.md", "--yes"]).await;
    let all = sink.messages();
    std::fs::write(
        dir.join("soft3.eml"),
        dsn(
            received_for(&all[7..], "soft@example.net"),
            "5.2.2",
            "552 5.2.2 over quota",
        ),
    )
    .unwrap();
    let out = env.ok(&["bounces", "ingest", "soft3.eml"]).await;
    assert!(out.contains("is now bounced"), "{out}");

    let list = env.ok(&["bounces", "list"]).await;
    assert!(list.contains("hard: 5.1.1"), "{list}");
    assert!(list.contains("complained"), "{list}");
    assert!(list.contains("soft-bounce score 3.0 reached 3"), "{list}");
    let status = env.ok(&["status", "news-1", "--format", "json"]).await;
    let status: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert!(status["bounces"].as_i64().unwrap() >= 1, "{status}");
    assert_eq!(status["complaints"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_moves_processed_mail_to_cur() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port()).await;
    env.news_list(&["gone@example.net"]).await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let m = sink.messages();
    let maildir = env.dir.path().join("Maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(
        maildir.join("new/1.host"),
        dsn(&m[0], "5.1.1", "550 user unknown"),
    )
    .unwrap();
    std::fs::write(
        maildir.join("new/2.host"),
        b"From: a@b.example\r\nSubject: hello\r\n\r\njust mail\r\n",
    )
    .unwrap();
    let out = env.ok(&["bounces", "scan", "Maildir"]).await;
    assert!(out.contains("2 processed, 0 left in new/"), "{out}");
    assert_eq!(std::fs::read_dir(maildir.join("new")).unwrap().count(), 0);
    let mut cur: Vec<_> = std::fs::read_dir(maildir.join("cur"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    cur.sort();
    assert_eq!(cur, ["1.host:2,S", "2.host:2,S"]);
    let show = env.ok(&["subscribers", "show", "gone@example.net"]).await;
    assert!(show.contains("bounced"), "{show}");
    // A scan of an empty new/ does nothing and says nothing.
    assert_eq!(env.ok(&["bounces", "scan", "Maildir"]).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_with_an_unusable_database_asks_the_mta_to_retry() {
    // About a SQLite file that is not a database: on either engine.
    let env = Env::new(1).await;
    let config = env.dir.path().join("bulletin.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen(&env.db, "b.db", 1)).unwrap();
    std::fs::write(
        env.dir.path().join("b.db"),
        b"this is not a database, it is text",
    )
    .unwrap();
    let out = env
        .run(
            &["bounces", "ingest"],
            Some(b"From: x@y.example\r\n\r\nhi\r\n".to_vec()),
        )
        .await;
    assert_eq!(
        out.status.code(),
        Some(75),
        "EX_TEMPFAIL keeps the message queued: {out:?}"
    );
}

/// A delivery status report with one `Final-Recipient` block per line,
/// sent to `to` (a VERP address, or the bare bounce address when the
/// envelope was lost), quoting `message_id` when given.
fn report_to(to: &str, message_id: Option<&str>, lines: &[(String, &str)]) -> Vec<u8> {
    let blocks: String = lines
        .iter()
        .map(|(rcpt, status)| {
            format!(
                "Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n\
                 Diagnostic-Code: smtp; 550 {status} <{rcpt}>: refused\r\n\r\n"
            )
        })
        .collect();
    let quoted = message_id.map_or(String::new(), |m| format!("Message-ID: {m}\r\n"));
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n\
         To: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         MIME-Version: 1.0\r\nMessage-ID: <dsn.{n}@mx.example.net>\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
         {blocks}--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n{quoted}From: news@alliance.example\r\n\r\n--b1--\r\n",
        n = lines.len() + to.len() + quoted.len(),
    )
    .into_bytes()
}

/// One person per line of `subscribers export` (those who would get mail).
async fn mailable(env: &Env) -> Vec<String> {
    let csv = env.ok(&["subscribers", "export", "--list", "news"]).await;
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect()
}

async fn status_of(env: &Env, email: &str) -> String {
    let show = env.ok(&["subscribers", "show", email]).await;
    show.lines()
        .find_map(|l| l.strip_prefix("status:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

// See: "only our own mail changes anyone" (forged DSN with 300
// Final-Recipient lines; forged ARF).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_or_quoted_mail_changes_anyone() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port()).await;
    env.ok(&["lists", "add", "news", "--name", "News"]).await;
    let people: Vec<String> = (0..300).map(|i| format!("p{i:03}@example.net")).collect();
    let csv = format!("email\n{}\n", people.join("\n"));
    std::fs::write(env.dir.path().join("people.csv"), csv).unwrap();
    env.ok(&["subscribers", "import", "people.csv", "--list", "news"])
        .await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let sent = sink.messages();
    assert_eq!(sent.len(), 300);
    let ingest = |raw: Vec<u8>| async {
        let out = env.run(&["bounces", "ingest"], Some(raw)).await;
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };

    // A forged report with no token naming all 300 as hard bounces.
    let every_one: Vec<(String, &str)> = people.iter().map(|p| (p.clone(), "5.1.1")).collect();
    let out = ingest(report_to("bounces@alliance.example", None, &every_one)).await;
    assert!(out.contains("bounce unmatched"), "{out}");
    assert_eq!(mailable(&env).await.len(), 300, "nobody changed");

    // A forged abuse report naming p001, quoting a Message-ID we never wrote.
    let forged_arf = "From: complaints@isp.example\r\nTo: abuse@alliance.example\r\nSubject: Abuse report\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"b2\"\r\n\r\n\
         --b2\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n\
         --b2\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n\
         Original-Rcpt-To: p001@example.net\r\n\r\n\
         --b2\r\nContent-Type: message/rfc822\r\n\r\nFrom: News <news@alliance.example>\r\nTo: p001@example.net\r\n\
         Subject: News 1\r\nMessage-ID: <c7.s43@alliance.example>\r\n\r\nHello.\r\n\r\n--b2--\r\n";
    let out = ingest(forged_arf.as_bytes().to_vec()).await;
    assert!(out.contains("complaint unmatched"), "{out}");
    assert_eq!(status_of(&env, "p001@example.net").await, "active");

    // A genuine report to p002's VERP address that also names eight others:
    // only p002 changes.
    let p002 = received_for(&sent, "p002@example.net");
    let mut lines: Vec<(String, &str)> = vec![(people[2].clone(), "5.1.1")];
    lines.extend(people[3..11].iter().map(|p| (p.clone(), "5.1.1")));
    let out = ingest(report_to(&p002.mail_from, None, &lines)).await;
    assert!(
        out.contains("hard bounce: p002@example.net is now bounced"),
        "{out}"
    );
    assert_eq!(status_of(&env, "p002@example.net").await, "bounced");
    for p in &people[3..11] {
        assert_eq!(status_of(&env, p).await, "active", "{p}");
    }
    // Its own line decides: p011's soft line is not made hard by others'.
    let p011 = received_for(&sent, "p011@example.net");
    let lines = [(people[12].clone(), "5.1.1"), (people[11].clone(), "4.2.2")];
    let out = ingest(report_to(&p011.mail_from, None, &lines)).await;
    assert!(out.contains("soft bounce: recorded"), "{out}");
    assert_eq!(status_of(&env, "p011@example.net").await, "active");
    assert_eq!(status_of(&env, "p012@example.net").await, "active");

    // The envelope lost, but the report quotes p020's signed Message-ID: p020,
    // whatever address the report names (a forwarding address here).
    let p020 = received_for(&sent, "p020@example.net");
    let mid = header(p020, "Message-ID");
    let lines = [("p020@forwarded.example".to_string(), "5.1.1")];
    let out = ingest(report_to("bounces@alliance.example", Some(&mid), &lines)).await;
    assert!(
        out.contains("hard bounce: p020@example.net is now bounced"),
        "{out}"
    );
    assert_eq!(status_of(&env, "p020@example.net").await, "bounced");

    // p030's Message-ID with one character of its signature changed.
    let mid = header(received_for(&sent, "p030@example.net"), "Message-ID");
    let at = mid.find('@').unwrap() - 2;
    let mut forged = mid.clone().into_bytes();
    forged[at] = if forged[at] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    let lines = [(people[30].clone(), "5.1.1")];
    let out = ingest(report_to("bounces@alliance.example", Some(&forged), &lines)).await;
    assert!(out.contains("bounce unmatched"), "{out}");
    assert!(out.contains("is not signed by us"), "{out}");
    assert_eq!(status_of(&env, "p030@example.net").await, "active");

    let mut left = mailable(&env).await;
    left.sort();
    let mut expected: Vec<String> = people.clone();
    expected.retain(|p| p != "p002@example.net" && p != "p020@example.net");
    assert_eq!(left, expected);

    // The three forgeries are kept for review, with why; nothing else is.
    let list = env.ok(&["bounces", "list", "--unmatched"]).await;
    let rows: Vec<&str> = list.lines().collect();
    assert_eq!(rows.len(), 3, "{list}");
    assert!(rows[0].contains("bounce") && rows[0].contains("MAILER-DAEMON@mx.example.net"));
    assert!(rows[0].contains("Undelivered Mail Returned to Sender"));
    assert!(
        rows[0].contains("no VERP token and no Message-ID of ours"),
        "{list}"
    );
    assert!(rows[1].contains("complaint") && rows[1].contains("complaints@isp.example"));
    assert!(rows[1].contains("Abuse report"));
    assert!(
        rows[1].contains("Message-ID <c7.s43@alliance.example> is not one of ours"),
        "{list}"
    );
    assert!(rows[2].contains("is not signed by us"), "{list}");
    // The main list shows only what was acted on.
    let acted = env.ok(&["bounces", "list"]).await;
    assert_eq!(acted.matches("hard:").count(), 2, "{acted}");
}

/// The "bounce score X of Y" line of `subscribers show`.
async fn score_of(env: &Env, email: &str, now: i64) -> String {
    let show = env.ok_at(&["subscribers", "show", email], Some(now)).await;
    show.lines()
        .find(|l| l.starts_with("bounce score "))
        .unwrap_or_default()
        .to_string()
}

/// Ingests the soft bounce (552 mailbox full) of `m` at `now`; the output line.
async fn soft_bounce_at(env: &Env, m: &Received, diagnostic: &str, now: i64) -> String {
    let out = env
        .run_at(
            &["bounces", "ingest"],
            Some(dsn(m, "5.2.2", &format!("552 5.2.2 {diagnostic}"))),
            Some(now),
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

// See: issue 13 item 3, the soft-bounce score (adds 1 per campaign, halves
// every soft_window_days, halved by a delivery, bounced at soft_limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_bounce_score_decays_and_bounces_at_the_limit() {
    const HOUR: i64 = 3_600;
    const DAY: i64 = 86_400;
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port()).await;
    crate::util::write(
        env.dir.path(),
        "campaigns/news-4.md",
        "+++\nsubject = \"News 4\"\npreheader = \"p\"\nlist = \"news\"\n+++\nHello.\n",
    );
    env.news_list(&[
        "often@example.net",
        "seldom@example.net",
        "retried@example.net",
        "recovers@example.net",
    ])
    .await;
    for n in 1..=3 {
        env.ok(&["send", &format!("campaigns/news-{n}.md"), "--yes"])
            .await;
    }
    let sent = sink.messages();
    assert_eq!(sent.len(), 12);
    let of = |campaign: usize, to: &str| -> Received {
        received_for(&sent[(campaign - 1) * 4..campaign * 4], to).clone()
    };
    // Returned mail arrives from a day after the sends on.
    let t0 = bulletin::store::now() + DAY;

    // Three campaigns bounce within two hours: 3.0 of 3, bounced.
    let to = "often@example.net";
    let out = soft_bounce_at(&env, &of(1, to), "mailbox full", t0).await;
    assert!(out.contains("soft bounce: recorded"), "{out}");
    soft_bounce_at(&env, &of(2, to), "mailbox full", t0 + HOUR).await;
    assert_eq!(
        score_of(&env, to, t0 + HOUR).await,
        "bounce score 2.0 of 3 (halves every 30 days)"
    );
    let out = soft_bounce_at(&env, &of(3, to), "mailbox full", t0 + 2 * HOUR).await;
    assert!(out.contains("is now bounced"), "{out}");
    assert_eq!(status_of(&env, to).await, "bounced");
    let show = env
        .ok_at(&["subscribers", "show", to], Some(t0 + 2 * HOUR))
        .await;
    assert!(
        show.contains("bounce score 3.0 of 3 (halves every 30 days)"),
        "{show}"
    );
    assert!(show.contains("suppressed:  yes"), "{show}");
    // The history: time, campaign, reason, score after.
    let t = |at: i64| {
        chrono::DateTime::from_timestamp(at, 0)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string()
    };
    for (at, campaign, score) in [
        (t0, "news-1", "1.0"),
        (t0 + HOUR, "news-2", "2.0"),
        (t0 + 2 * HOUR, "news-3", "3.0"),
    ] {
        let line = format!(
            "  {}  {campaign}  5.2.2 552 5.2.2 mailbox full -> {score}",
            t(at)
        );
        assert!(show.contains(&line), "{line:?} in {show}");
    }
    assert!(!mailable(&env).await.contains(&to.to_string()));

    // The same three, 31 days apart: each has more than halved before the
    // next, so the score stays under 2 and the person stays.
    let to = "seldom@example.net";
    for (n, at) in [(1, t0), (2, t0 + 31 * DAY), (3, t0 + 62 * DAY)] {
        let out = soft_bounce_at(&env, &of(n, to), "mailbox full", at).await;
        assert!(out.contains("soft bounce: recorded"), "{out}");
    }
    assert_eq!(status_of(&env, to).await, "active");
    // 1 + 2^(-31/30) * (1 + 2^(-31/30)) = 1.727...
    assert_eq!(
        score_of(&env, to, t0 + 62 * DAY).await,
        "bounce score 1.7 of 3 (halves every 30 days)"
    );
    // And it keeps fading: 30 days later, half.
    assert_eq!(
        score_of(&env, to, t0 + 92 * DAY).await,
        "bounce score 0.9 of 3 (halves every 30 days)"
    );

    // One campaign's message bouncing three times (retries) counts once.
    let to = "retried@example.net";
    for (i, why) in ["mailbox full", "over quota", "mailbox full, try later"]
        .iter()
        .enumerate()
    {
        let out = soft_bounce_at(&env, &of(1, to), why, t0 + i as i64 * HOUR).await;
        assert!(out.contains("soft bounce: recorded"), "{out}");
    }
    let show = env
        .ok_at(&["subscribers", "show", to], Some(t0 + 2 * HOUR))
        .await;
    assert!(show.contains("bounce score 1.0 of 3"), "{show}");
    assert_eq!(show.matches("  news-1  5.2.2").count(), 1, "{show}");

    // A delivery in between halves it: 2.0 -> 1.0, so a third campaign's
    // bounce makes 2.0, not 3.0.
    let to = "recovers@example.net";
    soft_bounce_at(&env, &of(1, to), "mailbox full", t0).await;
    soft_bounce_at(&env, &of(2, to), "mailbox full", t0).await;
    assert_eq!(
        score_of(&env, to, t0).await,
        "bounce score 2.0 of 3 (halves every 30 days)"
    );
    let out = env
        .ok_at(&["send", "campaigns/news-4.md", "--yes"], Some(t0 + HOUR))
        .await;
    // Every delivery recorded, the one whose score it lowers too (on
    // PostgreSQL that round goes through a transaction under the write
    // lock rather than the one statement of an ordinary round).
    assert!(out.contains("news-4: sent 3 (finished)"), "{out}");
    assert!(sink.messages()[12..].iter().any(|m| m.rcpt_to == [to]));
    let show = env
        .ok_at(&["subscribers", "show", to], Some(t0 + HOUR))
        .await;
    assert!(show.contains("bounce score 1.0 of 3"), "{show}");
    assert!(
        show.contains(&format!("  {}  news-4  delivered -> 1.0", t(t0 + HOUR))),
        "{show}"
    );
    let out = soft_bounce_at(&env, &of(3, to), "mailbox full", t0 + 2 * HOUR).await;
    assert!(out.contains("soft bounce: recorded"), "{out}");
    assert_eq!(
        score_of(&env, to, t0 + 2 * HOUR).await,
        "bounce score 2.0 of 3 (halves every 30 days)"
    );
    // Unless that delivery bounces after all: its halving is undone, 3.0.
    let news4 = sink.messages()[12..]
        .iter()
        .find(|m| m.rcpt_to == [to])
        .unwrap()
        .clone();
    let out = soft_bounce_at(&env, &news4, "mailbox full", t0 + 3 * HOUR).await;
    assert!(out.contains("is now bounced"), "{out}");

    // `reactivate` starts the score again from nothing.
    env.ok(&["subscribers", "reactivate", to]).await;
    assert_eq!(
        score_of(&env, to, t0 + 4 * HOUR).await,
        "bounce score 0.0 of 3 (halves every 30 days)"
    );
}

/// Each event of `email`, as (kind, source, list slug, campaign slug), read
/// from the database by an independent observer.
async fn events_of(
    env: &Env,
    email: &str,
) -> Vec<(String, String, Option<String>, Option<String>)> {
    let location = bulletin::store::Location::parse(std::path::Path::new(&env.db), None).unwrap();
    let raw = crate::support::db::raw(location).await;
    sqlx::query_as(
        "SELECT e.kind, e.source, l.slug, c.slug FROM events e
         JOIN subscribers s ON s.id = e.subscriber_id
         LEFT JOIN lists l ON l.id = e.list_id
         LEFT JOIN campaigns c ON c.id = e.campaign_id
         WHERE s.email = $1 ORDER BY e.id",
    )
    .bind(email)
    .fetch_all(&raw)
    .await
    .unwrap()
}

/// Every event written in a campaign's context names the campaign: the
/// dispatcher's hard bounce, a returned hard bounce, a complaint (and the
/// unsubscribes it makes). A mailto unsubscribe names its list and the
/// campaign it came in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_the_campaign_they_came_from() {
    let sink = SmtpSink::start(Behaviour::new().rcpt_reply("refused", "550 5.1.1 user unknown"));
    let env = Env::new(sink.port()).await;
    env.news_list(&[
        "refused@example.net",
        "hard@example.net",
        "complainer@example.net",
        "leaver@example.net",
    ])
    .await;
    env.ok(&["lists", "add", "other", "--name", "Other"]).await;
    env.ok(&[
        "subscribers",
        "add",
        "complainer@example.net",
        "--list",
        "other",
    ])
    .await;
    // One refusal makes `send` exit non-zero; the others are sent.
    let out = env
        .run(&["send", "campaigns/news-1.md", "--yes"], None)
        .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent 3, failed 1"),
        "{out:?}"
    );
    let sent = sink.messages();
    assert_eq!(sent.len(), 3, "the refused address got nothing");
    let campaign = Some("news-1".to_string());
    let news = Some("news".to_string());
    let other = Some("other".to_string());
    let after_signup = |events: Vec<_>| events.into_iter().skip(1).collect::<Vec<_>>();

    // Refused at RCPT by the server: the dispatcher's hard bounce.
    let refused = after_signup(events_of(&env, "refused@example.net").await);
    assert_eq!(
        refused,
        [("bounced".into(), "dispatch".into(), None, campaign.clone())]
    );

    // A hard bounce returned later, matched by its VERP address.
    let hard = dsn(
        received_for(&sent, "hard@example.net"),
        "5.1.1",
        "550 5.1.1 <hard@example.net>: user unknown",
    );
    let out = env.run(&["bounces", "ingest"], Some(hard)).await;
    assert!(out.status.success(), "{out:?}");
    let hard = after_signup(events_of(&env, "hard@example.net").await);
    assert_eq!(
        hard,
        [("bounced".into(), "pipe".into(), None, campaign.clone())]
    );

    // A complaint, matched by the quoted Message-ID: every unsubscribe it
    // makes names the campaign complained about, the other list's too.
    let dir = env.dir.path();
    std::fs::write(
        dir.join("arf.eml"),
        arf(received_for(&sent, "complainer@example.net")),
    )
    .unwrap();
    env.ok(&["bounces", "ingest", "arf.eml"]).await;
    let complainer = events_of(&env, "complainer@example.net").await;
    let (kinds, after): (Vec<_>, Vec<_>) = complainer
        .into_iter()
        .skip(2)
        .map(|(kind, _, list, c)| (kind, (list, c)))
        .unzip();
    assert_eq!(kinds, ["unsubscribed", "unsubscribed", "complained"]);
    assert_eq!(
        after,
        [
            (news.clone(), campaign.clone()),
            (other, campaign.clone()),
            (None, campaign.clone())
        ]
    );

    // Mail to the List-Unsubscribe mailto address: its signed address
    // names the list and the campaign.
    std::fs::write(
        dir.join("leave.eml"),
        mailto_unsubscribe(received_for(&sent, "leaver@example.net")),
    )
    .unwrap();
    env.ok(&["bounces", "ingest", "leave.eml"]).await;
    let leaver = after_signup(events_of(&env, "leaver@example.net").await);
    assert_eq!(
        leaver,
        [("unsubscribed".into(), "mailto".into(), news, campaign)]
    );
}

//! The campaign lifecycle through the real binary against the in-process
//! SMTP sink, counting what the server received per recipient: `cancel`
//! mid-run, `send --replace`, `send --only-new` / `--again`, `report` and
//! `status`.

use std::collections::{BTreeSet, HashMap};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::dispatch::Env;
use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};

const FILE: &str = "campaigns/news-1.md";

/// How many messages each address received.
fn per_recipient(messages: &[Received]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in messages {
        for r in &m.rcpt_to {
            *seen.entry(r.clone()).or_insert(0) += 1;
        }
    }
    seen
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn edit_config(env: &Env, from: &str, to: &str) {
    let path = env.dir.path().join("bulletin.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains(from), "{config}");
    std::fs::write(&path, config.replace(from, to)).unwrap();
}

async fn status_json(env: &Env) -> serde_json::Value {
    let out = env.ok(&["status", "news-1", "--format", "json"]).await;
    serde_json::from_str(out.lines().next().expect("a campaign")).unwrap()
}

/// Adds `n` new people to list `news`; returns their addresses.
async fn add_people(env: &Env, n: usize) -> Vec<String> {
    let mut csv = String::from("email,name,city\n");
    let new: Vec<String> = (0..n).map(|i| format!("new{i}@example.net")).collect();
    for email in &new {
        csv.push_str(&format!("{email},New,Here\n"));
    }
    std::fs::write(env.dir.path().join("new.csv"), csv).unwrap();
    env.ok(&["subscribers", "import", "new.csv", "--list", "news"])
        .await;
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_run_stops_sending_and_keeps_what_was_sent() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    // One connection at 20 messages a second: 200 people take 10 s.
    edit_config(&env, "connections = 4", "connections = 1\nrate = 20.0");
    env.subscribers(200, &[]).await;
    let mut cmd = env.command(&["send", FILE, "--yes"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let run = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    while sink.messages().len() < 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = env.ok(&["cancel", "news-1"]).await;
    assert!(cancelled.contains("news-1: cancelled"), "{cancelled}");
    let at_cancel = sink.messages().len();
    let out: Output = run.await.unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("cancelled"),
        "{stdout}{}",
        text(&out.stderr)
    );
    // At most the one message in flight on the one connection went out after.
    let sent = sink.messages().len();
    assert!(sent <= at_cancel + 1, "{sent} sent, {at_cancel} at cancel");
    assert!(sent < 200, "the run stopped early: {sent}");
    let seen = per_recipient(&sink.messages());
    assert!(seen.values().all(|&n| n == 1), "nobody twice");

    let status = status_json(&env).await;
    assert_eq!(status["status"], "cancelled", "{status}");
    assert_eq!(status["deliveries"]["sent"], sent as u64, "{status}");
    assert_eq!(
        status["deliveries"]["skipped"],
        (200 - sent) as u64,
        "{status}"
    );
    let text_status = env.ok(&["status", "news-1"]).await;
    assert!(text_status.contains("[cancelled]"), "{text_status}");
    assert!(text_status.contains("cancelled "), "{text_status}");

    // Nothing resumes it: dispatch and send leave it alone.
    env.ok(&["dispatch"]).await;
    let again = env.run(&["send", FILE, "--yes"]).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("cancelled"), "{again:?}");
    let only_new = env.run(&["send", FILE, "--only-new", "--yes"]).await;
    assert!(
        text(&only_new.stderr).contains(&format!(
            "sends it to everyone on news as a new campaign (the {sent} who got it too)"
        )),
        "{only_new:?}"
    );
    assert_eq!(sink.messages().len(), sent, "nothing more sent");
    // Cancelling twice says why not.
    let twice = env.run(&["cancel", "news-1"]).await;
    assert_eq!(twice.status.code(), Some(2));
    assert!(
        text(&twice.stderr).contains("cannot be cancelled: it is already cancelled"),
        "{twice:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_scheduled_campaign_sends_nothing() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(3, &[]).await;
    env.send_in(FILE, 2).await;
    let cancel = env.ok(&["cancel", FILE]).await;
    // See: walkthrough report D ("0 not sent" for a campaign not started).
    assert!(
        cancel.contains("cancelled before it started; nobody had been mailed yet"),
        "{cancel}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.ok(&["dispatch"]).await;
    assert_eq!(sink.messages().len(), 0);
    assert_eq!(status_json(&env).await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_before_sending_changes_what_is_sent_and_refuses_after() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(3, &[]).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    env.ok(&["send", FILE, "--yes", "--at", &later]).await;
    // Not sent yet: --only-new has nothing to add and says so.
    let early = env.run(&["send", FILE, "--only-new", "--yes"]).await;
    assert_eq!(early.status.code(), Some(2));
    assert!(
        text(&early.stderr).contains("has not been sent yet"),
        "{early:?}"
    );
    // Moving the schedule prints the new time.
    let even_later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let moved = env.ok(&["send", FILE, "--yes", "--at", &even_later]).await;
    assert!(moved.contains("news-1: moved from"), "{moved}");
    assert!(moved.contains("scheduled for"), "{moved}");

    let path = env.dir.path().join(FILE);
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("News for", "Corrected news for")
        .replace("Hello", "CORRECTED");
    std::fs::write(&path, fixed).unwrap();
    // Frozen long ago, as far as `status` can tell: replacing freezes the
    // campaign again, and `status` says when.
    let location = bulletin::store::Location::parse(std::path::Path::new(&env.db), None).unwrap();
    let raw = crate::support::db::raw(location).await;
    sqlx::query("UPDATE campaigns SET created_at = 86400")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let long_ago = status_json(&env).await["frozen_at"].clone();
    assert!(
        long_ago.as_str().unwrap().starts_with("1970-01-02"),
        "{long_ago}"
    );
    // The file has no time: the replaced campaign keeps its own, even
    // with --yes.
    let kept = env.ok(&["send", FILE, "--replace", "--yes"]).await;
    assert!(kept.contains("news-1: replaced"), "{kept}");
    let frozen_at = status_json(&env).await["frozen_at"].clone();
    assert!(
        !frozen_at.as_str().unwrap().starts_with("1970"),
        "{frozen_at}"
    );
    let due = chrono::DateTime::parse_from_rfc3339(&even_later).unwrap();
    let due = due.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M");
    assert!(kept.contains(&format!("scheduled for {due}")), "{kept}");
    assert_eq!(sink.messages().len(), 0, "nothing sent before its time");
    assert_eq!(status_json(&env).await["status"], "scheduled");
    // Nor does a send_at in the file that has already passed (the campaign
    // was moved since) make it go now.
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let with_past = std::fs::read_to_string(&path).unwrap().replacen(
        "+++\n",
        &format!("+++\nsend_at = {past}\n"),
        1,
    );
    std::fs::write(&path, &with_past).unwrap();
    let kept = env.ok(&["send", FILE, "--replace", "--yes"]).await;
    assert!(kept.contains(&format!("scheduled for {due}")), "{kept}");
    assert_eq!(sink.messages().len(), 0, "nothing sent before its time");
    std::fs::write(
        &path,
        with_past.replacen(&format!("send_at = {past}\n"), "", 1),
    )
    .unwrap();
    // "Now" is asked for, and asked about.
    let asked = env.run(&["send", FILE, "--replace", "--at", "now"]).await;
    assert_eq!(asked.status.code(), Some(2), "{asked:?}");
    assert!(
        text(&asked.stderr).contains("not in the future"),
        "{asked:?}"
    );
    assert_eq!(sink.messages().len(), 0, "nothing sent without --yes");

    let out = env
        .ok(&["send", FILE, "--replace", "--at", "now", "--yes"])
        .await;
    assert!(out.contains("news-1: replaced"), "{out}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    for m in &messages {
        let raw = text(&m.data);
        assert!(raw.contains("Subject: Corrected news for"), "{raw}");
        assert!(raw.contains("CORRECTED"), "{raw}");
    }

    let refused = env.run(&["send", FILE, "--replace", "--yes"]).await;
    assert_eq!(refused.status.code(), Some(2));
    let err = text(&refused.stderr);
    assert!(err.contains("cannot be replaced"), "{err}");
    assert!(err.contains("3 messages already went out"), "{err}");
    assert_eq!(sink.messages().len(), 3, "nothing more sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_refuses_once_a_message_went_out_mid_campaign() {
    let sink = SmtpSink::start(Behaviour::new().defer_first("person1@", 5));
    let env = Env::new(sink.port(), "retry_wait_secs = 0\nretry_base_secs = 60");
    env.subscribers(3, &[]).await;
    // person1 is deferred: the campaign stays `sending`, partly sent.
    env.run(&["send", FILE, "--yes"]).await;
    assert_eq!(status_json(&env).await["status"], "sending");
    let refused = env.run(&["send", FILE, "--replace", "--yes"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("cannot be replaced: it is sending"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_new_reaches_exactly_the_people_who_joined_since() {
    let sink = SmtpSink::start(Behaviour::new().discard_data());
    let env = Env::new(sink.port(), "");
    env.subscribers(500, &[]).await;
    env.ok(&["send", FILE, "--yes"]).await;
    assert_eq!(sink.messages().len(), 500);
    let new = add_people(&env, 10).await;

    // Without --yes and no terminal: refused, with the count in the reason.
    let asked = env.run(&["send", FILE, "--only-new"]).await;
    assert_eq!(asked.status.code(), Some(2));
    let err = text(&asked.stderr);
    assert!(
        err.contains("to 10 subscribers of news for the first time; nobody twice"),
        "{err}"
    );
    // Plain send still refuses and names --only-new.
    let plain = env.run(&["send", FILE, "--yes"]).await;
    assert!(text(&plain.stderr).contains("--only-new"), "{plain:?}");

    env.ok(&["send", FILE, "--only-new", "--yes"]).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 510);
    let seen = per_recipient(&messages);
    assert!(seen.values().all(|&n| n == 1), "nobody twice");
    let late: BTreeSet<String> = messages[500..]
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    assert_eq!(late, new.into_iter().collect());
    let status = status_json(&env).await;
    assert_eq!(status["deliveries"]["sent"], 510, "{status}");
    assert_eq!(status["status"], "sent", "{status}");

    // Nobody new: nothing to do.
    let none = env.ok(&["send", FILE, "--only-new", "--yes"]).await;
    assert!(none.contains("nothing to send"), "{none}");
    // --again says how many already have it.
    let again = env.run(&["send", FILE, "--again"]).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("already went to 510 people"),
        "{again:?}"
    );
    assert_eq!(sink.messages().len(), 510);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_lists_every_recipient_failures_first() {
    let sink = SmtpSink::start(Behaviour::new().rcpt_reply("reject@", "550 5.1.1 user unknown"));
    let env = Env::new(sink.port(), "");
    let all = env.subscribers(5, &["reject@example.net"]).await;
    let out = env.run(&["send", FILE, "--yes"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    let table = env.ok(&["report", "news-1"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("address"), "{table}");
    assert_eq!(lines.len(), 1 + all.len(), "{table}");
    assert!(lines[1].starts_with("reject@example.net"), "{table}");
    assert!(
        lines[1].contains("failed") && lines[1].contains("5.1.1"),
        "{table}"
    );
    for a in &all {
        assert!(table.contains(a.as_str()), "{a} missing: {table}");
    }

    let csv = env.ok(&["report", FILE, "--format", "csv"]).await;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    assert_eq!(
        reader.headers().unwrap(),
        vec!["address", "state", "attempts", "last_reply", "time", "list"]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), all.len());
    assert_eq!(&rows[0][0], "reject@example.net");
    assert_eq!(&rows[0][1], "failed");
    assert!(rows[1..].iter().all(|r| &r[1] == "sent"), "{csv}");

    let json = env.ok(&["report", "news-1", "--format", "json"]).await;
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), all.len());
    assert_eq!(rows[0]["state"], "failed");
    assert_eq!(rows[0]["attempts"], 1);
    assert!(rows[0]["last_reply"].as_str().unwrap().contains("550"));
    let time = rows[0]["time"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");

    let sent = env
        .ok(&["report", "news-1", "--state", "sent", "--format", "csv"])
        .await;
    assert_eq!(sent.lines().count(), 1 + 5, "{sent}");
    let bad = env.run(&["report", "news-1", "--state", "lost"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("--state \"lost\""), "{bad:?}");
    let missing = env.run(&["report", "nope"]).await;
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(
        text(&missing.stderr).trim_end(),
        "bulletin: no campaign named \"nope\"; `bulletin status` lists them all",
    );
    // A name one typo away gets a "did you mean", from report and status alike.
    for command in ["report", "status"] {
        let typo = env.run(&[command, "news-"]).await;
        assert_eq!(typo.status.code(), Some(2), "{typo:?}");
        assert_eq!(
            text(&typo.stderr).trim_end(),
            "bulletin: no campaign named \"news-\"; did you mean \"news-1\"? (`bulletin status` lists them all)",
        );
    }

    // status: list, frozen time, schedule and counts; JSON times ISO 8601.
    let status = env.ok(&["status", "news-1"]).await;
    assert!(status.contains("list news"), "{status}");
    assert!(status.contains("frozen "), "{status}");
    assert!(
        status.contains("failed 1") && status.contains("sent 5"),
        "{status}"
    );
    let json = status_json(&env).await;
    for key in ["frozen_at", "send_at", "started_at", "finished_at"] {
        let t = json[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: {json}"));
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "{key}: {t}"
        );
    }
}

/// Rewrites the campaign file to send to people who join its list later,
/// until `until` (`resend_to_new`, `resend_until`).
fn opt_in_to_newcomers(env: &Env, until: chrono::DateTime<chrono::Utc>) {
    let path = env.dir.path().join(FILE);
    let opted_in = std::fs::read_to_string(&path).unwrap().replacen(
        "list = \"news\"\n",
        &format!(
            "list = \"news\"\nresend_to_new = true\nresend_until = \"{}\"\n",
            until.to_rfc3339()
        ),
        1,
    );
    std::fs::write(&path, opted_in).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_sends_to_new_people_while_the_campaign_opts_in() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(5, &[]).await;
    let until = chrono::Utc::now() + chrono::Duration::days(7);
    opt_in_to_newcomers(&env, until);
    env.ok(&["send", FILE, "--yes"]).await;
    assert_eq!(sink.messages().len(), 5);
    // Nobody new: dispatch does nothing.
    env.ok(&["dispatch"]).await;
    assert_eq!(sink.messages().len(), 5);

    let new = add_people(&env, 2).await;
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains("joined its list since"), "{out}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 7);
    let late: BTreeSet<String> = messages[5..]
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    assert_eq!(late, new.into_iter().collect());
    assert!(per_recipient(&messages).values().all(|&n| n == 1));
    assert_eq!(status_json(&env).await["status"], "sent");
    env.ok(&["dispatch"]).await;
    assert_eq!(sink.messages().len(), 7, "nobody twice");
}

/// Once `resend_until` has passed, `dispatch` mails nobody new: the window
/// closes by itself. (The clock is moved past it with `BULLETIN_NOW`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_mails_nobody_new_after_resend_until() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(3, &[]).await;
    let until = chrono::Utc::now() + chrono::Duration::days(2);
    opt_in_to_newcomers(&env, until);
    env.ok(&["send", FILE, "--yes"]).await;
    assert_eq!(sink.messages().len(), 3);
    add_people(&env, 2).await;
    let after = (until + chrono::Duration::hours(1)).timestamp().to_string();
    let mut late = env.command(&["dispatch"]);
    late.env("BULLETIN_NOW", &after);
    let out = tokio::task::spawn_blocking(move || late.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sink.messages().len(), 3, "the window had closed");
    // Within the window the same two are mailed, once each.
    env.ok(&["dispatch"]).await;
    assert_eq!(sink.messages().len(), 5);
    assert!(per_recipient(&sink.messages()).values().all(|&n| n == 1));
}

/// Moving a scheduled campaign to a time that has passed asks first:
/// without a terminal and without `--yes` it stays scheduled and nothing is
/// sent; with `--yes` it goes now, as `--at now --yes` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_schedule_into_the_past_asks_first() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(2, &[]).await;
    let ahead = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    env.ok(&["send", FILE, "--yes", "--at", &ahead]).await;
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let refused = env.run(&["send", FILE, "--at", &past]).await;
    let said = format!("{}{}", text(&refused.stdout), text(&refused.stderr));
    assert!(said.contains("is not in the future"), "{said}");
    assert!(said.contains("not moved"), "{said}");
    assert!(
        sink.messages().is_empty(),
        "nothing sent without confirmation"
    );
    assert_eq!(status_json(&env).await["status"], "scheduled");
    let not_now = env.run(&["send", FILE, "--at", "now"]).await;
    assert!(text(&not_now.stderr).contains("not moved"), "asks first");
    assert!(sink.messages().is_empty());
    let moved = env.ok(&["send", FILE, "--at", "now", "--yes"]).await;
    assert!(moved.contains("moved from"), "{moved}");
    assert_eq!(sink.messages().len(), 2);
    assert!(per_recipient(&sink.messages()).values().all(|&n| n == 1));
}

/// See: walkthrough report C. After `cancel`, `send` on the file does not
/// suggest `--only-new` (which would refuse), and once `--again` made
/// `news-1-2`, `--only-new` on the file sends that copy to the newcomers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_cancel_the_suggestions_lead_somewhere() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(2, &[]).await;
    let at = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    env.ok(&["send", FILE, "--yes", "--at", &at]).await;
    env.ok(&["cancel", "news-1"]).await;

    let plain = env.run(&["send", FILE, "--yes"]).await;
    let err = text(&plain.stderr);
    assert!(!plain.status.success());
    assert!(err.contains("was already cancelled"), "{err}");
    assert!(!err.contains("--only-new"), "{err}");
    assert!(
        err.contains(&format!("`bulletin send {FILE} --again`")),
        "{err}"
    );
    let only_new = env.run(&["send", FILE, "--only-new", "--yes"]).await;
    let err = text(&only_new.stderr);
    assert!(
        err.contains("was cancelled, so it goes to nobody new"),
        "{err}"
    );
    // Nobody got it: no "(the 0 who got it too)".
    assert!(
        err.trim_end().ends_with(&format!(
            "`bulletin send {FILE} --again` sends it to everyone on news as a new campaign"
        )),
        "{err}"
    );

    // Following the suggestion works, and so does --only-new afterwards.
    let again = env.ok(&["send", FILE, "--again", "--yes"]).await;
    assert!(again.contains("news-1-2"), "{again}");
    assert_eq!(sink.messages().len(), 2);
    let plain = env.run(&["send", FILE, "--yes"]).await;
    let err = text(&plain.stderr);
    assert!(err.contains("(latest copy: news-1-2)"), "{err}");
    assert!(
        err.contains(&format!("`bulletin send {FILE} --only-new` sends news-1-2")),
        "{err}"
    );
    let new = add_people(&env, 1).await;
    // The copy's name is not a file: the error names the command that works.
    let by_name = env.run(&["send", "news-1-2", "--only-new", "--yes"]).await;
    let err = text(&by_name.stderr);
    assert!(
        err.contains("news-1-2 is a campaign, not a file")
            && err.contains("`bulletin send news-1.md --only-new`"),
        "{err}"
    );
    let out = env.ok(&["send", FILE, "--only-new", "--yes"]).await;
    assert!(out.contains("news-1-2"), "{out}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[2].rcpt_to, new);
}

/// See: walkthrough report B. `cancel` on a sent campaign that still mails
/// newcomers ends that window: what went out stays, nobody who joins later
/// gets it, and `status` says so (it said "mails newcomers until" before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_newcomer_window_of_a_sent_campaign() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(3, &[]).await;
    let until = chrono::Utc::now() + chrono::Duration::days(7);
    opt_in_to_newcomers(&env, until);
    env.ok(&["send", FILE, "--yes"]).await;
    assert_eq!(sink.messages().len(), 3);
    let open = status_json(&env).await;
    assert_eq!(open["status"], "sent");
    assert!(open["mails_newcomers_until"].is_string(), "{open}");
    let table = env.ok(&["status", "news-1"]).await;
    assert!(table.contains("mails newcomers until "), "{table}");

    // --replace points at cancel, and cancel does it.
    let replace = env.run(&["send", FILE, "--replace", "--yes"]).await;
    assert!(
        text(&replace.stderr)
            .contains("`bulletin cancel news-1` stops sending it to people who join"),
        "{replace:?}"
    );
    let new = add_people(&env, 1).await;
    let cancel = env.ok(&["cancel", "news-1"]).await;
    assert!(
        cancel.contains("no longer sent to people who join"),
        "{cancel}"
    );
    assert!(cancel.contains("the 3 messages sent stay"), "{cancel}");
    env.ok(&["dispatch"]).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 3, "{new:?} got nothing");
    assert!(!per_recipient(&messages).contains_key(&new[0]));

    let closed = status_json(&env).await;
    assert_eq!(closed["status"], "sent");
    assert!(closed.get("mails_newcomers_until").is_none(), "{closed}");
    assert!(closed["newcomers_ended_at"].is_string(), "{closed}");
    let table = env.ok(&["status", "news-1"]).await;
    assert!(
        table.contains("no longer sent to newcomers (cancelled "),
        "{table}"
    );
    // Over now: a second cancel is refused.
    let again = env.run(&["cancel", "news-1"]).await;
    assert!(
        text(&again.stderr).contains("cannot be cancelled: it is already finished"),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_to_new_without_an_end_date_is_refused_with_the_key() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(1, &[]).await;
    let path = env.dir.path().join(FILE);
    let opted_in = std::fs::read_to_string(&path).unwrap().replacen(
        "list = \"news\"\n",
        "list = \"news\"\nresend_to_new = true\n",
        1,
    );
    std::fs::write(&path, opted_in).unwrap();
    let out = env.run(&["send", FILE, "--yes"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("news-1.md:5") && err.contains("resend_until"),
        "{err}"
    );
    assert_eq!(sink.messages().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_campaign_moved_ahead_is_scheduled_again_not_sent() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "hold_after_hours = 0");
    env.subscribers(2, &[]).await;
    env.send_in(FILE, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    env.run(&["dispatch"]).await;
    assert_eq!(status_json(&env).await["status"], "held");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = env.ok(&["send", FILE, "--yes", "--at", &later]).await;
    assert!(
        out.contains("moved from") && out.contains("scheduled for"),
        "{out}"
    );
    assert_eq!(status_json(&env).await["status"], "scheduled");
    assert_eq!(sink.messages().len(), 0);
}

//! Welcome mail (issue 11, item 5) through the real binary against the
//! in-process SMTP sink, counting what the sink received per recipient: a
//! campaign with `trigger = "welcome"` goes once to each person confirmed
//! on its list after `send` (sign-up confirmation clicked twice, `subscribers
//! add`, `subscribers import --welcome`), to nobody already on the list,
//! nobody twice however often `dispatch` runs, nobody who left before their
//! turn, and nobody after `cancel`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::dispatch::{Env, header, unfold};
use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};
use crate::util::http;
use crate::web::Served;

const SUBJECT: &str = "Welcome aboard";
const FORM: &str = "application/x-www-form-urlencoded";

/// Writes the welcome campaign for `list` as campaigns/welcome.md.
fn welcome_file(env: &Env, list: &str, subject: &str) {
    std::fs::write(
        env.dir.path().join("campaigns/welcome.md"),
        format!(
            "+++\nsubject = \"{subject}\"\nlist = \"{list}\"\ntrigger = \"welcome\"\n+++\n\
             # Hello\n\n## Glad you are here\n\nHi {{{{subscriber.name | \"there\"}}}}.\n"
        ),
    )
    .unwrap();
}

fn subject(m: &Received) -> String {
    header(&unfold(&m.data), "Subject")
        .unwrap_or_default()
        .to_string()
}

/// Welcome messages received, per recipient.
fn welcomes(sink: &SmtpSink, subject_line: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in sink
        .messages()
        .iter()
        .filter(|m| subject(m) == subject_line)
    {
        for r in &m.rcpt_to {
            *counts.entry(r.clone()).or_default() += 1;
        }
    }
    counts
}

fn each_once(addresses: &[&str]) -> BTreeMap<String, usize> {
    addresses.iter().map(|a| (a.to_string(), 1)).collect()
}

/// The path of the confirmation link in a received message.
fn confirm_path(m: &Received) -> String {
    let mail = unfold(&m.data).replace("=\r\n", "").replace("=3D", "=");
    let base = "https://news.example.org";
    let start = mail
        .find(&format!("{base}/confirm/"))
        .unwrap_or_else(|| panic!("no confirm link in {mail}"));
    let url: String = mail[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '<')
        .collect();
    url.strip_prefix(base).unwrap().to_string()
}

/// A list with people on it before the welcome mail exists, then the
/// welcome mail sent: nobody gets anything yet.
async fn list_with_welcome(env: &Env, sink: &SmtpSink, list_flags: &[&str]) {
    let mut add = vec!["lists", "add", "club", "--name", "Book Club"];
    add.extend_from_slice(list_flags);
    env.ok(&add).await;
    std::fs::write(
        env.dir.path().join("old.csv"),
        "email\nold1@example.net\nold2@example.net\n",
    )
    .unwrap();
    env.ok(&["subscribers", "import", "old.csv", "--list", "club"])
        .await;
    welcome_file(env, "club", SUBJECT);
    let out = env.run(&["send", "campaigns/welcome.md"]).await;
    assert!(!out.status.success(), "no --yes, no terminal: refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("each person confirmed on club gets this once"),
        "{err}"
    );
    let out = env.ok(&["send", "campaigns/welcome.md", "--yes"]).await;
    assert!(
        out.contains("welcome: from now on, each person confirmed on club gets this once"),
        "{out}"
    );
    let out = env.ok(&["dispatch"]).await;
    assert!(
        !out.contains("welcome"),
        "an idle welcome mail has no run: {out}"
    );
    assert_eq!(
        sink.messages().len(),
        0,
        "people already on the list get nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_confirmed_twice_gets_one_welcome_mail() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    list_with_welcome(&env, &sink, &["--double-opt-in", "--public"]).await;
    let server = Served::start(&env).await;
    let form = "email=nia%40example.org&name=Nia&list=club";
    let r = http(
        &server.addr,
        "POST",
        "/subscribe",
        &[("Content-Type", FORM)],
        form.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sink.wait_for(1, Duration::from_secs(30)).await, 1);
    let confirmation = &sink.messages()[0];
    assert_eq!(confirmation.rcpt_to, ["nia@example.org"]);
    let path = confirm_path(confirmation);
    // Pending: no welcome row yet, so dispatch sends nothing.
    env.ok(&["dispatch"]).await;
    assert_eq!(sink.messages().len(), 1);

    // The link opened twice, its button pressed twice.
    for click in 0..2 {
        let page = http(&server.addr, "GET", &path, &[], b"").await;
        assert_eq!(page.status, 200, "click {click}: {}", page.body);
        let r = http(&server.addr, "POST", &path, &[("Content-Type", FORM)], b"").await;
        assert_eq!(r.status, 200, "click {click}: {}", r.body);
        assert!(r.body.contains("You are subscribed"), "{}", r.body);
    }
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains("welcome: sent 1"), "{out}");
    env.ok(&["dispatch"]).await;
    assert_eq!(welcomes(&sink, SUBJECT), each_once(&["nia@example.org"]));
    assert_eq!(sink.messages().len(), 2, "the confirmation and one welcome");

    let status = env.ok(&["status", "welcome"]).await;
    assert!(status.contains("[welcome (active)]"), "{status}");
    assert!(status.contains("deliveries: sent 1"), "{status}");
    let json = env.ok(&["status", "welcome", "--format", "json"]).await;
    assert!(json.contains("\"trigger\":\"welcome\""), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_add_gets_one_and_dispatch_twice_sends_nobody_twice() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    list_with_welcome(&env, &sink, &["--double-opt-in"]).await;

    // Before anything went out, the welcome mail can be replaced.
    welcome_file(&env, "club", "Welcome, reader");
    let out = env
        .ok(&["send", "campaigns/welcome.md", "--replace", "--yes"])
        .await;
    assert!(out.contains("welcome: replaced from"), "{out}");

    let out = env.add_confirmed("ola@example.org", "club").await;
    assert!(
        out.contains("welcome mail welcome: sent to them by the next `bulletin dispatch`"),
        "{out}"
    );
    // Pending (a confirmation email), then confirmed with consent on record.
    env.ok(&["subscribers", "add", "pia@example.org", "--list", "club"])
        .await;
    env.add_confirmed("pia@example.org", "club").await;
    env.ok(&["dispatch"]).await;
    env.ok(&["dispatch"]).await;
    // Added again: already confirmed, nothing queued.
    let out = env.add_confirmed("ola@example.org", "club").await;
    assert!(!out.contains("welcome mail"), "{out}");
    env.ok(&["dispatch"]).await;
    assert_eq!(
        welcomes(&sink, "Welcome, reader"),
        each_once(&["ola@example.org", "pia@example.org"])
    );
    assert_eq!(welcomes(&sink, SUBJECT), BTreeMap::new());

    // Once a welcome went out, no replace; and one welcome mail per list.
    let out = env
        .run(&["send", "campaigns/welcome.md", "--replace", "--yes"])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 welcome messages already went out"), "{err}");
    std::fs::copy(
        env.dir.path().join("campaigns/welcome.md"),
        env.dir.path().join("campaigns/welcome-2.md"),
    )
    .unwrap();
    let out = env.run(&["send", "campaigns/welcome-2.md", "--yes"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("list club already has a welcome mail, welcome")
            && err.contains("bulletin cancel welcome"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_with_welcome_reaches_each_new_person_once_and_without_it_nobody() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    // `--welcome` without a welcome mail: refused, nothing imported.
    env.ok(&["lists", "add", "other", "--name", "Other"]).await;
    std::fs::write(env.dir.path().join("one.csv"), "email\nx@example.net\n").unwrap();
    let out = env
        .run(&[
            "subscribers",
            "import",
            "one.csv",
            "--list",
            "other",
            "--welcome",
        ])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--welcome: list other has no welcome mail to send"),
        "{err}"
    );

    list_with_welcome(&env, &sink, &[]).await;
    let new: Vec<String> = (0..20).map(|i| format!("new{i}@example.net")).collect();
    let mut csv = String::from("email,name\nold1@example.net,Old\n");
    for a in &new {
        csv.push_str(&format!("{a},New\n"));
    }
    std::fs::write(env.dir.path().join("new.csv"), &csv).unwrap();
    let import = ["subscribers", "import", "new.csv", "--list", "club"];
    let welcome = [&import[..], &["--welcome"]].concat();

    let out = env.ok(&[&welcome[..], &["--dry-run"]].concat()).await;
    assert!(
        out.contains("welcome mail:        20 newly confirmed would get"),
        "{out}"
    );
    let out = env.ok(&welcome).await;
    assert!(
        out.contains("welcome mail:        20 newly confirmed get"),
        "{out}"
    );
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains("welcome: sent 20"), "{out}");
    // The same file again confirms nobody new.
    let out = env.ok(&welcome).await;
    assert!(out.contains("welcome mail:        0 "), "{out}");
    env.ok(&["dispatch"]).await;
    let expected: Vec<&str> = new.iter().map(String::as_str).collect();
    assert_eq!(welcomes(&sink, SUBJECT), each_once(&expected));

    // Without --welcome, new people get nothing.
    std::fs::write(
        env.dir.path().join("more.csv"),
        "email\nmore1@example.net\nmore2@example.net\n",
    )
    .unwrap();
    let out = env
        .ok(&["subscribers", "import", "more.csv", "--list", "club"])
        .await;
    assert!(!out.contains("welcome mail"), "{out}");
    env.ok(&["dispatch"]).await;
    assert_eq!(sink.messages().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_is_skipped_and_cancel_stops_the_welcome_mail() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    list_with_welcome(&env, &sink, &[]).await;
    for who in ["ana", "ben", "cy"] {
        env.ok(&[
            "subscribers",
            "add",
            &format!("{who}@example.org"),
            "--list",
            "club",
        ])
        .await;
    }
    // Ben leaves before dispatch runs.
    env.ok(&["subscribers", "remove", "ben@example.org", "--list", "club"])
        .await;
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains("welcome: sent 2, skipped 1"), "{out}");
    assert_eq!(
        welcomes(&sink, SUBJECT),
        each_once(&["ana@example.org", "cy@example.org"])
    );

    // Dee is confirmed, then the welcome mail is cancelled before dispatch.
    env.ok(&["subscribers", "add", "dee@example.org", "--list", "club"])
        .await;
    let out = env.ok(&["cancel", "welcome"]).await;
    assert!(
        out.contains("welcome: welcome mail stopped; nobody confirmed from now on gets it, 1 waiting for it not sent, 2 sent before"),
        "{out}"
    );
    env.ok(&["subscribers", "add", "eve@example.org", "--list", "club"])
        .await;
    env.ok(&["dispatch"]).await;
    assert_eq!(sink.messages().len(), 2, "nothing after cancel");
    let status = env.ok(&["status", "welcome"]).await;
    assert!(status.contains("[welcome (cancelled)]"), "{status}");
    let out = env.run(&["send", "campaigns/welcome.md", "--yes"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("welcome mail welcome was cancelled"), "{err}");
}

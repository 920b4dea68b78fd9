//! Small operator commands through the real binary against the in-process
//! SMTP sink: `subscribers add` on a double opt-in list (the confirmation
//! email, or `--confirmed`), `test --to`/`--as`, and `lists rename`, `edit`
//! and `remove`. Mail is counted per recipient as the sink received it.

use std::collections::BTreeMap;

use bulletin::links::Signer;
use bulletin::store::Store;

use crate::dispatch::{Env, SECRET, header, unfold};
use crate::support::output;
use crate::support::pg;
use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};
use crate::web::{app_state, call, request};

/// How many messages each recipient got.
fn per_recipient(messages: &[Received]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for m in messages {
        for r in &m.rcpt_to {
            *count.entry(r.clone()).or_default() += 1;
        }
    }
    count
}

/// A project folder (`dispatch::Env`) whose database is of the engine
/// under test (`support::pg`).
fn env(port: u16) -> Env {
    let env = Env::new(port, "");
    pg::config_db(env.dir.path());
    env
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// The body of a received message, quoted-printable soft breaks undone.
fn body(m: &Received) -> String {
    unfold(&m.data).replace("=\r\n", "").replace("=3D", "=")
}

/// The path of the confirmation link in a message.
fn confirm_path(mail: &str) -> String {
    let base = "https://news.example.org";
    let start = mail
        .find(&format!("{base}/confirm/"))
        .unwrap_or_else(|| panic!("no confirm link in {mail}"));
    let url: String = mail[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    url.strip_prefix(base).unwrap().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Creates `club` ("Book Club"), a double opt-in list.
async fn book_club(env: &Env) {
    env.ok(&[
        "lists",
        "add",
        "club",
        "--name",
        "Book Club",
        "--double-opt-in",
    ])
    .await;
}

/// `lists` output: the row of `slug`, split on whitespace.
async fn list_row(env: &Env, slug: &str) -> Option<Vec<String>> {
    let out = env.ok(&["lists"]).await;
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(slug))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
}

// ---------------------------------------------------------------------------
// 7. Double opt-in from the CLI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_on_double_opt_in_list_sends_one_confirmation_whose_link_confirms() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    book_club(&env).await;
    let out = env
        .ok(&[
            "subscribers",
            "add",
            "Nia@Example.org",
            "--list",
            "club",
            "--name",
            "Nia",
        ])
        .await;
    assert!(
        out.contains("subscribed nia@example.org to club (pending): confirmation email sent via"),
        "{out}"
    );
    let messages = sink.messages();
    assert_eq!(per_recipient(&messages), counts(&[("nia@example.org", 1)]));
    let mail = body(&messages[0]);
    assert_eq!(
        header(&mail, "Subject"),
        Some("Please confirm: Book Club"),
        "{mail}"
    );
    // Pending: not counted as receiving until the link is opened.
    let row = list_row(&env, "club").await.unwrap();
    assert_eq!(row[row.len() - 4..], ["0", "1", "0", "0"], "{row:?}");

    // The link confirms, through the web router `bulletin serve` runs.
    let store = Store::open(pg::location(&pg::config_db(env.dir.path())))
        .await
        .unwrap();
    let app = bulletin::web::router(app_state(
        store.clone(),
        Signer::new(SECRET.as_bytes(), &[]),
        None,
    ));
    let reply = call(&app, request("POST", &confirm_path(&mail), None, vec![])).await;
    assert_eq!(reply.status, 200);
    store.close().await;
    let row = list_row(&env, "club").await.unwrap();
    assert_eq!(row[row.len() - 4..], ["1", "0", "0", "1"], "{row:?}");
    let show = env.ok(&["subscribers", "show", "nia@example.org"]).await;
    assert!(show.contains("confirmation sent"), "{show}");

    // Once confirmed, adding again sends nothing more.
    let out = env
        .ok(&["subscribers", "add", "nia@example.org", "--list", "club"])
        .await;
    assert!(out.contains("already on club (confirmed)"), "{out}");
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_confirmed_sends_nothing_and_confirms_at_once() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    book_club(&env).await;
    let out = env.add_confirmed("ola@example.org", "club").await;
    assert!(
        out.contains("subscribed ola@example.org to club (confirmed): consent on record (--confirmed), no confirmation email sent"),
        "{out}"
    );
    // Someone left pending is confirmed by --confirmed too.
    env.ok(&["subscribers", "add", "pia@example.org", "--list", "club"])
        .await;
    assert_eq!(
        per_recipient(&sink.messages()),
        counts(&[("pia@example.org", 1)])
    );
    let out = env.add_confirmed("pia@example.org", "club").await;
    assert!(
        out.contains("confirmed pia@example.org on club: consent on record"),
        "{out}"
    );
    assert_eq!(sink.messages().len(), 1, "--confirmed sends nothing");
    let row = list_row(&env, "club").await.unwrap();
    assert_eq!(row[row.len() - 4..], ["2", "0", "0", "2"], "{row:?}");
    let show = env.ok(&["subscribers", "show", "ola@example.org"]).await;
    assert!(show.contains("consent on record"), "{show}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_on_double_opt_in_list_without_a_server_writes_nothing() {
    let env = env(1);
    env.ok(&["lists", "add", "club", "--name", "Club", "--double-opt-in"])
        .await;
    let mut cmd = env.command(&["subscribers", "add", "x@example.org", "--list", "club"]);
    cmd.env_remove("BULLETIN_SMTP_URL");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("BULLETIN_SMTP_URL"), "{err}");
    assert!(err.contains("--confirmed"), "{err}");
    let row = list_row(&env, "club").await.unwrap();
    assert_eq!(row[row.len() - 4..], ["0", "0", "0", "0"], "{row:?}");
}

// ---------------------------------------------------------------------------
// 8. Test sends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_sends_one_copy_to_each_address_repeated_or_comma_separated() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    env.subscribers(1, &[]).await;
    let out = env
        .ok(&[
            "test",
            "campaigns/news-1.md",
            "--to",
            "a@example.org",
            "--to",
            "b@example.org",
        ])
        .await;
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(
        per_recipient(&sink.messages()),
        counts(&[("a@example.org", 1), ("b@example.org", 1)])
    );
    env.ok(&[
        "test",
        "campaigns/news-1.md",
        "--to",
        "c@example.org,d@example.org",
    ])
    .await;
    assert_eq!(
        per_recipient(&sink.messages()),
        counts(&[
            ("a@example.org", 1),
            ("b@example.org", 1),
            ("c@example.org", 1),
            ("d@example.org", 1)
        ])
    );
    // Test copies are not deliveries: the subscriber got nothing.
    assert!(
        !per_recipient(&sink.messages()).contains_key("person0@example.net"),
        "a subscriber was mailed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_as_fills_that_subscribers_data_and_refuses_a_stranger() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    env.subscribers(0, &["ana@example.net"]).await;
    let out = env
        .ok(&[
            "test",
            "campaigns/news-1.md",
            "--to",
            "me@example.org",
            "--as",
            "ANA@example.net",
        ])
        .await;
    assert!(out.contains("filled as ANA@example.net"), "{out}");
    let messages = sink.messages();
    assert_eq!(per_recipient(&messages), counts(&[("me@example.org", 1)]));
    let mail = body(&messages[0]);
    assert_eq!(
        header(&mail, "Subject"),
        Some("[TEST] News for Special"),
        "{mail}"
    );
    assert!(mail.contains("Hello Special, from Here."), "{mail}");

    // Without --as: the sample name and no attributes.
    env.ok(&["test", "campaigns/news-1.md", "--to", "me@example.org"])
        .await;
    let mail = body(&sink.messages()[1]);
    assert!(mail.contains("Hello Sample Recipient"), "{mail}");
    assert!(!mail.contains("Special"), "{mail}");

    let out = env
        .run(&[
            "test",
            "campaigns/news-1.md",
            "--to",
            "me@example.org",
            "--as",
            "nobody@example.org",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--as nobody@example.org: no subscriber with that address in"),
        "{err}"
    );
    assert_eq!(sink.messages().len(), 2, "nothing sent for a stranger");
}

// ---------------------------------------------------------------------------
// 9. Lists you can fix

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_rename_and_edit() {
    let env = env(1);
    env.subscribers(2, &[]).await;
    let out = env.ok(&["lists", "rename", "news", "members"]).await;
    assert!(out.contains("renamed list news to members"), "{out}");
    assert!(list_row(&env, "news").await.is_none());
    let row = list_row(&env, "members").await.unwrap();
    assert_eq!(row[row.len() - 4..], ["2", "0", "0", "2"], "{row:?}");
    // The people came along.
    let out = env
        .ok(&[
            "subscribers",
            "add",
            "person0@example.net",
            "--list",
            "members",
        ])
        .await;
    assert!(out.contains("already on members (confirmed)"), "{out}");

    env.ok(&["lists", "add", "other", "--name", "Other"]).await;
    let out = env.run(&["lists", "rename", "members", "other"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("\"other\" already exists"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["lists", "rename", "members", "Bad Slug"]).await;
    assert!(
        stderr(&out).contains("invalid list slug"),
        "{}",
        stderr(&out)
    );

    let out = env
        .ok(&[
            "lists",
            "edit",
            "members",
            "--name",
            "Members",
            "--description",
            "For members",
            "--public",
            "yes",
            "--double-opt-in",
            "yes",
        ])
        .await;
    assert!(out.contains("double opt-in, public"), "{out}");
    let store = Store::open(pg::location(&pg::config_db(env.dir.path())))
        .await
        .unwrap();
    let list = store.require_list("members").await.unwrap();
    assert_eq!(
        (list.name.as_str(), list.description.as_str()),
        ("Members", "For members")
    );
    assert!(list.public && list.double_opt_in);
    store.close().await;
    env.ok(&["lists", "edit", "members", "--public", "no"])
        .await;
    let row = list_row(&env, "members").await.unwrap();
    assert!(
        row.contains(&"opt-in".to_string()) && !row.contains(&"public".to_string()),
        "{row:?}"
    );

    let out = env.run(&["lists", "edit", "members"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("nothing to change"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["lists", "edit", "nope", "--name", "X"]).await;
    assert!(
        stderr(&out).contains("no list \"nope\""),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_remove_refuses_a_list_with_people_and_with_force_keeps_them() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    env.subscribers(0, &["ana@example.net"]).await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(sink.messages().len(), 1);

    let out = env.run(&["lists", "remove", "news"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("1 confirmed or pending"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(list_row(&env, "news").await.is_some());

    let out = env.ok(&["lists", "remove", "news", "--force"]).await;
    assert!(out.contains("removed list news; 1 subscriber(s)"), "{out}");
    assert!(list_row(&env, "news").await.is_none());
    // The person, their delivery and their history stay.
    let show = env.ok(&["subscribers", "show", "ana@example.net"]).await;
    assert!(show.contains("status:      active"), "{show}");
    assert!(show.contains("deliveries:  1 (1 sent)"), "{show}");
    let status = env.ok(&["status"]).await;
    assert!(status.contains("news-1"), "{status}");
    // No campaign can go to it; the name is free again.
    let out = env
        .run(&["subscribers", "add", "x@example.org", "--list", "news"])
        .await;
    assert!(
        stderr(&out).contains("no list \"news\""),
        "{}",
        stderr(&out)
    );
    env.ok(&["lists", "add", "news", "--name", "News again"])
        .await;
    let row = list_row(&env, "news").await.unwrap();
    assert_eq!(row[row.len() - 4..], ["0", "0", "0", "0"], "{row:?}");

    // An empty list goes without --force.
    env.ok(&["lists", "add", "empty", "--name", "Empty"]).await;
    let out = env.ok(&["lists", "remove", "empty"]).await;
    assert!(out.contains("removed list empty; 0 subscriber(s)"), "{out}");
    assert_eq!(sink.messages().len(), 1);
}

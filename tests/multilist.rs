//! Campaigns to several lists (`list = ["ebulletin", "partners"]`) through
//! the real binary against the in-process SMTP sink, counting what the
//! server received per recipient: each person once, through the earliest
//! list they are on; List-Id, unsubscribe and preference links naming that
//! list (and `bulletin serve` acting on it); the claim switching to another
//! list of the campaign for someone who left the first after queueing; bad
//! `list` arrays refused before anything is written.

use std::collections::{BTreeMap, HashMap};

use crate::dispatch::{Env, header, unfold};
use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};
use crate::util::http;
use crate::web::Served;

const FILE: &str = "campaigns/both.md";
const BASE: &str = "https://news.example.org";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Creates list `slug` (named `name`) with these people on it.
async fn list_with(env: &Env, slug: &str, name: &str, emails: &[String]) {
    env.ok(&["lists", "add", slug, "--name", name]).await;
    add_to(env, slug, emails).await;
}

/// Adds these people to list `slug`.
async fn add_to(env: &Env, slug: &str, emails: &[String]) {
    let mut csv = String::from("email,name\n");
    for e in emails {
        csv.push_str(&format!("{e},{e}\n"));
    }
    let file = format!("{slug}-{}.csv", emails.len());
    std::fs::write(env.dir.path().join(&file), csv).unwrap();
    env.ok(&["subscribers", "import", &file, "--list", slug])
        .await;
}

/// Writes `campaigns/both.md` with this `list = ...` value.
fn campaign(env: &Env, list: &str) {
    std::fs::write(
        env.dir.path().join(FILE),
        format!(
            "+++\nsubject = \"To both\"\npreheader = \"p\"\nlist = {list}\n+++\n# Section\n\n## Article\n\nHello {{{{subscriber.name}}}}.\n"
        ),
    )
    .unwrap();
}

fn people(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("p{i}@example.net")).collect()
}

/// Each recipient's messages (unfolded), by address.
fn by_recipient(messages: &[Received]) -> HashMap<String, Vec<String>> {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for m in messages {
        for r in &m.rcpt_to {
            seen.entry(r.clone()).or_default().push(unfold(&m.data));
        }
    }
    seen
}

/// The list a List-Id header names: `"Name" <slug.alliance.example>` -> slug.
fn list_id_slug(raw: &str) -> String {
    let value = header(raw, "List-Id").expect("a List-Id");
    let inner = value.rsplit_once('<').expect("<...>").1;
    inner
        .strip_suffix(".alliance.example>")
        .unwrap_or_else(|| panic!("List-Id {value}"))
        .to_string()
}

/// The https URL of the List-Unsubscribe header, as a path on our server.
fn one_click_path(raw: &str) -> String {
    let value = header(raw, "List-Unsubscribe").expect("List-Unsubscribe");
    let url = value
        .split(',')
        .map(|p| p.trim().trim_start_matches('<').trim_end_matches('>'))
        .find(|u| u.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https URL in {value}"));
    url.strip_prefix(BASE).expect("our base URL").to_string()
}

/// The preference-center link in the body (quoted-printable, whose soft
/// line breaks are undone first), as a path on our server.
fn preferences_path(raw: &str) -> String {
    let raw = raw.replace("=\r\n", "");
    let start = raw
        .find(&format!("{BASE}/preferences/"))
        .unwrap_or_else(|| panic!("no preferences link in {raw}"));
    let url: String = raw[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "-_/:.".contains(*c))
        .collect();
    url.strip_prefix(BASE).unwrap().to_string()
}

async fn status_json(env: &Env) -> serde_json::Value {
    let out = env.ok(&["status", "both", "--format", "json"]).await;
    serde_json::from_str(out.lines().next().expect("a campaign")).unwrap()
}

// See: issue 11, item 4 ("two overlapping lists of 300 with 100 in common
// deliver 500 messages, each person once").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lists_of_300_with_100_in_common_get_500_messages_each_person_once() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    list_with(&env, "ebulletin", "E-bulletin", &people(0..300)).await;
    list_with(&env, "partners", "Partners", &people(200..500)).await;
    campaign(&env, "[\"ebulletin\", \"partners\"]");

    // The prompt counts people once across the lists.
    let asked = env.run(&["send", FILE]).await;
    assert_eq!(asked.status.code(), Some(2), "{asked:?}");
    let err = text(&asked.stderr);
    assert!(
        err.contains("500 people on ebulletin, partners (100 on more than one, mailed once)"),
        "{err}"
    );
    assert!(sink.messages().is_empty());

    let out = env.ok(&["send", FILE, "--yes"]).await;
    assert!(out.contains("both: sent 500 (finished)"), "{out}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 500);
    let seen = by_recipient(&messages);
    assert_eq!(seen.len(), 500);
    for (i, email) in people(0..500).iter().enumerate() {
        let copies = &seen[email];
        assert_eq!(copies.len(), 1, "{email} received {}", copies.len());
        // The 100 on both get it through the first list of the front matter.
        let expected = if i < 300 { "ebulletin" } else { "partners" };
        assert_eq!(list_id_slug(&copies[0]), expected, "{email}");
    }

    let status = status_json(&env).await;
    assert_eq!(
        status["lists"],
        serde_json::json!(["ebulletin", "partners"])
    );
    assert_eq!(status["deliveries"]["sent"], 500, "{status}");
    let text_status = env.ok(&["status", "both"]).await;
    assert!(
        text_status.contains("lists ebulletin, partners"),
        "{text_status}"
    );
    // The report says through which list each person got it.
    let csv = env.ok(&["report", "both", "--format", "csv"]).await;
    let mut per_list: BTreeMap<String, usize> = BTreeMap::new();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    for row in reader.records() {
        *per_list.entry(row.unwrap()[5].to_string()).or_default() += 1;
    }
    let expected = BTreeMap::from([
        ("ebulletin".to_string(), 300),
        ("partners".to_string(), 200),
    ]);
    assert_eq!(per_list, expected, "{csv}");

    // --only-new: someone new on partners, and someone of ebulletin who
    // joins partners too (already has it): exactly one more message.
    add_to(&env, "partners", &["late@example.net".to_string()]).await;
    add_to(&env, "partners", &people(0..1)).await;
    let asked = env.run(&["send", FILE, "--only-new"]).await;
    assert!(
        text(&asked.stderr).contains("to 1 subscriber of ebulletin, partners for the first time"),
        "{asked:?}"
    );
    env.ok(&["send", FILE, "--only-new", "--yes"]).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 501);
    assert_eq!(messages[500].rcpt_to, ["late@example.net"]);
    assert_eq!(list_id_slug(&unfold(&messages[500].data)), "partners");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_from_a_message_of_the_second_list_leaves_that_list_only() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    let pat = "pat@example.net".to_string();
    list_with(&env, "ebulletin", "E-bulletin", &people(0..2)).await;
    list_with(&env, "partners", "Partners", std::slice::from_ref(&pat)).await;
    // Pat is on a third list the campaign does not go to.
    list_with(&env, "staff", "Staff", std::slice::from_ref(&pat)).await;
    campaign(&env, "[\"ebulletin\", \"partners\"]");
    let server = Served::start(&env).await;
    env.ok(&["send", FILE, "--yes"]).await;
    let seen = by_recipient(&sink.messages());
    let raw = &seen[&pat][0];
    assert_eq!(list_id_slug(raw), "partners");

    // The preference page from pat's email shows each list pat is on and
    // marks the one this email came through.
    let prefs_path = preferences_path(raw);
    let prefs = http(&server.addr, "GET", &prefs_path, &[], b"").await;
    assert_eq!(prefs.status, 200, "{prefs_path}: {raw}");
    let block = |slug: &str| {
        let start = prefs
            .body
            .find(&format!("<label class=\"check\" for=\"list-{slug}\">"))
            .unwrap_or_else(|| panic!("{slug} not shown: {}", prefs.body));
        let rest = &prefs.body[start..];
        rest[..rest.find("</label>").unwrap()].to_string()
    };
    let via = "sent to you through this list";
    assert!(block("partners").contains(via), "{}", block("partners"));
    assert!(
        block("partners").contains(" checked"),
        "{}",
        block("partners")
    );
    assert!(block("staff").contains(" checked"), "{}", block("staff"));
    assert!(!block("staff").contains(via), "{}", block("staff"));

    // One-click, as a mail client does: partners left, staff kept.
    let r = http(
        &server.addr,
        "POST",
        &one_click_path(raw),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("You will no longer receive Partners"),
        "{}",
        r.body
    );
    let shown = env.ok(&["subscribers", "show", &pat]).await;
    assert!(shown.contains("partners: unsubscribed (by web"), "{shown}");
    assert!(shown.contains("staff: confirmed"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_who_leaves_the_first_list_after_queueing_gets_it_once_through_the_second() {
    // The first connection is refused: the run queues everyone, sends
    // nothing and stops; the campaign stays resumable.
    let sink = SmtpSink::start(Behaviour::new().refuse_first_connections(1));
    let env = Env::new(sink.port(), "");
    let path = env.dir.path().join("bulletin.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, config.replace("connections = 4", "connections = 1")).unwrap();
    let (bob, ann) = ("bob@example.net".to_string(), "ann@example.net".to_string());
    list_with(&env, "ebulletin", "E-bulletin", &[bob.clone(), ann.clone()]).await;
    list_with(&env, "partners", "Partners", std::slice::from_ref(&bob)).await;
    campaign(&env, "[\"ebulletin\", \"partners\"]");
    let stopped = env.run(&["send", FILE, "--yes"]).await;
    assert_ne!(stopped.status.code(), Some(0), "{stopped:?}");
    assert!(sink.messages().is_empty());
    assert_eq!(status_json(&env).await["deliveries"]["queued"], 2);

    // Both leave ebulletin; bob is still on partners.
    for who in [&bob, &ann] {
        env.ok(&["subscribers", "remove", who, "--list", "ebulletin"])
            .await;
    }
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains("both: sent 1"), "{out}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, [bob.as_str()]);
    let raw = unfold(&messages[0].data);
    assert_eq!(
        list_id_slug(&raw),
        "partners",
        "sent through the list bob is on"
    );
    let report = env.ok(&["report", "both", "--format", "json"]).await;
    let rows: Vec<serde_json::Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |who: &str| rows.iter().find(|r| r["address"] == who).unwrap().clone();
    assert_eq!(row(&bob)["state"], "sent");
    assert_eq!(row(&bob)["list"], "partners");
    assert_eq!(row(&ann)["state"], "skipped");
    assert!(
        row(&ann)["last_reply"]
            .as_str()
            .unwrap()
            .contains("unsubscribed before their turn"),
        "{report}"
    );
    env.ok(&["dispatch"]).await;
    assert_eq!(sink.messages().len(), 1, "nobody twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_empty_or_unknown_lists_are_refused_naming_the_line() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    list_with(&env, "ebulletin", "E-bulletin", &people(0..2)).await;
    for (list, says) in [
        (
            "[\"ebulletin\", \"ebulletin\"]",
            "`list` names \"ebulletin\" twice",
        ),
        ("[]", "`list` is an empty array"),
        (
            "[\"ebulletin\", \"partnres\"]",
            "list \"partnres\" does not exist",
        ),
    ] {
        campaign(&env, list);
        let out = env.run(&["send", FILE, "--yes"]).await;
        assert_eq!(out.status.code(), Some(2), "{list}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains("campaigns/both.md:4: "), "{list}: {err}");
        assert!(err.contains(says), "{list}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("bulletin: "), "{err}");
    }
    assert!(sink.messages().is_empty());
    let status = env.ok(&["status"]).await;
    assert!(status.contains("no campaigns yet"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_takes_the_new_lists_and_their_order_and_cancel_stops_them_all() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    list_with(&env, "ebulletin", "E-bulletin", &people(0..3)).await;
    list_with(&env, "partners", "Partners", &people(2..4)).await;
    list_with(&env, "staff", "Staff", &people(10..11)).await;
    campaign(&env, "[\"ebulletin\", \"staff\"]");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = env.ok(&["send", FILE, "--yes", "--at", &later]).await;
    assert!(
        out.contains("4 people on ebulletin, staff (0 on more than one, mailed once)"),
        "{out}"
    );
    // Replaced before it went out: other lists, another order; sent now.
    campaign(&env, "[\"partners\", \"ebulletin\"]");
    let out = env
        .ok(&["send", FILE, "--replace", "--at", "now", "--yes"])
        .await;
    assert!(out.contains("both: sent 4 (finished)"), "{out}");
    let seen = by_recipient(&sink.messages());
    let mut got: Vec<(String, String)> = seen
        .iter()
        .map(|(who, copies)| {
            assert_eq!(copies.len(), 1, "{who}");
            (who.clone(), list_id_slug(&copies[0]))
        })
        .collect();
    got.sort();
    let want = [
        ("p0@example.net", "ebulletin"),
        ("p1@example.net", "ebulletin"),
        ("p2@example.net", "partners"),
        ("p3@example.net", "partners"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want, "staff is no longer a list of it");
    assert_eq!(
        status_json(&env).await["lists"],
        serde_json::json!(["partners", "ebulletin"])
    );

    // Cancelled while scheduled: nobody on any of its lists gets it.
    std::fs::write(
        env.dir.path().join("campaigns/later.md"),
        "+++\nsubject = \"Later\"\npreheader = \"p\"\nlist = [\"staff\", \"partners\"]\n+++\n# S\n\n## A\n\nText.\n",
    )
    .unwrap();
    env.ok(&["send", "campaigns/later.md", "--yes", "--at", &later])
        .await;
    env.ok(&["cancel", "later"]).await;
    env.ok(&["dispatch"]).await;
    assert_eq!(sink.messages().len(), 4);
    // A list that a scheduled campaign goes to cannot be removed, even
    // when it is not its first list.
    env.ok(&[
        "send",
        "campaigns/later.md",
        "--yes",
        "--again",
        "--at",
        &later,
    ])
    .await;
    let removed = env.run(&["lists", "remove", "partners", "--force"]).await;
    assert_eq!(removed.status.code(), Some(2), "{removed:?}");
    assert!(
        text(&removed.stderr).contains("campaign(s) scheduled"),
        "{removed:?}"
    );
}

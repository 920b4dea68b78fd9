//! The subscriber store: the dirty import fixture with exact counts,
//! re-import, dry run, an import larger than a batch, export -> import
//! round trip, erasure, bad input, and the CLI end to end. Every test opens
//! a fresh database of the engine under test (`support::pg`: a SQLite file,
//! or PostgreSQL) through `Store::open`, the path the program uses.

use std::path::{Path, PathBuf};

use futures_util::TryStreamExt as _;

use bulletin::store::{
    DEFAULT_BATCH_SIZE, ExportRow, ImportOptions, ImportReport, RowError, Selection, Skipped, Store,
};

use crate::support::pg;
use crate::util::{bulletin, root, write};

const NOW: i64 = 1_750_000_000;

fn fixture() -> PathBuf {
    root().join("tests/data/dirty.csv")
}

async fn fresh(dir: &Path) -> Store {
    pg::store_named(dir, "t.db").await
}

async fn import(store: &Store, file: &Path, dry_run: bool) -> (ImportReport, Vec<RowError>) {
    let options = ImportOptions {
        dry_run,
        // Small batches, so duplicates span batches too.
        batch_size: 4,
        ..ImportOptions::new(NOW)
    };
    let input = std::fs::File::open(file).unwrap();
    store.import(input, "news", &options, |_| {}).await.unwrap()
}

/// The people the fixture meets: dave left the list, erin left every list,
/// hank and ivy are on it already (ivy without a name), kim bounced, lee
/// was erased.
async fn seed(store: &Store) {
    store
        .create_list("news", "News", "", false, false, NOW)
        .await
        .unwrap();
    store
        .create_list("other", "Other", "", false, false, NOW)
        .await
        .unwrap();
    for (email, name, list) in [
        ("dave@example.org", Some("Dave"), "news"),
        ("erin@example.org", None, "other"),
        ("hank@example.org", Some("Hank"), "news"),
        ("ivy@example.org", None, "news"),
        ("kim@example.org", None, "news"),
        ("lee@example.org", None, "news"),
    ] {
        store
            .add_subscriber(email, name, list, "cli", NOW)
            .await
            .unwrap();
    }
    store
        .remove_subscriber("dave@example.org", Some("news"), "cli", NOW)
        .await
        .unwrap();
    store
        .remove_subscriber("erin@example.org", None, "cli", NOW)
        .await
        .unwrap();
    let kim = store.subscriber("kim@example.org").await.unwrap().unwrap();
    store
        .set_status(kim.id, "bounced", "bounce", Some("550 no such user"), NOW)
        .await
        .unwrap();
    assert!(store.forget("lee@example.org", "cli", NOW).await.unwrap());
}

/// The counts of a report, without the header mapping (checked in
/// tests/import.rs).
fn counts_of(report: ImportReport) -> ImportReport {
    ImportReport {
        mapping: Vec::new(),
        format: Default::default(),
        ..report
    }
}

fn expected_first_import() -> ImportReport {
    ImportReport {
        read: 17,
        imported: 4,
        updated: 1,
        unchanged: 1,
        skipped: Skipped {
            unsubscribed: 2,
            bounced: 1,
            complained: 0,
            suppressed: 1,
        },
        rejected: 5,
        duplicates: 2,
        list_created: false,
        dry_run: false,
        ..ImportReport::default()
    }
}

fn expected_errors() -> Vec<RowError> {
    [
        (5, "\"not-an-address\": missing @ in email address"),
        (6, "\"carol@example\": domain \"example\" has no dot"),
        (7, "empty email address"),
        (
            13,
            "\"gina smith@example.org\": invalid character ' ' in local part",
        ),
        (15, "5 fields, but the header has 4"),
    ]
    .into_iter()
    .map(|(line, reason)| RowError {
        line,
        reason: reason.to_string(),
    })
    .collect()
}

#[tokio::test]
async fn dirty_fixture_exact_counts_and_merged_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path()).await;
    seed(&store).await;
    let (report, errors) = import(&store, &fixture(), false).await;
    assert_eq!(counts_of(report), expected_first_import());
    assert_eq!(errors, expected_errors());

    // The first row of an address wins; later duplicates only fill gaps.
    let ann = store.subscriber("ANN@example.org").await.unwrap().unwrap();
    assert_eq!(ann.email.as_deref(), Some("ann@example.org"));
    assert_eq!(ann.name, "Ann");
    assert_eq!(ann.attributes["city"], "Paris; France");
    assert_eq!(ann.attributes["note"], "likes \"quotes\", commas");
    let bob = store.subscriber("bob@example.org").await.unwrap().unwrap();
    assert_eq!(bob.attributes["city"], "Berlin");
    assert!(
        !bob.attributes.contains_key("note"),
        "empty cells are not attributes"
    );
    let frank = store
        .subscriber("frank@example.org")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frank.name, "Frank \"F\" Smith");
    // A line break in a quoted cell becomes a space (`text::clean`).
    assert_eq!(frank.attributes["city"], "a multi-line");
    let jose = store
        .subscriber("josé@bücher.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(jose.email.as_deref(), Some("josé@xn--bcher-kva.example"));
    // ivy gained a name and a city; hank kept his.
    let ivy = store.subscriber("ivy@example.org").await.unwrap().unwrap();
    assert_eq!(
        (ivy.name.as_str(), &ivy.attributes["city"]),
        ("Ivy", &"Oslo".into())
    );

    // Not resubscribed: dave (left the list), erin (left all), kim
    // (bounced), lee (erased). The audience is exactly the others.
    let news = store.require_list("news").await.unwrap();
    let audience: Vec<String> = store
        .audience(news.id)
        .map_ok(|r| r.email)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        audience,
        [
            "hank@example.org",
            "ivy@example.org",
            "ann@example.org",
            "bob@example.org",
            "josé@xn--bcher-kva.example",
            "frank@example.org"
        ]
    );
    let dave = store.profile("dave@example.org").await.unwrap().unwrap();
    assert_eq!(dave.subscriptions[0].status, "unsubscribed");
    let erin = store.subscriber("erin@example.org").await.unwrap().unwrap();
    assert_eq!(erin.status, "unsubscribed");
    let erin = store.profile("erin@example.org").await.unwrap().unwrap();
    assert!(erin.subscriptions.iter().all(|s| s.list != "news"));
    assert!(store.subscriber("lee@example.org").await.unwrap().is_none());

    assert_eq!(store.audience_count(news.id).await.unwrap(), 6);
    let lists = store.lists().await.unwrap();
    let counts = lists.iter().find(|l| l.list.slug == "news").unwrap();
    // kim's subscription stays confirmed but she bounced: not in the audience.
    assert_eq!(
        (counts.confirmed, counts.pending, counts.unsubscribed),
        (7, 0, 1)
    );
    assert_eq!(counts.audience, 6);
}

#[tokio::test]
async fn reimport_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path()).await;
    seed(&store).await;
    import(&store, &fixture(), false).await;
    let before = store.profile("ann@example.org").await.unwrap().unwrap();
    let (report, errors) = import(&store, &fixture(), false).await;
    assert_eq!(
        counts_of(report),
        ImportReport {
            imported: 0,
            updated: 0,
            unchanged: 6,
            ..expected_first_import()
        }
    );
    assert_eq!(errors, expected_errors());
    let after = store.profile("ann@example.org").await.unwrap().unwrap();
    assert_eq!(before, after, "no new events, no changed data");
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path()).await;
    let (report, errors) = import(&store, &fixture(), true).await;
    assert_eq!(
        counts_of(report),
        ImportReport {
            read: 17,
            imported: 10,
            updated: 0,
            unchanged: 0,
            skipped: Skipped::default(),
            rejected: 5,
            duplicates: 2,
            list_created: true,
            dry_run: true,
            ..ImportReport::default()
        }
    );
    assert_eq!(errors, expected_errors());
    assert!(
        store.list("news").await.unwrap().is_none(),
        "list not created"
    );
    assert_eq!(store.count(&Selection::Active).await.unwrap(), 0);
    assert!(store.lists().await.unwrap().is_empty());
}

/// Everyone stored, as an export sees them.
async fn everyone(store: &Store) -> Vec<ExportRow> {
    let mut rows = Vec::new();
    for status in ["active", "unsubscribed", "bounced", "complained"] {
        let selection = Selection::PersonStatus(status.to_string());
        store
            .export(&selection, |row| -> bulletin::store::Result<()> {
                rows.push(row);
                Ok(())
            })
            .await
            .unwrap();
    }
    rows
}

#[tokio::test]
async fn import_larger_than_a_batch_exact_counts_and_reimport_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path()).await;
    // Double opt-in, so that `add` leaves p3 pending.
    store
        .create_list("news", "News", "", true, false, NOW)
        .await
        .unwrap();
    store
        .create_list("other", "Other", "", false, false, NOW)
        .await
        .unwrap();
    // p3 pending on news; p5 only on other; p7 left news; p9 bounced;
    // p11 erased; p13 suppressed by hand and never stored.
    for (email, name, list) in [
        ("p3@example.org", None, "news"),
        ("p5@example.org", None, "other"),
        ("p7@example.org", Some("Seven"), "news"),
        ("p9@example.org", None, "other"),
        ("p11@example.org", None, "other"),
    ] {
        store
            .add_subscriber(email, name, list, "cli", NOW)
            .await
            .unwrap();
    }
    store
        .remove_subscriber("p7@example.org", Some("news"), "cli", NOW)
        .await
        .unwrap();
    let p9 = store.subscriber("p9@example.org").await.unwrap().unwrap();
    store
        .set_status(p9.id, "bounced", "bounce", None, NOW)
        .await
        .unwrap();
    assert!(store.forget("p11@example.org", "cli", NOW).await.unwrap());
    store
        .suppress("p13@example.org", "manual", NOW)
        .await
        .unwrap();

    // One and a half batches, then a bad row and three duplicates: p0
    // (first batch) and p7 (first batch) from the second batch, and p14000
    // within the second batch.
    let n = DEFAULT_BATCH_SIZE + DEFAULT_BATCH_SIZE / 2;
    let mut text = String::from("email,name,City,plan\n");
    for i in 0..n {
        text.push_str(&format!("p{i}@example.org,P{i},City {},\n", i % 10));
    }
    text.push_str("not-an-address,X,,\n");
    text.push_str("P0@Example.org,Other,Elsewhere,pro\n");
    text.push_str(&format!("p{}@example.org,,,gold\n", n - 1000));
    text.push_str("p7@example.org,,,\n");
    let file = write(dir.path(), "big.csv", &text);
    let run = |dry_run: bool, store: Store| {
        let file = file.clone();
        async move {
            let options = ImportOptions {
                dry_run,
                ..ImportOptions::new(NOW)
            };
            let input = std::fs::File::open(file).unwrap();
            store.import(input, "news", &options, |_| {}).await.unwrap()
        }
    };

    let n = n as u64;
    let first = ImportReport {
        read: n + 4,
        // Everyone but p3 and the four skipped; p5 is new to the list.
        imported: n - 5,
        updated: 1,
        unchanged: 0,
        skipped: Skipped {
            unsubscribed: 1,
            bounced: 1,
            complained: 0,
            suppressed: 2,
        },
        rejected: 1,
        duplicates: 3,
        list_created: false,
        dry_run: false,
        ..ImportReport::default()
    };
    let errors = vec![RowError {
        line: n + 2,
        reason: "\"not-an-address\": missing @ in email address".to_string(),
    }];
    let (report, errs) = run(false, store.clone()).await;
    assert_eq!(counts_of(report), first);
    assert_eq!(errs, errors);

    let p0 = store.subscriber("p0@example.org").await.unwrap().unwrap();
    assert_eq!(p0.name, "P0", "the first row wins");
    assert_eq!(p0.attributes["city"], "City 0");
    assert_eq!(p0.attributes["plan"], "pro", "a later batch fills a gap");
    let late = store
        .subscriber(&format!("p{}@example.org", n - 1000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late.attributes["plan"], "gold");
    let p3 = store.profile("p3@example.org").await.unwrap().unwrap();
    assert_eq!(p3.subscriber.name, "P3");
    assert_eq!(
        (
            p3.subscriptions[0].status.as_str(),
            p3.subscriptions[0].source.as_str()
        ),
        ("confirmed", "import")
    );
    assert_eq!(p3.events.last().unwrap().kind, "confirmed");
    let p5 = store.profile("p5@example.org").await.unwrap().unwrap();
    assert_eq!(p5.subscriber.name, "P5");
    assert!(
        p5.subscriptions
            .iter()
            .any(|s| s.list == "news" && s.status == "confirmed")
    );
    assert_eq!(p5.events.last().unwrap().kind, "imported");
    let p7 = store.profile("p7@example.org").await.unwrap().unwrap();
    assert_eq!(p7.subscriptions[0].status, "unsubscribed");
    assert!(store.subscriber("p13@example.org").await.unwrap().is_none());

    let news = store.require_list("news").await.unwrap();
    assert_eq!(store.audience_count(news.id).await.unwrap() as u64, n - 4);
    let counts = store.lists().await.unwrap();
    let before_counts = counts
        .iter()
        .find(|l| l.list.slug == "news")
        .unwrap()
        .clone();
    assert_eq!(
        (
            before_counts.confirmed as u64,
            before_counts.pending,
            before_counts.unsubscribed
        ),
        (n - 4, 0, 1)
    );

    let people = everyone(&store).await;
    let mut histories = Vec::new();
    for email in [
        "p0@example.org",
        "p3@example.org",
        "p5@example.org",
        "p7@example.org",
    ] {
        histories.push(store.profile(email).await.unwrap().unwrap());
    }
    let (report, errs) = run(false, store.clone()).await;
    assert_eq!(
        counts_of(report),
        ImportReport {
            imported: 0,
            updated: 0,
            unchanged: n - 4,
            ..first.clone()
        }
    );
    assert_eq!(errs, errors);
    assert!(everyone(&store).await == people, "no changed data");
    for before in histories {
        let email = before.subscriber.email.clone().unwrap();
        assert_eq!(store.profile(&email).await.unwrap().unwrap(), before);
    }
    let counts = store.lists().await.unwrap();
    assert_eq!(
        counts.iter().find(|l| l.list.slug == "news").unwrap(),
        &before_counts
    );

    // The same file, dry run, into an empty database: same rows, nothing
    // written.
    let empty = pg::store_named(dir.path(), "empty.db").await;
    let (report, errs) = run(true, empty.clone()).await;
    assert_eq!(
        counts_of(report),
        ImportReport {
            imported: n,
            updated: 0,
            skipped: Skipped::default(),
            list_created: true,
            dry_run: true,
            ..first
        }
    );
    assert_eq!(errs, errors);
    assert!(empty.lists().await.unwrap().is_empty());
    assert!(everyone(&empty).await.is_empty());
}

#[tokio::test]
async fn forget_then_import_again_stays_unsubscribed() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path()).await;
    store
        .create_list("news", "News", "", false, false, NOW)
        .await
        .unwrap();
    let file = write(
        dir.path(),
        "one.csv",
        "email,name,city\nAnn@Example.org,Ann,Paris\n",
    );
    let (r, _) = import(&store, &file, false).await;
    assert_eq!(r.imported, 1);
    let id = store
        .subscriber("ann@example.org")
        .await
        .unwrap()
        .unwrap()
        .id;

    assert!(
        store
            .forget("ann@example.org", "cli", NOW + 1)
            .await
            .unwrap()
    );
    let erased = store.subscriber_by_id(id).await.unwrap().unwrap();
    assert_eq!(erased.email, None);
    assert_eq!(erased.name, "");
    assert!(erased.attributes.is_empty());
    assert_eq!(erased.status, "erased");
    let events = store.events(id).await.unwrap();
    assert_eq!(events.last().unwrap().kind, "erased");
    assert!(events.iter().all(|e| e.detail.is_none()));
    assert!(store.is_suppressed("ANN@example.org").await.unwrap());

    let (r, errors) = import(&store, &file, false).await;
    assert!(errors.is_empty());
    assert_eq!((r.imported, r.skipped.suppressed), (0, 1));
    assert!(store.subscriber("ann@example.org").await.unwrap().is_none());
    let news = store.require_list("news").await.unwrap();
    assert_eq!(store.audience_count(news.id).await.unwrap(), 0);
    let err = store
        .add_subscriber("ann@example.org", None, "news", "cli", NOW)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("suppressed"), "{err}");
}

#[tokio::test]
async fn missing_email_column_and_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path()).await;
    for (text, want) in [
        (
            "contact,name\nx@example.org,X\n",
            "no email column in the header (found: contact, name); name it `email` or `Email Address`",
        ),
        ("", "empty file: no header row"),
    ] {
        let file = write(dir.path(), "bad.csv", text);
        let input = std::fs::File::open(&file).unwrap();
        let err = store
            .import(input, "news", &ImportOptions::new(NOW), |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), want);
    }
    assert!(
        store.list("news").await.unwrap().is_none(),
        "nothing written"
    );
}

#[tokio::test]
async fn cli_export_import_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (pg::db_named(d, "a.db").await, pg::db_named(d, "b.db").await);
    bulletin(d)
        .args(["--db", &a, "subscribers", "import"])
        .arg(fixture())
        .args(["--list", "news"])
        .assert()
        .code(1); // rows were rejected
    let first = bulletin(d)
        .args(["--db", &a, "subscribers", "export", "--list", "news"])
        .output()
        .unwrap();
    assert!(first.status.success());
    let first = String::from_utf8(first.stdout).unwrap();
    assert_eq!(
        first.lines().next(),
        Some(
            "email,name,status,city,note,optin_time,optin_ip,confirm_time,confirm_ip,consent_source"
        )
    );
    assert!(
        first.contains(
            "ann@example.org,Ann,confirmed,Paris; France,\"likes \"\"quotes\"\", commas\",,,,,\n"
        ),
        "{first}"
    );
    std::fs::write(d.join("export.csv"), &first).unwrap();
    bulletin(d)
        .args([
            "--db",
            &b,
            "subscribers",
            "import",
            "export.csv",
            "--list",
            "news",
        ])
        .assert()
        .success();
    let second = bulletin(d)
        .args(["--db", &b, "subscribers", "export", "--list", "news"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(second.stdout).unwrap(), first);
    // Importing the export again into the first database changes nothing.
    let out = bulletin(d)
        .args([
            "--db",
            &a,
            "subscribers",
            "import",
            "export.csv",
            "--list",
            "news",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.contains("newly subscribed:    0"), "{out}");
    assert!(out.contains("updated:             0"), "{out}");
}

/// The binary in `dir` on the database `db` (`--db`) with `args`: its exit
/// code, standard output and standard error.
fn run_on(dir: &Path, db: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = bulletin(dir)
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn cli_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = pg::db_named(d, "x.db").await;
    let run = |args: &[&str]| run_on(d, &db, args);
    let (code, out, _) = run(&["lists", "add", "news", "--name", "News", "--double-opt-in"]);
    assert_eq!(
        (code, out),
        (
            Some(0),
            format!(
                "{} (set by --db flag)\ncreated list news (double opt-in, not public)\n",
                pg::created_line(&db)
            )
        )
    );
    // A double opt-in list: the confirmation email goes out (here to an
    // outbox), and the person stays pending until they open it.
    let (code, out, _) = run(&[
        "subscribers",
        "add",
        "Zoe@Example.org",
        "--name",
        "Zoe",
        "--list",
        "news",
        "--outbox",
        "outbox",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (
            Some(0),
            "subscribed zoe@example.org to news (pending): confirmation email written to outbox/; they are on the list once they open its link\n"
        )
    );
    assert_eq!(std::fs::read_dir(d.join("outbox")).unwrap().count(), 1);
    let (_, out, _) = run(&["lists"]);
    assert_eq!(
        out,
        "SLUG  NAME  FLAGS          CONFIRMED  PENDING  UNSUBSCRIBED  RECEIVING\n\
         news  News  double opt-in          0        1             0          0\n"
    );
    write(
        d,
        "people.csv",
        "email,name\nzoe@example.org,Zoe\nnobody,N\n",
    );
    let (code, out, err) = run(&["subscribers", "import", "people.csv", "--list", "news"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "people.csv:3: \"nobody\": missing @ in email address\n"
    );
    assert!(
        out.contains("updated:             1"),
        "pending confirmed by import: {out}"
    );
    let (_, out, _) = run(&["subscribers", "show", "zoe@example.org"]);
    assert!(out.contains("news: confirmed (by import"), "{out}");
    assert!(
        out.contains("subscribed via cli list=news: pending confirmation"),
        "{out}"
    );
    assert!(out.contains("confirmed via import list=news"), "{out}");
    let (code, out, _) = run(&["subscribers", "remove", "zoe@example.org", "--list", "news"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "unsubscribed zoe@example.org from news\n")
    );
    let (_, out, _) = run(&[
        "subscribers",
        "export",
        "--list",
        "news",
        "--status",
        "unsubscribed",
    ]);
    assert_eq!(
        out,
        "email,name,status,optin_time,optin_ip,confirm_time,confirm_ip,consent_source\n\
         zoe@example.org,Zoe,unsubscribed,,,,,\n"
    );
    let (code, _, _) = run(&["subscribers", "forget", "zoe@example.org"]);
    assert_eq!(code, Some(0));
    let (code, _, err) = run(&["subscribers", "show", "zoe@example.org"]);
    assert_eq!(
        (code, err.as_str()),
        (Some(2), "bulletin: no subscriber zoe@example.org\n")
    );

    write(d, "bad.csv", "contact,name\nx@example.org,X\n");
    let (code, _, err) = run(&["subscribers", "import", "bad.csv", "--list", "other"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "bulletin: bad.csv: no email column in the header (found: contact, name); name it `email` or `Email Address`\n"
    );
    let (_, out, _) = run(&["lists"]);
    assert!(!out.contains("other"), "nothing written: {out}");
    let (code, _, err) = run(&["subscribers", "import", "missing.csv", "--list", "news"]);
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("bulletin: missing.csv: ") && err.lines().count() == 1,
        "{err}"
    );

    // A corrupt SQLite file, whatever the engine under test.
    std::fs::write(d.join("corrupt.db"), vec![b'x'; 4096]).unwrap();
    let out = bulletin(d)
        .args(["--db", "corrupt.db", "lists"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "bulletin: corrupt.db: not a bulletin database, or the file is corrupt\n"
    );
}

/// `subscribers reactivate` through the CLI: a bounced address (recorded
/// by an import) is active and unsuppressed again; people who complained
/// or unsubscribed in the source tool are refused and stay as they were.
#[tokio::test]
async fn cli_reactivate_lifts_a_bounce_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = pg::db_named(d, "r.db").await;
    let run = |args: &[&str]| run_on(d, &db, args);
    write(
        d,
        "left.csv",
        "email,status\nbea@example.org,bounced\ncal@example.org,complained\ndan@example.org,unsubscribed\n",
    );
    let (code, _, err) = run(&["subscribers", "import", "left.csv", "--list", "news"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&["subscribers", "reactivate", "Bea@Example.org"]);
    assert_eq!(
        (code, out.as_str()),
        (
            Some(0),
            // Imported as bounced: recorded as having left the list.
            "reactivated bea@example.org: active again and no longer suppressed, but confirmed on no list, so no campaign reaches them\n"
        ),
        "{err}"
    );
    // A complaint in the source tool: recorded as a complaint, suppressed,
    // which only the person lifts (by signing up again).
    let (code, _, err) = run(&["subscribers", "reactivate", "cal@example.org"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("complained about our mail") && err.lines().count() == 1,
        "{err}"
    );
    // Unsubscribed from the list only: active, so nothing to lift.
    let (code, out, _) = run(&["subscribers", "reactivate", "dan@example.org"]);
    assert_eq!(
        (code, out.as_str()),
        (
            Some(0),
            "dan@example.org is already active; nothing changed\n"
        )
    );
    let store = Store::open_existing(pg::location(&db)).await.unwrap();
    let bea = store.profile("bea@example.org").await.unwrap().unwrap();
    assert_eq!(bea.subscriber.status, "active");
    assert!(!store.is_suppressed("bea@example.org").await.unwrap());
    assert!(
        bea.events.iter().any(|e| e.kind == "reactivated"),
        "{bea:?}"
    );
    let cal = store.profile("cal@example.org").await.unwrap().unwrap();
    assert_eq!(cal.subscriber.status, "complained");
    assert!(store.is_suppressed("cal@example.org").await.unwrap());
    assert!(cal.events.iter().any(|e| e.kind == "complained"), "{cal:?}");
    let dan = store.profile("dan@example.org").await.unwrap().unwrap();
    assert_eq!(dan.subscriptions[0].status, "unsubscribed");
    store.close().await;
}

/// Every export selection picks the same people, in subscriber id order,
/// on the engine under test: a list's audience, its subscription states,
/// its people by their own status, everyone on it; and, across lists, the
/// mailable, who left, a person status and everyone.
#[tokio::test]
async fn every_export_selection_picks_its_people() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path()).await;
    let file = write(
        dir.path(),
        "people.csv",
        "email,status,city\nann@example.org,subscribed,Lima\nbo@example.org,unsubscribed,\ncy@example.org,bounced,Oslo\n",
    );
    let input = std::fs::File::open(&file).unwrap();
    let (report, errors) = store
        .import(input, "news", &ImportOptions::new(NOW), |_| {})
        .await
        .unwrap();
    assert!(errors.is_empty() && report.imported == 1, "{report:?}");
    store
        .create_list("other", "Other", "", false, false, NOW)
        .await
        .unwrap();
    store
        .add_subscriber("dan@example.org", None, "other", "cli", NOW)
        .await
        .unwrap();
    let news = store.require_list("news").await.unwrap().id;
    let status = |s: &str| s.to_string();
    for (selection, want) in [
        (Selection::Audience(news), &["ann"][..]),
        (Selection::ListStatus(news, status("confirmed")), &["ann"]),
        (
            Selection::ListStatus(news, status("unsubscribed")),
            &["bo", "cy"],
        ),
        (
            Selection::ListPersonStatus(news, status("active")),
            &["ann", "bo"],
        ),
        (
            Selection::ListPersonStatus(news, status("bounced")),
            &["cy"],
        ),
        (Selection::ListAll(news), &["ann", "bo", "cy"]),
        (Selection::Active, &["ann", "dan"]),
        (Selection::Left, &["bo"]),
        (Selection::PersonStatus(status("bounced")), &["cy"]),
        (Selection::Everyone, &["ann", "bo", "cy", "dan"]),
    ] {
        let mut got = Vec::new();
        store
            .export_with_lists(&selection, |row| {
                got.push(row.email.trim_end_matches("@example.org").to_string());
                Ok::<_, bulletin::store::Error>(())
            })
            .await
            .unwrap();
        assert_eq!(got, want, "{selection:?}");
        assert_eq!(
            store.count(&selection).await.unwrap(),
            want.len() as i64,
            "{selection:?}"
        );
    }
    assert_eq!(
        store
            .attribute_keys(&Selection::ListAll(news))
            .await
            .unwrap(),
        ["city"]
    );
}

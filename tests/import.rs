//! Lists brought from other tools (issue 12): Mailchimp (zip and files,
//! localised headers), listmonk, Keila, Ghost, Substack and plain CSV
//! fixtures in tests/data/import/, imported through the binary and checked
//! row by row: who is mailable, names, attributes, consent records; exports
//! in every format, neutralised cells, the BOM, and export → import →
//! export round trips. Each database named here (`t.db`, `a.db`, …) is one
//! of the engine under test (`support::pg::db_in`: that file in the test's
//! dir, or a fresh PostgreSQL database).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bulletin::store::{Selection, Store};

use crate::support::pg;
use crate::util::{bulletin, root};

fn data(name: &str) -> PathBuf {
    root().join("tests/data/import").join(name)
}

/// The rows of a fixture as header → value maps.
fn rows(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.trim_start_matches('\u{feff}');
    let delimiter = if text.lines().next().unwrap().contains(';') {
        b';'
    } else {
        b','
    };
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let header = csv.headers().unwrap().clone();
    csv.records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn import(dir: &Path, db: &str, file: &Path, extra: &[&str]) -> std::process::Output {
    import_to(dir, db, file, "news", extra)
}

/// `subscribers import FILE --list LIST` into the database `db`.
fn import_to(
    dir: &Path,
    db: &str,
    file: &Path,
    list: &str,
    extra: &[&str],
) -> std::process::Output {
    bulletin(dir)
        .args(["--db", &pg::db_in(dir, db), "subscribers", "import"])
        .arg(file)
        .args(["--list", list])
        .args(extra)
        .output()
        .unwrap()
}

/// `out`, once it is known to have succeeded (else its stderr says why).
fn succeeded(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn export(dir: &Path, db: &str, extra: &[&str]) -> String {
    let out = bulletin(dir)
        .args(["--db", &pg::db_in(dir, db), "subscribers", "export"])
        .args(extra)
        .output()
        .unwrap();
    String::from_utf8(succeeded(out).stdout).unwrap()
}

/// The database `name` of the test in `dir`, opened.
async fn open(dir: &Path, name: &str) -> Store {
    Store::open_existing(pg::location(&pg::db_in(dir, name)))
        .await
        .unwrap()
}

/// Who would be mailed on `news`.
async fn mailable_on_news(store: &Store) -> HashSet<String> {
    mailable_on(store, "news").await
}

/// Who would be mailed on the list `slug`.
async fn mailable_on(store: &Store, slug: &str) -> HashSet<String> {
    let list = store.require_list(slug).await.unwrap().id;
    let mut emails = HashSet::new();
    store
        .export(&Selection::Audience(list), |row| {
            emails.insert(row.email);
            Ok::<_, bulletin::store::Error>(())
        })
        .await
        .unwrap();
    emails
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The four files of a Mailchimp audience export, zipped as Mailchimp does.
fn mailchimp_zip(dir: &Path) -> PathBuf {
    let path = dir.join("audience_export_4f2a.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for kind in ["cleaned", "nonsubscribed", "subscribed", "unsubscribed"] {
        let name = format!("{kind}_members_export_4f2a.csv");
        zip.start_file(&name, options).unwrap();
        zip.write_all(&std::fs::read(data("mailchimp").join(&name)).unwrap())
            .unwrap();
    }
    zip.finish().unwrap();
    path
}

fn mailchimp_file(kind: &str) -> PathBuf {
    data("mailchimp").join(format!("{kind}_members_export_4f2a.csv"))
}

#[tokio::test]
async fn mailchimp_zip_nobody_who_left_is_mailable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = import(d, "t.db", &mailchimp_zip(d), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(
        text.contains("read as:             Mailchimp export"),
        "{text}"
    );
    assert!(
        text.contains("subscribed_members_export_4f2a.csv -> news"),
        "{text}"
    );
    assert!(
        text.contains("recorded as left:    24 (unsubscribed 11, bounced 8, complained 0, blocklisted 0; never subscribed, stored without a subscription 5)"),
        "{text}"
    );

    let store = open(d, "t.db").await;
    let mailable = mailable_on_news(&store).await;
    for row in rows(&mailchimp_file("subscribed")) {
        let email = &row["Email Address"];
        let p = store.profile(email).await.unwrap().unwrap();
        let s = &p.subscriber;
        assert_eq!(
            s.name,
            format!("{} {}", row["First Name"], row["Last Name"])
        );
        // Country and country are one attribute; keys are snake_case.
        let country = [&row["Country"], &row["country"]]
            .into_iter()
            .find(|c| !c.is_empty());
        assert_eq!(
            s.attributes.get("country").and_then(|v| v.as_str()),
            country.map(String::as_str),
            "{email}"
        );
        assert!(!s.attributes.contains_key("Country"));
        assert!(!s.attributes.contains_key("member_rating"));
        assert_eq!(s.attributes["country_code"], "NO");
        if !row["Favourite Colour"].is_empty() {
            assert_eq!(
                s.attributes["favourite_colour"],
                row["Favourite Colour"].as_str()
            );
        }
        let sub = &p.subscriptions[0];
        if email.starts_with("both") {
            // Also in the unsubscribed file: recorded as having left.
            assert_eq!(sub.status, "unsubscribed");
            assert!(!mailable.contains(email));
            continue;
        }
        assert_eq!(sub.status, "confirmed");
        assert!(mailable.contains(email), "{email}");
        let optin = bulletin::import::parse_time(&row["OPTIN_TIME"]);
        assert_eq!(sub.consent.at, optin, "{email}");
        assert_eq!(sub.consent.ip.as_deref(), Some(row["OPTIN_IP"].as_str()));
        assert_eq!(
            sub.consent.confirmed_at,
            bulletin::import::parse_time(&row["CONFIRM_TIME"])
        );
        assert_eq!(sub.consent.source.as_deref(), Some("mailchimp"));
    }
    for row in rows(&mailchimp_file("unsubscribed")) {
        let email = &row["Email Address"];
        assert!(!mailable.contains(email), "{email}");
        let p = store.profile(email).await.unwrap().unwrap();
        assert_eq!(p.subscriptions[0].status, "unsubscribed", "{email}");
        if !email.starts_with("both") {
            assert_eq!(p.subscriber.attributes["unsub_reason"], "NORMAL");
        }
    }
    for row in rows(&mailchimp_file("cleaned")) {
        let email = &row["Email Address"];
        assert!(!mailable.contains(email), "{email}");
        assert!(store.is_suppressed(email).await.unwrap(), "{email}");
        assert_eq!(
            store
                .profile(email)
                .await
                .unwrap()
                .unwrap()
                .subscriber
                .status,
            "bounced"
        );
    }
    for row in rows(&mailchimp_file("nonsubscribed")) {
        let p = store.profile(&row["Email Address"]).await.unwrap().unwrap();
        assert!(p.subscriptions.is_empty());
    }
    assert_eq!(mailable.len(), 30);
    store.close().await;

    // A later import of the subscribed file (or of another list's export)
    // never brings back anyone who left.
    for kind in ["subscribed", "cleaned", "unsubscribed"] {
        let out = import(d, "t.db", &mailchimp_file(kind), &[]);
        assert!(out.status.success());
    }
    let out = import(
        d,
        "t.db",
        &mailchimp_file("unsubscribed"),
        &["--from", "csv"],
    );
    assert!(out.status.success());
    let store = open(d, "t.db").await;
    assert_eq!(mailable_on_news(&store).await, mailable);
}

#[tokio::test]
async fn mailchimp_files_by_name_or_by_columns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Renamed, the unsubscribed file is still known by its UNSUB_TIME column.
    let renamed = d.join("left.csv");
    std::fs::copy(mailchimp_file("unsubscribed"), &renamed).unwrap();
    let out = import(d, "t.db", &renamed, &[]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("recorded as left:    11 (unsubscribed 11"));
    // The localised German export: E-Mail-Adresse, Vorname, Nachname.
    let out = import(d, "t.db", &data("mailchimp_de.csv"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("newly subscribed:    24"),
        "{}",
        stdout(&out)
    );
    let store = open(d, "t.db").await;
    let mailable = mailable_on_news(&store).await;
    for row in rows(&data("mailchimp_de.csv")) {
        let email = &row["E-Mail-Adresse"];
        assert!(mailable.contains(email));
        let p = store.profile(email).await.unwrap().unwrap();
        assert_eq!(
            p.subscriber.name,
            format!("{} {}", row["Vorname"], row["Nachname"])
        );
        assert_eq!(p.subscriber.attributes["land"], "Deutschland");
        assert_eq!(
            p.subscriptions[0].consent.ip.as_deref(),
            Some(row["OPTIN_IP"].as_str())
        );
    }
    assert!(mailable.iter().all(|e| !e.starts_with("unsub")));
}

#[tokio::test]
async fn listmonk_json_attributes_and_blocklist() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = import(d, "t.db", &data("listmonk.csv"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("read as:             listmonk export"));
    let store = open(d, "t.db").await;
    let mailable = mailable_on_news(&store).await;
    for row in rows(&data("listmonk.csv")) {
        let email = &row["email"];
        let p = store.profile(email).await.unwrap().unwrap();
        assert_eq!(p.subscriber.name, row["name"]);
        let attributes: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&row["attributes"]).unwrap();
        if let Some(city) = attributes.get("city") {
            assert_eq!(p.subscriber.attributes["city"], *city);
            // `Plan` is `plan`; numbers and objects as their JSON text.
            assert_eq!(p.subscriber.attributes["plan"], attributes["Plan"]);
            assert_eq!(
                p.subscriber.attributes["score"],
                attributes["score"].to_string().as_str()
            );
            assert_eq!(p.subscriber.attributes["tags"], "{\"a\":1}");
        }
        assert_eq!(p.subscriber.attributes["uuid"], row["uuid"].as_str());
        assert_eq!(
            p.subscriptions[0].consent.at,
            bulletin::import::parse_time(&row["created_at"])
        );
        match row["status"].as_str() {
            "enabled" => assert!(mailable.contains(email)),
            "blocklisted" => {
                assert!(!mailable.contains(email));
                assert!(store.is_suppressed(email).await.unwrap());
            }
            _ => assert!(!mailable.contains(email)),
        }
    }
    assert_eq!(mailable.len(), 18);
}

/// Keila, Ghost and Substack: who may be mailed, by each tool's status.
#[tokio::test]
async fn keila_ghost_substack_statuses() {
    type Rule = fn(&HashMap<String, String>) -> bool;
    let cases: [(&str, &str, &str, Rule); 3] = [
        ("keila.csv", "Keila", "Email", |r| r["Status"] == "active"),
        ("ghost.csv", "Ghost", "email", |r| {
            r["subscribed_to_emails"] == "true"
        }),
        ("substack.csv", "Substack", "email", |r| {
            r["email_disabled"] != "true"
        }),
    ];
    for (file, format, email_column, may_mail) in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let out = import(d, "t.db", &data(file), &[]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout(&out).contains(&format!("read as:             {format} export")));
        let store = open(d, "t.db").await;
        let mailable = mailable_on_news(&store).await;
        let fixture = rows(&data(file));
        for row in &fixture {
            let email = &row[email_column];
            assert_eq!(mailable.contains(email), may_mail(row), "{file}: {email}");
        }
        assert!(mailable.len() < fixture.len(), "{file}: someone left");
        if file == "keila.csv" {
            let p = store.profile("ke01@example.com").await.unwrap().unwrap();
            assert_eq!(p.subscriber.name, "Bruno Silva");
            assert_eq!(p.subscriber.attributes["company_name"], "ACME");
            assert_eq!(p.subscriber.attributes["external_id"], "ext-1");
            assert!(
                store.is_suppressed("ke20@example.com").await.unwrap(),
                "unreachable"
            );
        }
        if file == "ghost.csv" {
            let p = store.profile("gh01@example.io").await.unwrap().unwrap();
            assert_eq!(p.subscriber.attributes["note"], "early reader");
            assert_eq!(p.subscriber.attributes["labels"], "reader, beta");
            assert_eq!(p.subscriptions[0].consent.at, Some(1646215201));
        }
    }
}

#[tokio::test]
async fn plain_csv_loose_headers_status_short_rows_and_an_unclosed_quote() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = import(d, "t.db", &data("plain.csv"), &[]);
    // The unclosed quote is a rejected row: exit 1, the rest imported.
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plain.csv:7: a quoted field opens on this line and is never closed; row skipped, the 2 lines after it read as rows"),
        "{err}"
    );
    let text = stdout(&out);
    assert!(
        text.contains("read as:             plain CSV (--from csv)"),
        "{text}"
    );
    assert!(text.contains("short rows:          1"), "{text}");
    let store = open(d, "t.db").await;
    let mailable = mailable_on_news(&store).await;
    let expected: HashSet<String> = ["pa", "pe", "pg", "ph"]
        .iter()
        .map(|p| format!("{p}@example.org"))
        .collect();
    assert_eq!(mailable, expected);
    let pa = store.profile("pa@example.org").await.unwrap().unwrap();
    assert_eq!(pa.subscriber.name, "Pat Ames");
    assert_eq!(pa.subscriber.attributes["country"], "Norway");
    let ph = store.profile("ph@example.org").await.unwrap().unwrap();
    assert_eq!(ph.subscriber.attributes["country"], "Haiti");
    assert_eq!(
        store
            .profile("pe@example.org")
            .await
            .unwrap()
            .unwrap()
            .subscriber
            .name,
        "Ed"
    );
    assert!(store.profile("pf@example.org").await.unwrap().is_none());
    assert!(store.is_suppressed("pc@example.org").await.unwrap());
    assert!(store.is_suppressed("pd@example.org").await.unwrap());
    let pb = store.profile("pb@example.org").await.unwrap().unwrap();
    assert_eq!(pb.subscriptions[0].status, "unsubscribed");
}

#[tokio::test]
async fn dry_run_shows_format_and_mapping_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bulletin(d)
        .args(["--db", &pg::db_in(d, "t.db"), "init"])
        .assert()
        .success();
    let out = import(d, "t.db", &mailchimp_file("subscribed"), &["--dry-run"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for line in [
        "(dry run: nothing written)",
        "read as:             Mailchimp export",
        "\"Email Address\" -> email",
        "\"First Name\" -> name (first part)",
        "\"country\" -> attribute {{subscriber.country}}",
        "\"Favourite Colour\" -> attribute {{subscriber.favourite_colour}}",
        "\"OPTIN_TIME\" -> consent: opt-in time",
        "\"MEMBER_RATING\" -> not imported (Mailchimp's own data)",
        "newly subscribed:    31",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    let store = open(d, "t.db").await;
    assert!(store.lists().await.unwrap().is_empty(), "nothing written");
    assert_eq!(store.count(&Selection::Active).await.unwrap(), 0);
    // Asking for a format the file is not: one clear error.
    let out = import(
        d,
        "t.db",
        &data("ghost.csv"),
        &["--from", "listmonk", "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ghost.csv: this is not a listmonk export: no \"attributes\" column"),
        "{err}"
    );
}

#[tokio::test]
async fn exports_round_trip_with_consent_and_safe_cells() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(import(d, "a.db", &mailchimp_zip(d), &[]).status.success());
    for status in ["", "unsubscribed"] {
        let args: Vec<&str> = if status.is_empty() {
            vec!["--list", "news"]
        } else {
            vec!["--list", "news", "--status", status]
        };
        let first = export(d, "a.db", &args);
        // A formula is neutralised; consent times are in the file.
        assert!(
            first.contains("'=HYPERLINK") || !status.is_empty(),
            "{first}"
        );
        assert!(first.contains("203.0.113.1,"), "{first}");
        let file = d.join(format!("export{status}.csv"));
        std::fs::write(&file, &first).unwrap();
        let db = format!("b{status}.db");
        let out = import(d, &db, &file, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(export(d, &db, &args), first, "export → import → export");
    }
    // --bom for Excel; the Mailchimp layout; JSON for tools.
    let bom = export(d, "a.db", &["--list", "news", "--bom"]);
    assert!(bom.starts_with('\u{feff}'));
    let mailchimp = export(d, "a.db", &["--list", "news", "--format", "mailchimp"]);
    assert!(mailchimp.starts_with("Email Address,First Name,Last Name,"));
    assert!(mailchimp.contains(",203.0.113.1,"));
    let json = export(d, "a.db", &["--format", "json"]);
    let people: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sub01 = people
        .iter()
        .find(|p| p["email"] == "sub01@example.org")
        .unwrap();
    assert_eq!(sub01["lists"][0]["list"], "news");
    assert_eq!(sub01["lists"][0]["consent"]["optin_ip"], "203.0.113.1");
    assert_eq!(sub01["lists"][0]["consent"]["recorded_by"], "mailchimp");
    let everyone = export(d, "a.db", &[]);
    assert!(
        everyone.starts_with("email,name,status,lists,"),
        "{everyone}"
    );
    assert!(everyone.contains("news (confirmed)"));
}

#[tokio::test]
async fn show_download_and_erasure_of_consent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        import(d, "t.db", &mailchimp_file("subscribed"), &[])
            .status
            .success()
    );
    let show = bulletin(d)
        .args(["--db", &pg::db_in(d, "t.db"), "subscribers", "show"])
        .arg("sub08@example.org")
        .output()
        .unwrap();
    let text = stdout(&show);
    assert!(
        text.contains("consent: opted in 2021-09-18 09:18:08 UTC from 203.0.113.8, confirmed 2021-09-18 09:28:08 UTC from 198.51.100.8 (recorded by mailchimp)"),
        "{text}"
    );
    let store = open(d, "t.db").await;
    let id = store
        .subscriber("sub08@example.org")
        .await
        .unwrap()
        .unwrap()
        .id;
    let data = store.export_person(id).await.unwrap();
    assert_eq!(
        data["subscriptions"][0]["consent"]["optin_ip"],
        "203.0.113.8"
    );
    assert!(store.forget("sub08@example.org", "cli", 1).await.unwrap());
    store.close().await;
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM consents WHERE confirmed_ip = $1 OR consent_ip = $1",
    )
    .bind("198.51.100.8")
    .fetch_one(&crate::support::db::raw(pg::location(&pg::db_in(d, "t.db"))).await)
    .await
    .unwrap();
    assert_eq!(kept, 0, "no consent record keeps the confirmation IP");
    // On SQLite, not even the file's free pages keep it (secure_delete).
    if pg::engine() == pg::Engine::Sqlite {
        let bytes = std::fs::read(d.join("t.db")).unwrap();
        let needle = b"198.51.100.8";
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the confirmation IP is gone from the database file"
        );
    }
}

/// A sign-up confirmed through the web pages records the click: its time
/// and address, with the sign-up time as the opt-in; it shows in exports.
#[tokio::test]
async fn web_confirmation_click_is_a_consent_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = Store::open(pg::location(&pg::db_in(d, "t.db")))
        .await
        .unwrap();
    let list = store
        .create_list("news", "News", "", true, true, 1_700_000_000)
        .await
        .unwrap();
    let id = store
        .sign_up(
            "web@example.org",
            "Web",
            std::slice::from_ref(&list),
            1_700_000_000,
        )
        .await
        .unwrap()
        .unwrap()
        .subscriber;
    let ip: std::net::IpAddr = "2001:db8::7".parse().unwrap();
    assert!(
        store
            .confirm_from(id, list.id, Some(ip), 1_700_000_600)
            .await
            .unwrap()
    );
    let p = store.profile("web@example.org").await.unwrap().unwrap();
    let consent = &p.subscriptions[0].consent;
    assert_eq!(consent.at, Some(1_700_000_000));
    assert_eq!(consent.confirmed_at, Some(1_700_000_600));
    assert_eq!(consent.confirmed_ip.as_deref(), Some("2001:db8::7"));
    assert_eq!(consent.source.as_deref(), Some("web"));
    store.close().await;
    let csv = export(d, "t.db", &["--list", "news"]);
    assert!(
        csv.contains("web@example.org,Web,confirmed,2023-11-14T22:13:20Z,,2023-11-14T22:23:20Z,2001:db8::7,web"),
        "{csv}"
    );
}

/// The addresses of a Mailchimp fixture file.
fn fixture_emails(kind: &str) -> HashSet<String> {
    rows(&mailchimp_file(kind))
        .into_iter()
        .map(|r| r["Email Address"].clone())
        .collect()
}

/// Imports `files` in order into a new database `db` (onto `news`) and
/// returns who is mailable there.
async fn reimport(d: &Path, db: &str, files: &[(&str, &str)]) -> HashSet<String> {
    for (name, text) in files {
        let file = d.join(name);
        std::fs::write(&file, text).unwrap();
        let out = import(d, db, &file, &[]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    mailable_on_news(&open(d, db).await).await
}

/// See: walkthrough report A. `subscribers export` without `--list` holds
/// only people who would get mail; `--status all` marks who left every list
/// as unsubscribed; the Mailchimp format is Mailchimp's subscribed,
/// unsubscribed and cleaned files. Export → import into an empty database
/// → nobody who left is mailable, in both formats.
#[tokio::test]
async fn people_exports_never_resubscribe_who_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(import(d, "a.db", &mailchimp_zip(d), &[]).status.success());
    let mailable = mailable_on_news(&open(d, "a.db").await).await;
    let left: HashSet<String> = fixture_emails("unsubscribed")
        .union(&fixture_emails("cleaned"))
        .cloned()
        .collect();
    assert!(!mailable.is_empty() && mailable.is_disjoint(&left));

    // bulletin's CSV: the default export, then everyone.
    let csv = export(d, "a.db", &[]);
    assert!(!csv.contains("(unsubscribed)"), "{csv}");
    assert_eq!(
        reimport(d, "csv.db", &[("everyone.csv", &csv)]).await,
        mailable
    );
    let all = export(d, "a.db", &["--status", "all"]);
    assert!(
        all.contains("unsub00@example.org,Ann Lee,unsubscribed,news (unsubscribed)"),
        "{all}"
    );
    assert!(
        all.contains("clean00@example.org,Ann Lee,bounced,"),
        "{all}"
    );
    assert_eq!(reimport(d, "all.db", &[("all.csv", &all)]).await, mailable);
    // The person's own status `active` includes who left every list; their
    // rows still say what a re-import must do.
    let active = export(d, "a.db", &["--status", "active"]);
    assert_eq!(
        reimport(d, "active.db", &[("active.csv", &active)]).await,
        mailable
    );

    // Mailchimp's layout: the default is the subscribed file, and says so.
    let out = bulletin(d)
        .args(["--db", &pg::db_in(d, "a.db")])
        .args(["subscribers", "export", "--format", "mailchimp"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("subscribed people only"));
    let subscribed = stdout(&out);
    // A list's file says so too.
    let out = bulletin(d)
        .args(["--db", &pg::db_in(d, "a.db")])
        .args([
            "subscribers",
            "export",
            "--format",
            "mailchimp",
            "--list",
            "news",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("the subscribed people of news only"),
        "{said}"
    );
    for email in &left {
        assert!(
            !subscribed.contains(email.as_str()),
            "{email}: {subscribed}"
        );
    }
    let unsubscribed = export(
        d,
        "a.db",
        &["--format", "mailchimp", "--status", "unsubscribed"],
    );
    assert!(
        unsubscribed
            .lines()
            .next()
            .unwrap()
            .ends_with(",UNSUB_TIME"),
        "{unsubscribed}"
    );
    let cleaned = export(d, "a.db", &["--format", "mailchimp", "--status", "bounced"]);
    assert!(
        cleaned.lines().next().unwrap().ends_with(",CLEAN_TIME"),
        "{cleaned}"
    );
    for email in fixture_emails("unsubscribed") {
        assert!(unsubscribed.contains(&email), "{email}: {unsubscribed}");
    }
    for email in fixture_emails("cleaned") {
        assert!(cleaned.contains(&email), "{email}: {cleaned}");
    }
    // The unsubscribed and cleaned files are recognised by their columns,
    // whatever their names, and imported first they still hold.
    let files = [
        ("people-unsub.csv", unsubscribed.as_str()),
        ("people-cleaned.csv", cleaned.as_str()),
        ("everyone-mc.csv", subscribed.as_str()),
    ];
    assert_eq!(reimport(d, "mc.db", &files).await, mailable);
    let back = export(d, "mc.db", &["--status", "unsubscribed"]);
    for email in fixture_emails("unsubscribed") {
        assert!(back.contains(&email), "{email} recorded as left: {back}");
    }
    let back = export(d, "mc.db", &["--status", "bounced"]);
    for email in fixture_emails("cleaned") {
        assert!(back.contains(&email), "{email} recorded as cleaned: {back}");
    }

    // A subscription state needs a list; Mailchimp has no pending file.
    for (args, says) in [
        (
            &["--status", "confirmed"][..],
            "--status confirmed: a subscription state belongs to one list; add --list SLUG",
        ),
        (
            &["--format", "mailchimp", "--status", "all"][..],
            "--status all with --format mailchimp",
        ),
    ] {
        let out = bulletin(d)
            .args(["--db", &pg::db_in(d, "a.db"), "subscribers", "export"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

/// See: walkthrough report D. Mailchimp's `TAGS` cell (`"Board","Donor"`)
/// is stored as `Board, Donor`, not with its quotes.
#[tokio::test]
async fn mailchimp_tags_are_stored_without_their_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("subscribed_members_export_1.csv");
    std::fs::write(
        &file,
        "Email Address,First Name,Last Name,MEMBER_RATING,TAGS\n\
         ann@example.org,Ann,Lee,2,\"\"\"Board\"\",\"\"Donor\"\"\"\n\
         bo@example.org,Bo,Ek,2,\n",
    )
    .unwrap();
    assert!(import(d, "t.db", &file, &[]).status.success());
    let out = import(d, "t.db", &file, &["--dry-run"]);
    assert!(
        stdout(&out).contains("attribute {{subscriber.tags}} (Mailchimp's tags, as Board, Donor)"),
        "{}",
        stdout(&out)
    );
    let store = open(d, "t.db").await;
    let ann = store.profile("ann@example.org").await.unwrap().unwrap();
    assert_eq!(ann.subscriber.attributes["tags"], "Board, Donor");
    let bo = store.profile("bo@example.org").await.unwrap().unwrap();
    assert!(!bo.subscriber.attributes.contains_key("tags"));
}

/// See: walkthrough report A. A person still on one list but who left
/// another is in the default export of people; imported into the list they
/// left, they stay left (the `lists` column says so).
#[tokio::test]
async fn who_left_one_list_stays_left_when_their_row_is_imported_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let out = bulletin(d)
            .args(["--db", &pg::db_in(d, "a.db")])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    run(&["init"]);
    run(&["lists", "add", "news", "--name", "News"]);
    run(&["lists", "add", "events", "--name", "Events"]);
    for (email, list) in [
        ("ann@example.org", "news"),
        ("ann@example.org", "events"),
        ("bo@example.org", "news"),
        ("bo@example.org", "events"),
    ] {
        run(&["subscribers", "add", email, "--list", list]);
    }
    run(&["subscribers", "remove", "bo@example.org", "--list", "news"]);
    let csv = export(d, "a.db", &[]);
    assert!(csv.contains("news (unsubscribed)"), "{csv}");
    let mailable = reimport(d, "b.db", &[("people.csv", &csv)]).await;
    assert_eq!(mailable, HashSet::from(["ann@example.org".to_string()]));
}

/// `status` and `suppressed` of `email` as `subscribers show` prints them.
fn standing(dir: &Path, db: &str, email: &str) -> (String, String) {
    let out = bulletin(dir)
        .args(["--db", &pg::db_in(dir, db), "subscribers", "show", email])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .to_string()
    };
    (field("status:"), field("suppressed:"))
}

/// See: walkthrough report (export round trip). A list export states who
/// bounced or is suppressed as such, not by their subscription's state
/// (`unsubscribed`), so that importing it into an empty database keeps them
/// unmailed and suppressed, and exporting that gives the same file.
#[tokio::test]
async fn list_export_round_trip_keeps_bounces_and_suppressions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("people.csv");
    std::fs::write(
        &file,
        "email,name,status,home_city\n\
         ann@example.org,Ann Lee,subscribed,Paris\n\
         bob@example.org,Bob Ray,unsubscribed,Rome\n\
         cleo@example.org,Cleo Day,cleaned,Oslo\n\
         dan@example.org,Dan Fox,complained,Riga\n\
         eve@example.org,Eve Ash,blocklisted,Lima\n",
    )
    .unwrap();
    assert!(import(d, "a.db", &file, &[]).status.success());
    // Each person: the export's status cell, then `show`'s status and
    // suppressed, in the first database and after the round trip.
    let people = [
        ("ann@example.org", "confirmed", "active", "no"),
        ("bob@example.org", "unsubscribed", "active", "no"),
        ("cleo@example.org", "bounced", "bounced", "yes"),
        ("dan@example.org", "complained", "complained", "yes"),
        ("eve@example.org", "suppressed", "unsubscribed", "yes"),
    ];
    let args = ["--list", "news", "--status", "all"];
    let first = export(d, "a.db", &args);
    for (email, cell, ..) in people {
        assert!(
            first.lines().any(|l| {
                let mut cells = l.split(',');
                cells.next() == Some(email) && cells.nth(1) == Some(cell)
            }),
            "{email} as {cell}: {first}"
        );
    }
    let exported = d.join("news.csv");
    std::fs::write(&exported, &first).unwrap();
    succeeded(import(d, "b.db", &exported, &[]));
    // The export read back into the database it came from changes nobody,
    // and the summary says so: who left is already recorded as left, and
    // nobody was asked to be subscribed again.
    let again = stdout(&succeeded(import(d, "a.db", &exported, &[])));
    for line in [
        "already subscribed:  1",
        "recorded as left:    0 (",
        "already left:        4 (",
        "not resubscribed:    0 (",
    ] {
        assert!(again.contains(line), "{line}: {again}");
    }
    for db in ["a.db", "b.db"] {
        for (email, _, status, suppressed) in people {
            assert_eq!(
                standing(d, db, email),
                (status.to_string(), suppressed.to_string()),
                "{email} in {db}"
            );
        }
    }
    assert_eq!(
        mailable_on_news(&open(d, "b.db").await).await,
        HashSet::from(["ann@example.org".to_string()])
    );
    assert_eq!(export(d, "b.db", &args), first, "export → import → export");
}

/// A complaint imported into one list stops mail on every list, as one
/// through the bounce path does: Ann, confirmed on `older`, marked our
/// mail as spam in the old tool; when she later signs up for `later` (which
/// lifts the complaint), `older` must not start mailing her again.
#[tokio::test]
async fn an_imported_complaint_leaves_every_list_not_only_the_imported_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let import_into = |list: &str, status: &str| {
        let file = d.join(format!("{list}.csv"));
        std::fs::write(&file, format!("email,status\nann@example.org,{status}\n")).unwrap();
        succeeded(import_to(d, "t.db", &file, list, &[]));
    };
    import_into("older", "subscribed");
    let store = open(d, "t.db").await;
    assert_eq!(
        mailable_on(&store, "older").await,
        HashSet::from(["ann@example.org".to_string()])
    );
    import_into("news", "complained");
    assert!(mailable_on(&store, "older").await.is_empty());

    let later = store
        .create_list("later", "Later", "", false, true, 1)
        .await
        .unwrap();
    let signed = store
        .sign_up("ann@example.org", "Ann", std::slice::from_ref(&later), 2)
        .await
        .unwrap()
        .expect("a complaint does not bar signing up again");
    assert!(store.confirm(signed.subscriber, later.id, 3).await.unwrap());
    assert_eq!(
        mailable_on(&store, "later").await,
        HashSet::from(["ann@example.org".to_string()])
    );
    assert!(
        mailable_on(&store, "older").await.is_empty(),
        "the list she was on when she complained mails her again"
    );
}

/// See: walkthrough report (export round trip). The Mailchimp layout
/// writes the name once, in First Name and Last Name, not again as the
/// `first_name` and `last_name` attributes an import keeps (Mailchimp would
/// make merge fields of them); a two-word first name stays whole.
#[tokio::test]
async fn mailchimp_export_writes_the_name_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("people.csv");
    std::fs::write(
        &file,
        "Email Address,First Name,Last Name,Home City\n\
         mary@example.org,Mary Ann,Smith,Paris\n\
         li@example.org,Li,,Oslo\n",
    )
    .unwrap();
    assert!(import(d, "a.db", &file, &[]).status.success());
    let args = ["--list", "news", "--format", "mailchimp"];
    let first = export(d, "a.db", &args);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(
        lines[0],
        "Email Address,First Name,Last Name,home_city,OPTIN_TIME,OPTIN_IP,CONFIRM_TIME,CONFIRM_IP"
    );
    assert_eq!(lines[1], "mary@example.org,Mary Ann,Smith,Paris,,,,");
    assert_eq!(lines[2], "li@example.org,Li,,Oslo,,,,");
    // bulletin reads it back as it was.
    let exported = d.join("mailchimp.csv");
    std::fs::write(&exported, &first).unwrap();
    assert!(import(d, "b.db", &exported, &[]).status.success());
    assert_eq!(export(d, "b.db", &args), first);
}

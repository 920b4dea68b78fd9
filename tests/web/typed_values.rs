//! Subscriber pages: what people type, on every way in (sign-up, preference
//! form, CSV import through the binary), is cleaned by one rule: control
//! characters out, tabs to spaces, names up to 200 characters and attribute
//! values up to 1,000.

use super::*;

/// A name built to break a mail header: CR/LF, a NUL, a tab, DEL.
const HOSTILE: &str = "New\r\nBcc: evil@example.com\0\tPerson\u{7f}";
const CLEANED: &str = "New Bcc: evil@example.com Person";

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[tokio::test]
async fn a_name_with_line_breaks_signs_up_cleaned_and_the_email_goes_out() {
    let site = Site::new().await;
    let r = site
        .form(
            "/subscribe",
            &[
                ("email", "new@example.net"),
                ("name", HOSTILE),
                ("list", "events"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let person = site
        .store
        .subscriber("new@example.net")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(person.name, CLEANED);
    let mails = site.mails(1).await;
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains(&format!("Hello {CLEANED},")),
        "{}",
        mails[0]
    );
    assert!(!mails[0].contains("\r\nBcc:"), "{}", mails[0]);

    // Over the limit after cleaning: refused, nothing stored. Exactly at the
    // limit with line breaks around it: accepted.
    let before = site.dump().await;
    let long = format!("{}\r\n", "n".repeat(201));
    let r = site
        .form(
            "/subscribe",
            &[
                ("email", "long@example.net"),
                ("name", &long),
                ("list", "news"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("too long"), "{}", r.body);
    assert_eq!(site.dump().await, before);
    let fits = format!("\r\n{}\r\n\r\n", "n".repeat(200));
    let r = site
        .form(
            "/subscribe",
            &[
                ("email", "fits@example.net"),
                ("name", &fits),
                ("list", "news"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let person = site.store.subscriber("fits@example.net").await.unwrap();
    assert_eq!(person.unwrap().name, "n".repeat(200));
}

#[tokio::test]
async fn the_preference_form_stores_names_without_control_characters() {
    let site = Site::new().await;
    let r = site
        .preferences_form(
            site.ann,
            &[("name", HOSTILE), ("list", "news"), ("list", "staff")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let ann = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ann.name, CLEANED);
    // Only control characters: the name is empty, not refused.
    let r = site
        .preferences_form(
            site.ann,
            &[("name", "\r\n\0"), ("list", "news"), ("list", "staff")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let ann = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ann.name, "");
}

#[tokio::test]
async fn csv_import_cleans_names_and_values_and_refuses_oversized_cells() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let huge = "x".repeat(10 * 1024 * 1024);
    let mut csv = Vec::new();
    csv.extend_from_slice(b"email,name,City\n");
    // A quoted cell may hold CR/LF (so the next row is on line 4); a NUL
    // and a tab in an attribute.
    csv.extend_from_slice(b"ann@example.org,\"Ann\r\nBcc: evil@example.com\",Paris\0\tFrance\n");
    csv.extend_from_slice(format!("big@example.org,{huge},Rome\n").as_bytes());
    csv.extend_from_slice(format!("wide@example.org,Wide,{}\n", "c".repeat(1_001)).as_bytes());
    csv.extend_from_slice(format!("edge@example.org,Edge,{}\n", "c".repeat(1_000)).as_bytes());
    std::fs::write(d.join("people.csv"), &csv).unwrap();
    let db = crate::support::pg::db_setting(d).await;
    let out = crate::util::bulletin(d)
        .args(["--db", &db, "subscribers", "import", "people.csv"])
        .args(["--list", "news"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "rows were refused: {stderr}");
    assert!(
        stderr.contains("people.csv:4: name: longer than 200 characters (10485760); shorten it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("people.csv:5: City: longer than 1000 characters (1001); shorten it"),
        "{stderr}"
    );
    assert!(stderr.len() < 1_000, "the cell is not echoed: {stderr}");

    // `subscribers add --name` goes through the same rule.
    let add = |name: &str| {
        crate::util::bulletin(d)
            .args(["--db", &db, "subscribers", "add", "cli@example.org"])
            .args(["--list", "news", "--name", name])
            .output()
            .unwrap()
    };
    let out = add(&"n".repeat(201));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--name: longer than 200 characters (201)"),
        "{stderr}"
    );
    assert!(add("Cli\tPerson\u{1b}[31m").status.success());

    let store = Store::open(bulletin::store::Location::parse(Path::new(&db), None).unwrap())
        .await
        .unwrap();
    let ann = store.subscriber("ann@example.org").await.unwrap().unwrap();
    assert_eq!(ann.name, "Ann Bcc: evil@example.com");
    let attributes: String =
        sqlx::query_scalar("SELECT attributes FROM subscribers WHERE email = 'ann@example.org'")
            .fetch_one(&crate::support::db::raw(store.location()).await)
            .await
            .unwrap();
    assert_eq!(attributes, r#"{"city":"Paris France"}"#);
    assert!(store.subscriber("big@example.org").await.unwrap().is_none());
    assert!(
        store
            .subscriber("wide@example.org")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .subscriber("edge@example.org")
            .await
            .unwrap()
            .is_some()
    );
    let stored: Vec<String> = sqlx::query_scalar("SELECT name || attributes FROM subscribers")
        .fetch_all(&crate::support::db::raw(store.location()).await)
        .await
        .unwrap();
    assert!(!stored.iter().any(|s| has_control(s)), "{stored:?}");
}

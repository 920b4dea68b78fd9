//! Subscriber pages: preference center.

use super::*;

/// The value of the hidden `csrf` field of a form page.
fn csrf_field(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {page}"))
        + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

/// The hint a list's box carries when the email came through that list.
const VIA: &str = "The email you came from was sent to you through this list.";

/// The `<label>` of list `slug`'s box.
fn label<'a>(page: &'a str, slug: &str) -> &'a str {
    let start = page
        .find(&format!("<label class=\"check\" for=\"list-{slug}\">"))
        .unwrap_or_else(|| panic!("no box for {slug} in {page}"));
    let rest = &page[start..];
    &rest[..rest.find("</label>").unwrap()]
}

#[tokio::test]
async fn the_page_from_an_email_marks_the_list_it_came_through_among_all_of_the_persons() {
    let site = Site::new().await;
    // From a campaign to news and staff that reached ann through staff.
    let token = site.token(Purpose::Preferences, site.ann, site.staff.id);
    let page = site.get(&format!("/preferences/{token}")).await.body;
    assert!(label(&page, "staff").contains(VIA), "{page}");
    assert!(!label(&page, "news").contains(VIA), "{page}");
    assert!(!label(&page, "events").contains(VIA), "{page}");
    assert!(is_ticked(&page, "news") && is_ticked(&page, "staff"));
    assert_eq!(page.matches(VIA).count(), 1, "{page}");
    // A link that names no list (older emails, the unsubscribe page of a
    // test copy) marks none.
    let page = site.get(&site.preferences_path(site.ann)).await.body;
    assert!(!page.contains(VIA), "{page}");
    // Saving from the marked page works as from any other.
    let path = format!("/preferences/{token}");
    let csrf = site.csrf(site.ann);
    let r = site
        .form(
            &path,
            &[
                ("csrf", csrf.as_str()),
                ("name", "Ann"),
                ("list", "news"),
                ("shown", "news:on"),
                ("shown", "staff:on"),
                ("shown", "events:off"),
                ("action", "save"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        site.subscription(site.ann, &site.staff).await.as_deref(),
        Some("unsubscribed")
    );
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("confirmed")
    );
}

#[tokio::test]
async fn preferences_page_shows_name_lists_and_a_csrf_field() {
    let site = Site::new().await;
    let before = site.dump().await;
    let path = site.preferences_path(site.ann);
    let r = site.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    let page = &r.body;
    assert!(page.contains("<h1>Your subscription</h1>"), "{page}");
    assert!(page.contains("name=\"name\" value=\"Ann\""), "{page}");
    assert!(page.contains(&format!("action=\"{path}\"")), "{page}");
    assert!(is_ticked(page, "news"));
    assert!(is_ticked(page, "staff"), "her private list is shown");
    assert!(!is_ticked(page, "events"), "a public list she is not on");
    assert!(page.contains("What we did this month"), "description");
    let csrf = csrf_field(page);
    let claims = site.signer.verify::<Csrf>(&csrf).unwrap();
    assert_eq!(claims.subscriber, site.ann);
    assert!(page.contains(&format!("href=\"{path}/data\"")), "{page}");
    assert!(page.contains(&format!("href=\"{path}/erase\"")), "{page}");
    assert!(!page.contains("Your choices are saved"));

    // Bob sees the public lists, not the private list he is not on.
    let bob = site.get(&site.preferences_path(site.bob)).await.body;
    assert!(is_ticked(&bob, "news"));
    assert!(!is_ticked(&bob, "events"));
    assert!(!bob.contains("value=\"staff\""), "{bob}");
    assert!(!bob.contains("ann@example.org") && !bob.contains("Ann"));
    assert_eq!(site.dump().await, before, "GET changes nothing");
}

#[tokio::test]
async fn saving_preferences_changes_lists_and_name() {
    let site = Site::new().await;
    let path = site.preferences_path(site.ann);
    let csrf = site.csrf(site.ann);
    // News unticked, events ticked, staff kept, a new name.
    let r = site
        .form(
            &path,
            &[
                ("csrf", &csrf),
                ("name", "  Ann Smith "),
                ("list", "events"),
                ("list", "staff"),
                ("action", "save"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let location = r.header(header::LOCATION).to_string();
    assert_eq!(location, format!("{path}?saved=1"));
    let person = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person.name, "Ann Smith");
    assert_eq!(person.status, "active");
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("unsubscribed")
    );
    assert_eq!(
        site.subscription(site.ann, &site.events).await.as_deref(),
        Some("confirmed"),
        "the link proves the address: no second confirmation"
    );
    assert_eq!(
        site.subscription(site.ann, &site.staff).await.as_deref(),
        Some("confirmed")
    );
    assert_eq!(site.audience(&site.events).await, 1);
    let web: Vec<_> = site
        .history(site.ann)
        .await
        .into_iter()
        .filter(|(_, _, source)| source == "web")
        .map(|(kind, list, _)| (kind, list))
        .collect();
    assert_eq!(
        web,
        [
            ("updated".into(), None),
            ("subscribed".into(), Some(site.events.id)),
            ("unsubscribed".into(), Some(site.news.id)),
        ]
    );

    // The page after the redirect says so and shows the new state.
    let page = site.get(&location).await.body;
    assert!(page.contains("Your choices are saved."), "{page}");
    assert!(page.contains("value=\"Ann Smith\""));
    assert!(!is_ticked(&page, "news"));
    assert!(is_ticked(&page, "events"));
    assert!(is_ticked(&page, "staff"));

    // Saving the same choices again records nothing new.
    let before = site.dump().await;
    let r = site
        .form(
            &path,
            &[
                ("csrf", &csrf),
                ("name", "Ann Smith"),
                ("list", "events"),
                ("list", "staff"),
                ("action", "save"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(site.dump().await, before);
}

#[tokio::test]
async fn a_private_list_cannot_be_joined_from_the_form() {
    let site = Site::new().await;
    let r = site
        .preferences_form(
            site.bob,
            &[
                ("list", "news"),
                ("list", "staff"),
                ("list", "no-such-list"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(site.subscription(site.bob, &site.staff).await, None);
    assert_eq!(
        site.subscription(site.bob, &site.news).await.as_deref(),
        Some("confirmed")
    );
}

#[tokio::test]
async fn leave_all_unsubscribes_from_every_list() {
    let site = Site::new().await;
    let r = site
        .preferences_form(
            site.ann,
            // Ticked boxes are sent too when the other button is pressed.
            &[
                ("name", "Ann"),
                ("list", "news"),
                ("list", "staff"),
                ("action", "leave"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    for list in [&site.news, &site.staff] {
        assert_eq!(
            site.subscription(site.ann, list).await.as_deref(),
            Some("unsubscribed"),
            "{}",
            list.slug
        );
    }
    assert_eq!(site.subscription(site.ann, &site.events).await, None);
    assert_eq!(site.audience(&site.news).await, 1, "only bob");
    assert_eq!(site.audience(&site.staff).await, 0);
}

#[tokio::test]
async fn leave_all_keeps_imports_and_operators_away() {
    // `subscribers remove` without --list marks the person unsubscribed "so
    // no import brings them back"; the button "Unsubscribe from everything"
    // must mean the same.
    let site = Site::new().await;
    let r = site
        .preferences_form(site.ann, &[("action", "leave")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let person = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person.status, "unsubscribed");
    let added = site
        .store
        .add_subscriber("ann@example.org", None, "events", "cli", NOW)
        .await;
    assert!(added.is_err(), "{added:?}");
}

#[tokio::test]
async fn ticking_a_list_after_leaving_everything_brings_the_mail_back() {
    let site = Site::new().await;
    // She left every list (by mail to the team, say).
    site.store
        .remove_subscriber("ann@example.org", None, "cli", NOW)
        .await
        .unwrap();
    assert_eq!(site.audience(&site.news).await, 1);
    let path = site.preferences_path(site.ann);
    let r = site
        .preferences_form(site.ann, &[("list", "news"), ("action", "save")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(is_ticked(&site.get(&path).await.body, "news"));
    assert_eq!(
        site.audience(&site.news).await,
        2,
        "what the page shows ticked is what she receives"
    );
}

#[tokio::test]
async fn preference_forms_refuse_a_missing_or_foreign_csrf_token() {
    let site = Site::new().await;
    let before = site.dump().await;
    let prefs = site.preferences_path(site.ann);
    let foreign = [
        None,
        Some(String::new()),
        Some("garbage".to_string()),
        Some(site.csrf(site.bob)),
        Some(site.token(Purpose::Preferences, site.ann, 0)),
        Some(Signer::new(b"another secret", &[]).sign(&Csrf {
            subscriber: site.ann,
        })),
    ];
    for csrf in &foreign {
        for path in [prefs.clone(), format!("{prefs}/erase")] {
            let mut fields = vec![("action", "leave"), ("name", "Mallory")];
            if let Some(c) = csrf {
                fields.push(("csrf", c));
            }
            let r = site.form(&path, &fields).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path} {csrf:?}");
            assert!(r.body.contains("This form has expired"), "{}", r.body);
        }
    }
    assert_eq!(site.dump().await, before);
}

#[tokio::test]
async fn a_name_too_long_is_refused_and_nothing_is_saved() {
    let site = Site::new().await;
    let before = site.dump().await;
    let long = "n".repeat(201);
    let r = site
        .preferences_form(site.ann, &[("name", &long), ("action", "leave")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("too long"), "{}", r.body);
    assert_eq!(site.dump().await, before);
    // 200 characters (not bytes) are fine.
    let ok = "é".repeat(200);
    let r = site
        .preferences_form(
            site.ann,
            &[("name", &ok), ("list", "news"), ("list", "staff")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let person = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person.name, ok);
}

#[tokio::test]
async fn what_a_person_typed_is_escaped_on_the_page() {
    let site = Site::new().await;
    let path = site.preferences_path(site.ann);
    let name = "<script>alert(1)</script>\" onfocus=\"x";
    let r = site
        .preferences_form(site.ann, &[("name", name), ("list", "news")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let page = site.get(&path).await.body;
    assert!(!page.contains("<script>"), "{page}");
    assert!(!page.contains("\" onfocus=\"x"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
}

#[tokio::test]
async fn download_returns_everything_stored_about_the_person_as_json() {
    let site = Site::new().await;
    let before = site.dump().await;
    let r = site
        .get(&format!("{}/data", site.preferences_path(site.ann)))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header(header::CONTENT_TYPE),
        "application/json; charset=utf-8"
    );
    assert_eq!(
        r.header(header::CONTENT_DISPOSITION),
        "attachment; filename=\"my-data.json\""
    );
    let data: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(data["email"], "ann@example.org");
    assert_eq!(data["name"], "Ann");
    assert_eq!(data["status"], "active");
    let mut lists: Vec<(String, String)> = data["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["list"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    lists.sort();
    assert_eq!(
        lists,
        [
            ("news".to_string(), "confirmed".to_string()),
            ("staff".to_string(), "confirmed".to_string())
        ]
    );
    let history = data["history"].as_array().unwrap();
    assert_eq!(history.len(), site.history(site.ann).await.len());
    assert!(history.iter().all(|e| e["kind"] == "subscribed"), "{data}");
    assert!(data["emails_received"].as_array().unwrap().is_empty());
    assert!(!r.body.contains("bob@example.org"));
    assert_eq!(site.dump().await, before);
}

#[tokio::test]
async fn erase_asks_first_then_leaves_only_the_hashed_suppression() {
    let site = Site::new().await;
    let before = site.dump().await;
    let prefs = site.preferences_path(site.ann);
    let unsub = site.unsubscribe_path(site.ann, &site.news);
    let page = site.get(&format!("{prefs}/erase")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Erase your data?"), "{}", page.body);
    assert!(
        page.body.contains(&format!("action=\"{prefs}/erase\"")),
        "{}",
        page.body
    );
    assert!(page.body.contains(&format!("href=\"{prefs}\"")), "go back");
    assert_eq!(site.dump().await, before, "GET changes nothing");

    let csrf = csrf_field(&page.body);
    let r = site
        .form(&format!("{prefs}/erase"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Your data is erased"), "{}", r.body);

    let person = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person.email, None);
    assert_eq!(person.name, "");
    assert!(person.attributes.is_empty());
    assert_eq!(person.status, "erased");
    assert_eq!(site.subscription(site.ann, &site.news).await, None);
    assert_eq!(site.subscription(site.ann, &site.staff).await, None);
    assert!(site.store.is_suppressed("Ann@Example.org").await.unwrap());
    let reason: String = sqlx::query_scalar("SELECT reason FROM suppressions WHERE hash = $1")
        .bind(bulletin::address::hash("ann@example.org"))
        .fetch_one(&crate::support::db::raw(site.store.location()).await)
        .await
        .unwrap();
    assert_eq!(reason, "erased");
    // Nothing in any table names her any more.
    let after = site.dump().await;
    assert!(!after.contains("ann@example.org"), "{after}");
    assert!(!after.contains("Ann"), "{after}");
    assert!(after.contains("bob@example.org"), "others untouched");

    // Her old links are dead, and the erasure cannot be replayed.
    let not_found = site.not_found_page().await;
    for r in [
        site.get(&prefs).await,
        site.get(&format!("{prefs}/data")).await,
        site.form(&format!("{prefs}/erase"), &[("csrf", &csrf)])
            .await,
        site.get(&unsub).await,
        site.post(&unsub, FORM, "List-Unsubscribe=One-Click").await,
    ] {
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.body, not_found);
    }
    assert_eq!(site.dump().await, after);

    // Signing up again gets the usual answer and a confirmation email; the
    // erased row stays erased (`signup::an_erased_person_who_signs_up_again_
    // comes_back_by_confirming` follows it to the end).
    let r = site
        .form(
            "/subscribe",
            &[("email", "ann@example.org"), ("list", "events")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Check your inbox"));
    assert_eq!(site.mails(1).await.len(), 1);
    let erased = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((erased.email, erased.status.as_str()), (None, "erased"));
}

#[tokio::test]
async fn an_erased_address_is_not_left_in_the_database_file() {
    let site = Site::new().await;
    let prefs = site.preferences_path(site.ann);
    let r = site
        .form(&format!("{prefs}/erase"), &[("csrf", &site.csrf(site.ann))])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Neither in the file nor in its write-ahead log. (About SQLite's
    // file: PostgreSQL's files are the server's.)
    let Some(db) = site.store.location().file() else {
        eprintln!("NOTICE: about the SQLite file; skipped on PostgreSQL");
        return;
    };
    let mut bytes = std::fs::read(db).unwrap();
    bytes.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
    for gone in ["ann@example.org", "eve@example.org"] {
        assert!(
            !bytes.windows(gone.len()).any(|w| w == gone.as_bytes()),
            "{gone} is still in the database file"
        );
    }
    assert!(
        bytes.windows(15).any(|w| w == b"bob@example.org"),
        "the search works"
    );
}

#[tokio::test]
async fn a_token_with_trailing_junk_is_refused() {
    let site = Site::new().await;
    let not_found = site.not_found_page().await;
    let good = site.token(Purpose::Preferences, site.ann, 0);
    let padded = {
        // 16 bytes take 26 characters with 2 bits to spare: set them.
        let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
        let mut chars: Vec<char> = good.chars().collect();
        let last = chars.len() - 1;
        let v = alphabet.find(chars[last]).unwrap() ^ 1;
        chars[last] = alphabet.as_bytes()[v] as char;
        chars.into_iter().collect::<String>()
    };
    for token in [format!("{good}a"), format!("{good}q"), padded] {
        let r = site.get(&format!("/preferences/{token}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{token}");
        assert_eq!(r.body, not_found);
    }
}

//! Subscriber pages: the archive and the real server.

use super::*;

/// The https URL of a List-Unsubscribe header.
fn one_click_url(list_unsubscribe: &str) -> &str {
    list_unsubscribe
        .split(',')
        .map(|part| part.trim().trim_start_matches('<').trim_end_matches('>'))
        .find(|u| u.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https URL in {list_unsubscribe}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_shows_sent_campaigns_with_personal_fields_blanked() {
    let sink = SmtpSink::start(Behaviour::new());
    let (env, db) = env_on_engine(sink.port()).await;
    env.subscribers(1, &["ana@example.net"]).await;
    make_public(&db, "news").await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    // A scheduled campaign is not public yet.
    std::fs::write(
        env.dir.path().join("campaigns/later.md"),
        "+++\nsubject = \"Not yet\"\nlist = \"news\"\n+++\n# S\n\n## A\n\nLater.\n",
    )
    .unwrap();
    env.ok(&[
        "send",
        "campaigns/later.md",
        "--at",
        "2099-01-01 09:00",
        "--yes",
    ])
    .await;
    let store = Store::open(&db).await.unwrap();
    let app = web::router(app_state(
        store.clone(),
        Signer::new(SECRET.as_bytes(), &[]),
        None,
    ));
    let get = |path: &'static str| call(&app, request("GET", path, None, Vec::new()));

    let index = get("/archive").await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(
        index.body.contains("<h1>Past bulletins</h1>"),
        "{}",
        index.body
    );
    assert!(
        index
            .body
            .contains("<a href=\"/archive/news-1\">News for you</a>"),
        "the subject as the archive page shows it: {}",
        index.body
    );
    assert!(!index.body.contains("{{"), "{}", index.body);
    assert!(!index.body.contains("later") && !index.body.contains("Not yet"));

    let page = get("/archive/news-1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header(header::CONTENT_TYPE).starts_with("text/html"));
    assert_security_headers("archive page", &page);
    let html = &page.body;
    assert!(html.contains("Hello , from ."), "fields blanked: {html}");
    for personal in [
        "ana@example.net",
        "person0",
        "Special",
        "Here",
        "/unsubscribe/",
        "/preferences/",
        "QQbltn",
    ] {
        assert!(!html.contains(personal), "{personal} in {html}");
    }
    assert!(html.contains(&format!("{BASE}/subscribe")), "{html}");
    assert!(html.contains(&format!("{BASE}/archive/news-1")), "{html}");

    for path in ["/archive/later", "/archive/nope", "/archive/news-1/x"] {
        let r = get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
}

/// Ticks "public" on a list an `Env` created (the CLI has no command for
/// it yet).
async fn make_public(db: &Location, slug: &str) {
    let store = Store::open(db).await.unwrap();
    sqlx::query("UPDATE lists SET public = 1 WHERE slug = $1")
        .bind(slug)
        .execute(&crate::support::db::raw(store.location()).await)
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_shows_nothing_sent_to_a_private_list_nor_archive_false_nor_tests() {
    let sink = SmtpSink::start(Behaviour::new());
    let (env, db) = env_on_engine(sink.port()).await;
    env.subscribers(1, &["ana@example.net"]).await;
    make_public(&db, "news").await;
    env.ok(&["lists", "add", "staff", "--name", "Staff"]).await;
    env.ok(&["subscribers", "add", "boss@example.net", "--list", "staff"])
        .await;
    let campaign = |name: &str, front: &str| {
        std::fs::write(
            env.dir.path().join(format!("campaigns/{name}.md")),
            format!("+++\n{front}\n+++\n# S\n\n## A\n\nHello {{{{subscriber.name}}}}.\n"),
        )
        .unwrap();
    };
    campaign("memo", "subject = \"Salaries\"\nlist = \"staff\"");
    campaign(
        "quiet",
        "subject = \"Members only\"\nlist = \"news\"\narchive = false",
    );
    campaign(
        "open",
        "subject = \"For everyone\"\nlist = \"news\"\narchive = true",
    );
    for name in ["memo", "quiet", "open"] {
        env.ok(&["send", &format!("campaigns/{name}.md"), "--yes"])
            .await;
    }
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    // A test copy, to the team, of a campaign not sent yet.
    campaign("draft", "subject = \"Draft\"\nlist = \"news\"");
    env.ok(&["test", "campaigns/draft.md", "--to", "team@example.net"])
        .await;
    assert!(
        sink.messages()
            .iter()
            .any(|m| m.rcpt_to == ["team@example.net"]),
        "the test copy went out"
    );

    let store = Store::open(&db).await.unwrap();
    let app = web::router(app_state(
        store.clone(),
        Signer::new(SECRET.as_bytes(), &[]),
        None,
    ));
    let get = |path: String| call(&app, request("GET", &path, None, Vec::new()));
    let index = get("/archive".into()).await;
    assert_eq!(index.status, StatusCode::OK);
    let listed: Vec<&str> = index
        .body
        .split("<a href=\"/archive/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(listed, ["news-1", "open"], "{}", index.body);
    for hidden in ["Salaries", "Members only", "Draft"] {
        assert!(!index.body.contains(hidden), "{hidden}: {}", index.body);
    }
    for slug in ["memo", "quiet", "draft"] {
        let r = get(format!("/archive/{slug}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{slug}");
    }
    let open = get("/archive/open".into()).await;
    assert_eq!(open.status, StatusCode::OK);
    assert!(open.body.contains(&format!("{BASE}/subscribe")));
    assert!(!open.body.contains("/preferences/") && !open.body.contains("/unsubscribe/"));

    // A list made private later takes its campaigns out of the archive.
    sqlx::query("UPDATE lists SET public = 0 WHERE slug = 'news'")
        .execute(&crate::support::db::raw(store.location()).await)
        .await
        .unwrap();
    let index = get("/archive".into()).await;
    assert!(!index.body.contains("/archive/open"), "{}", index.body);
    assert_eq!(
        get("/archive/news-1".into()).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_end_to_end_skips_the_next_send() {
    let sink = SmtpSink::start(Behaviour::new());
    let (env, db) = env_on_engine(sink.port()).await;
    env.subscribers(1, &["ana@example.net"]).await;
    let server = Served::start(&env).await;
    let addr = &server.addr;

    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 2);
    let ana = messages
        .iter()
        .find(|m| m.rcpt_to == ["ana@example.net"])
        .expect("ana's copy");
    let raw = unfold(&ana.data);
    assert_eq!(
        mail_header(&raw, "List-Unsubscribe-Post"),
        Some("List-Unsubscribe=One-Click")
    );
    let url = one_click_url(mail_header(&raw, "List-Unsubscribe").unwrap());
    // The public base URL is a proxy in front of this server.
    let path = url.strip_prefix(BASE).expect("our base URL");

    // As Gmail and Yahoo do: a POST with the body RFC 8058 prescribes.
    for attempt in 0..2 {
        let r = http(
            addr,
            "POST",
            path,
            &[("Content-Type", FORM), ("User-Agent", "mail-client/1.0")],
            b"List-Unsubscribe=One-Click",
        )
        .await;
        assert_eq!(r.status, 200, "attempt {attempt}: {r:?}");
        assert_eq!(r.header("Location"), None, "no redirect");
        assert!(r.body.contains("You are unsubscribed"), "{}", r.body);
        assert_eq!(r.header("Referrer-Policy"), Some("no-referrer"));
    }
    let store = Store::open(&db).await.unwrap();
    let profile = store.profile("ana@example.net").await.unwrap().unwrap();
    assert_eq!(profile.subscriptions.len(), 1);
    assert_eq!(profile.subscriptions[0].status, "unsubscribed");
    assert_eq!(profile.subscriptions[0].source, "web");
    // Her link named the campaign it came in: so does the event, once.
    let left: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT c.slug FROM events e LEFT JOIN campaigns c ON c.id = e.campaign_id \
         WHERE e.kind = 'unsubscribed'",
    )
    .fetch_all(&crate::support::db::raw(store.location()).await)
    .await
    .unwrap();
    assert_eq!(left, [Some("news-1".to_string())]);

    // The next campaign to the list goes to everyone else only.
    std::fs::write(
        env.dir.path().join("campaigns/news-2.md"),
        "+++\nsubject = \"Second\"\nlist = \"news\"\n+++\n# S\n\n## A\n\nAgain.\n",
    )
    .unwrap();
    let out = env.ok(&["send", "campaigns/news-2.md", "--yes"]).await;
    assert!(out.contains("news-2: sent 1 (finished)"), "{out}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[2].rcpt_to, ["person0@example.net"]);
    let log = server.log();
    assert!(!log.contains("ERROR"), "{log}");
    assert!(!log.contains("ana@") && !log.contains("person0@"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_cleanly_on_sigterm() {
    let sink = SmtpSink::start(Behaviour::new());
    let (env, _) = env_on_engine(sink.port()).await;
    // `serve` never creates the database.
    env.ok(&["init"]).await;
    let mut server = Served::start(&env).await;
    let r = http(&server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    let pid = server.child.0.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    // Generous: this bounds a hang, it does not measure anything.
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = server.child.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("bulletin serve still running 30 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}: {}", server.log());
}

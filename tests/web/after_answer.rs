//! Subscriber pages: work after the answer, and forms that went stale.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_answers_at_once_and_shutdown_waits_for_its_email() {
    let site = Site::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(web::serve(listener, site.state.clone(), async {
        let _ = stopped.await;
    }));
    // Another process holds the write lock (the dispatcher, say): the
    // answer must not wait for it, or its delay would tell a stranger that
    // the address needs a write, i.e. is not suppressed.
    let lock = hold_write_lock(site.store.location()).await;
    let mut answers = Vec::new();
    for email in ["late@example.net", "carl@example.org"] {
        let body = encode(&[("email", email), ("list", "events")]);
        let r = http(
            &addr,
            "POST",
            "/subscribe",
            &[("Content-Type", FORM)],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        answers.push(r.body);
    }
    assert_eq!(answers[0], answers[1], "a bounced address answers alike");
    assert!(site.outbox().is_empty(), "nothing written or sent yet");
    // Stop the server, and let the database go a moment later.
    stop.send(()).unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lock.rollback().await.unwrap();
    });
    server.await.unwrap().unwrap();
    release.await.unwrap();
    // `serve` returned only once the sign-up was stored and its email sent.
    let mails = site.outbox();
    assert_eq!(mails.len(), 2, "{mails:?}");
    for to in ["late@example.net", "carl@example.org"] {
        let to = format!("To: {to}\r\n");
        assert!(mails.iter().any(|m| m.contains(&to)), "{mails:?}");
    }
    let late = site.store.subscriber("late@example.net").await.unwrap();
    let late = late.expect("stored before serve returned");
    assert_eq!(
        site.subscription(late.id, &site.events).await.as_deref(),
        Some("pending")
    );
    // carl bounced: asked to confirm, and still suppressed until he does.
    assert!(site.store.is_suppressed("carl@example.org").await.unwrap());
}

#[tokio::test]
async fn a_stranger_cannot_bring_back_someone_who_left_a_single_opt_in_list() {
    let site = Site::new().await;
    let r = site
        .post(
            &site.unsubscribe_path(site.bob, &site.news),
            FORM,
            "List-Unsubscribe=One-Click",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let fresh = site
        .form(
            "/subscribe",
            &[("email", "new@example.net"), ("list", "news")],
        )
        .await;
    let bob = site
        .form(
            "/subscribe",
            &[("email", "bob@example.org"), ("list", "news")],
        )
        .await;
    assert_eq!(bob.body, fresh.body, "the same answer for both");
    // The new address is on the list at once; Bob must confirm himself.
    assert_eq!(site.audience(&site.news).await, 2, "ann and new");
    assert_eq!(
        site.subscription(site.bob, &site.news).await.as_deref(),
        Some("pending")
    );
    let mails = site.mails(1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains("To: bob@example.org\r\n"));
    assert!(mails[0].contains("Please confirm: News"));
}

#[tokio::test]
async fn an_old_preference_tab_does_not_undo_a_later_unsubscribe() {
    let site = Site::new().await;
    let path = site.preferences_path(site.ann);
    let page = site.get(&path).await.body;
    assert!(is_ticked(&page, "news"));
    assert!(page.contains("name=\"shown\" value=\"news:on\""), "{page}");
    // Ann unsubscribes from News in her mail client...
    site.post(
        &site.unsubscribe_path(site.ann, &site.news),
        FORM,
        "List-Unsubscribe=One-Click",
    )
    .await;
    // ...then changes her name in the tab she left open, which still has
    // News ticked.
    let r = site
        .preferences_form(
            site.ann,
            &[
                ("name", "Ann B"),
                ("list", "news"),
                ("shown", "news:on"),
                ("list", "staff"),
                ("shown", "staff:on"),
                ("shown", "events:off"),
                ("action", "save"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("unsubscribed"),
        "her later choice stands"
    );
    let ann = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ann.name, "Ann B");
    // A box she did change is applied.
    site.preferences_form(
        site.ann,
        &[
            ("shown", "news:off"),
            ("list", "events"),
            ("shown", "events:off"),
            ("shown", "staff:on"),
            ("action", "save"),
        ],
    )
    .await;
    assert_eq!(
        site.subscription(site.ann, &site.events).await.as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        site.subscription(site.ann, &site.staff).await.as_deref(),
        Some("unsubscribed")
    );
}

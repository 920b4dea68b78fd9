//! Subscriber pages: sign-up and confirmation.

use super::*;

#[tokio::test]
async fn subscribe_form_lists_public_lists_and_hides_a_honeypot() {
    let site = Site::new().await;
    let r = site.get("/subscribe").await;
    assert_eq!(r.status, StatusCode::OK);
    let page = &r.body;
    assert!(page.contains("<form method=\"post\" action=\"/subscribe\">"));
    assert!(page.contains("value=\"news\"") && page.contains("value=\"events\""));
    assert!(!page.contains("value=\"staff\""), "private list: {page}");
    assert!(page.contains("name=\"email\""));
    assert!(
        page.contains("<div class=\"hp\" aria-hidden=\"true\">")
            && page.contains("name=\"website\" tabindex=\"-1\""),
        "{page}"
    );
}

#[tokio::test]
async fn sign_up_mails_a_confirmation_link_and_confirming_subscribes() {
    let site = Site::new().await;
    let r = site
        .form(
            "/subscribe",
            &[
                ("email", " New.Person@Example.NET "),
                ("name", "New Person"),
                ("list", "events"),
                ("website", ""),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Check your inbox"), "{}", r.body);
    let person = site
        .store
        .subscriber("new.person@example.net")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(person.email.as_deref(), Some("new.person@example.net"));
    assert_eq!(person.name, "New Person");
    assert_eq!(
        site.subscription(person.id, &site.events).await.as_deref(),
        Some("pending")
    );
    assert_eq!(
        site.audience(&site.events).await,
        0,
        "not before confirming"
    );

    let mails = site.mails(1).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.contains("To: new.person@example.net\r\n"), "{mail}");
    assert!(mail.contains("Subject: Please confirm: Events"), "{mail}");
    assert!(
        mail.contains("From: \"Test Alliance\" <news@alliance.example>"),
        "{mail}"
    );
    assert!(mail.contains("Hello New Person,"), "{mail}");
    let path = confirm_path(mail);
    let token = path.strip_prefix("/confirm/").unwrap();
    let claims = site.signer.verify::<Confirm>(token).unwrap();
    assert_eq!(
        claims,
        Confirm {
            subscriber: person.id,
            list: site.events.id
        }
    );

    // Opening the link shows a button and changes nothing (mail scanners).
    let before = site.dump().await;
    let page = site.get(&path).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("Confirm your subscription to Events"),
        "{}",
        page.body
    );
    assert!(page.body.contains(&format!("action=\"{path}\"")));
    assert_eq!(site.dump().await, before);

    let r = site.post(&path, FORM, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("You are subscribed"), "{}", r.body);
    assert_eq!(
        site.subscription(person.id, &site.events).await.as_deref(),
        Some("confirmed")
    );
    assert_eq!(site.audience(&site.events).await, 1);
    let kinds: Vec<String> = site
        .history(person.id)
        .await
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(kinds, ["subscribed", "confirmation sent", "confirmed"]);

    // Confirming twice is harmless.
    let after = site.dump().await;
    let again = site.post(&path, FORM, "").await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body.contains("You are subscribed"));
    assert_eq!(site.dump().await, after);
}

#[tokio::test]
async fn an_old_confirmation_link_does_not_claim_a_subscription_that_was_left() {
    let site = Site::new().await;
    site.form(
        "/subscribe",
        &[("email", "dan@example.net"), ("list", "events")],
    )
    .await;
    let path = confirm_path(&site.mails(1).await[0]);
    assert_eq!(site.post(&path, FORM, "").await.status, StatusCode::OK);
    let dan = site
        .store
        .subscriber("dan@example.net")
        .await
        .unwrap()
        .unwrap()
        .id;
    // Dan leaves, then finds the confirmation email again.
    let unsub = site.unsubscribe_path(dan, &site.events);
    let r = site.post(&unsub, FORM, "List-Unsubscribe=One-Click").await;
    assert_eq!(r.status, StatusCode::OK);
    let before = site.dump().await;
    let r = site.post(&path, FORM, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains("You are subscribed"), "{}", r.body);
    assert!(r.body.contains("/subscribe"), "{}", r.body);
    assert_eq!(site.dump().await, before, "his last choice stands");
}

#[tokio::test]
async fn someone_who_left_everything_can_come_back_by_signing_up() {
    let site = Site::new().await;
    site.store
        .remove_subscriber("bob@example.org", None, "cli", NOW)
        .await
        .unwrap();
    let r = site
        .form(
            "/subscribe",
            &[("email", "bob@example.org"), ("list", "news")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        site.subscription(site.bob, &site.news).await.as_deref(),
        Some("pending")
    );
    assert_eq!(site.audience(&site.news).await, 1, "not before confirming");
    let path = confirm_path(&site.mails(1).await[0]);
    let r = site.post(&path, FORM, "").await;
    assert!(r.body.contains("You are subscribed"), "{}", r.body);
    let bob = site
        .store
        .subscriber_by_id(site.bob)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bob.status, "active");
    assert_eq!(site.audience(&site.news).await, 2);
}

#[tokio::test]
async fn sign_up_answers_the_same_whoever_the_address_belongs_to() {
    let site = Site::new().await;
    let answer = |email: &'static str, list: &'static str| {
        let site = &site;
        async move {
            site.form("/subscribe", &[("email", email), ("list", list)])
                .await
        }
    };
    // News is single opt-in, Events double opt-in; the answer may differ
    // between the lists, never between the addresses.
    for (list, known) in [
        (
            "news",
            [
                "ann@example.org",  // confirmed on news already
                "ANN@Example.ORG",  // the same, spelled otherwise
                "carl@example.org", // bounced: suppressed
                "eve@example.org",  // erased: suppressed
                "bob@example.org",  // confirmed too
                "nobody2@example.net",
            ],
        ),
        (
            "events",
            [
                "ann@example.org", // known, new to events
                "ANN@Example.ORG",
                "carl@example.org",
                "eve@example.org",
                "nobody@example.net", // subscribed to news a moment ago
                "nobody3@example.net",
            ],
        ),
    ] {
        let first = if list == "news" {
            "nobody@example.net"
        } else {
            "nobody4@example.net"
        };
        let unknown = answer(first, list).await;
        assert_eq!(unknown.status, StatusCode::OK);
        for email in known {
            let r = answer(email, list).await;
            assert_eq!(r.status, unknown.status, "{email}");
            assert_eq!(r.body, unknown.body, "{email}");
            assert_eq!(
                r.header(header::CONTENT_LENGTH),
                unknown.header(header::CONTENT_LENGTH)
            );
        }
    }
    // News: the new addresses are on it at once, and nobody was mailed for
    // it but those who bounced or were erased (they must confirm to come
    // back). Events: every address got a confirmation (ann twice: she asked
    // twice).
    for new in ["nobody@example.net", "nobody2@example.net"] {
        let id = site.store.subscriber(new).await.unwrap().unwrap().id;
        assert_eq!(
            site.subscription(id, &site.news).await.as_deref(),
            Some("confirmed")
        );
    }
    let mails = site.mails(9).await;
    let to = |addr: &str, list: &str| {
        mails
            .iter()
            .filter(|m| m.contains(&format!("To: {addr}\r\n")))
            .filter(|m| m.contains(&format!("Subject: Please confirm: {list}\r\n")))
            .count()
    };
    assert_eq!(mails.len(), 9, "{mails:?}");
    assert_eq!(
        [
            to("ann@example.org", "Events"),
            to("nobody@example.net", "Events"),
            to("nobody3@example.net", "Events"),
            to("nobody4@example.net", "Events"),
            to("carl@example.org", "Events"),
            to("carl@example.org", "News"),
            to("eve@example.org", "Events"),
            to("eve@example.org", "News"),
        ],
        [2, 1, 1, 1, 1, 1, 1, 1]
    );
    // Asked, not subscribed: carl and eve are pending until they confirm,
    // and still suppressed.
    for returning in ["carl@example.org", "eve@example.org"] {
        let p = site.store.subscriber(returning).await.unwrap().unwrap();
        assert_eq!(
            site.subscription(p.id, &site.news).await.as_deref(),
            Some("pending")
        );
        assert!(site.store.is_suppressed(returning).await.unwrap());
    }
    let erased: i64 = sqlx::query_scalar("SELECT count(*) FROM subscribers WHERE email IS NULL")
        .fetch_one(&crate::support::db::raw(site.store.location()).await)
        .await
        .unwrap();
    assert_eq!(erased, 1, "eve's erased row stays erased");
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("confirmed"),
        "a sign-up never downgrades a confirmed subscription"
    );
}

#[tokio::test]
async fn sign_up_ignores_bots_and_refuses_bad_input() {
    let site = Site::new().await;
    let before = site.dump().await;
    let thanks = site
        .form(
            "/subscribe",
            &[("email", "someone@example.net"), ("list", "events")],
        )
        .await;
    let after_real = site.dump().await;
    // The honeypot filled: the same answer, nothing stored, nothing sent.
    let bot = site
        .form(
            "/subscribe",
            &[
                ("email", "bot@example.net"),
                ("list", "events"),
                ("website", "http://spam.example"),
            ],
        )
        .await;
    assert_eq!(bot.status, StatusCode::OK);
    assert_eq!(bot.body, thanks.body);
    assert_eq!(site.dump().await, after_real);
    assert_eq!(site.mails(1).await.len(), 1);
    assert_ne!(after_real, before);

    for (fields, says) in [
        (
            vec![("email", "not an address"), ("list", "events")],
            "email address",
        ),
        (vec![("email", ""), ("list", "events")], "email address"),
        (vec![("list", "events")], "email address"),
        (vec![("email", "x@example.net")], "Choose at least one list"),
        (
            vec![("email", "x@example.net"), ("list", "staff")],
            "Choose at least one list",
        ),
        (
            vec![("email", "x@example.net"), ("list", "nope")],
            "Choose at least one list",
        ),
    ] {
        let r = site.form("/subscribe", &fields).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{fields:?}");
        assert!(r.body.contains(says), "{fields:?}: {}", r.body);
    }
    let long = "n".repeat(201);
    let r = site
        .form(
            "/subscribe",
            &[
                ("email", "x@example.net"),
                ("name", &long),
                ("list", "events"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(site.dump().await, after_real);
    assert_eq!(site.mails(1).await.len(), 1);
}

#[tokio::test]
async fn sign_up_is_rate_limited_per_client() {
    let site = Site::new().await;
    let from = |ip: [u8; 4], email: &str| {
        let mut r = request(
            "POST",
            "/subscribe",
            Some(FORM),
            encode(&[("email", email), ("list", "events")]).into(),
        );
        r.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 40000))));
        r
    };
    for i in 0..10 {
        let r = call(
            &site.app,
            from([198, 51, 100, 7], &format!("p{i}@example.net")),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        // Counted after the answer (the limit is documented as approximate
        // for requests that arrive at once).
        site.state.drain().await;
    }
    let before = site.dump().await;
    let r = call(&site.app, from([198, 51, 100, 7], "late@example.net")).await;
    site.state.drain().await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.body.contains("Please wait a moment"), "{}", r.body);
    assert_eq!(
        site.dump().await,
        before,
        "refused before anything is stored"
    );
    assert_eq!(site.mails(10).await.len(), 10);
    // Another client is not held up, and neither are the other pages.
    let r = call(&site.app, from([198, 51, 100, 8], "other@example.net")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(site.get("/subscribe").await.status, StatusCode::OK);
}

/// The site's pages with confirmation emails going over SMTP to `sink`.
fn smtp_state(site: &Site, sink: &SmtpSink) -> AppState {
    let url = format!("smtp://127.0.0.1:{}?tls=none", sink.port());
    let transport = Transport::Smtp {
        url: bulletin::dispatch::transport::SmtpUrl::parse(&url, None).unwrap(),
        timeout: Duration::from_secs(10),
        hello: "alliance.example".into(),
    };
    let mailer = Mailer::new(transport, "alliance.example");
    app_state(site.store.clone(), site.signer.clone(), Some(mailer))
}

fn received_by(sink: &SmtpSink, addr: &str) -> Vec<String> {
    sink.messages()
        .into_iter()
        .filter(|m| m.rcpt_to == [addr])
        .map(|m| String::from_utf8_lossy(&m.data).replace("=\r\n", ""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_named_a_thousand_times_sends_one_email_and_an_address_gets_three_a_day() {
    let site = Site::new().await;
    site.store
        .create_list("courses", "Courses", "", true, true, NOW)
        .await
        .unwrap();
    let sink = SmtpSink::start(Behaviour::new());
    let state = smtp_state(&site, &sink);
    let app = web::router(state.clone());
    let post = |body: String| {
        let (app, state) = (app.clone(), state.clone());
        async move {
            let r = call(&app, request("POST", "/subscribe", Some(FORM), body.into())).await;
            state.drain().await;
            r
        }
    };
    // 1,300 list fields (as many as the body limit lets through), two
    // double opt-in lists, a single opt-in one, a private and an unknown.
    let mut body = encode(&[("email", "target@example.net")]);
    for _ in 0..650 {
        body.push_str("&list=events&list=courses");
    }
    body.push_str("&list=news&list=staff&list=nope");
    assert!(body.len() < BODY_LIMIT);
    let r = post(body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(sink.messages().len(), 1, "one email for the whole request");
    let mail = &received_by(&sink, "target@example.net")[0];
    assert!(
        mail.contains("Subject: Please confirm: Courses, Events\r\n"),
        "{mail}"
    );
    let links = mail.matches(&format!("{BASE}/confirm/")).count();
    assert_eq!(links, 2, "one link per double opt-in list: {mail}");
    let target = site.store.subscriber("target@example.net").await.unwrap();
    let target = target.unwrap().id;
    assert_eq!(
        site.subscription(target, &site.news).await.as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        site.subscription(target, &site.staff).await,
        None,
        "private"
    );
    let subscribed_events = site
        .history(target)
        .await
        .iter()
        .filter(|(kind, _, _)| kind == "subscribed")
        .count();
    assert_eq!(subscribed_events, 3, "each list once");

    // The same address again and again: three emails a day, then none,
    // while the answer stays the same.
    for _ in 0..4 {
        let again = post(body.clone()).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.body, r.body);
    }
    assert_eq!(received_by(&sink, "target@example.net").len(), 3);
    // Someone else is not held up by it.
    post(encode(&[
        ("email", "other@example.net"),
        ("list", "events"),
    ]))
    .await;
    assert_eq!(received_by(&sink, "other@example.net").len(), 1);
    assert_eq!(sink.messages().len(), 4);

    // Either link of the first email confirms its list.
    let path = confirm_path(mail);
    let r = site.form(&path, &[]).await;
    assert!(r.body.contains("You are subscribed"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_bounced_and_complained_people_come_back_by_confirming() {
    let site = Site::new().await;
    // bob complained; carl bounced (only his suppression is left); eve was
    // erased; dave was suppressed by hand.
    site.store
        .suppress("bob@example.org", "complained", NOW)
        .await
        .unwrap();
    sqlx::query("UPDATE subscribers SET status = 'complained' WHERE id = $1")
        .bind(site.bob)
        .execute(&crate::support::db::raw(site.store.location()).await)
        .await
        .unwrap();
    site.store
        .suppress("dave@example.org", "manual", NOW)
        .await
        .unwrap();
    let sink = SmtpSink::start(Behaviour::new());
    let state = smtp_state(&site, &sink);
    let app = web::router(state.clone());
    let returning = ["bob@example.org", "carl@example.org", "eve@example.org"];
    for email in returning.iter().chain(&["dave@example.org"]) {
        let body = encode(&[("email", email), ("list", "news")]);
        let r = call(&app, request("POST", "/subscribe", Some(FORM), body.into())).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    state.drain().await;
    assert!(
        received_by(&sink, "dave@example.org").is_empty(),
        "manual stays"
    );
    assert!(
        site.store
            .subscriber("dave@example.org")
            .await
            .unwrap()
            .is_none()
    );
    for email in returning {
        // Not mailed before confirming.
        assert!(site.store.is_suppressed(email).await.unwrap(), "{email}");
        let mails = received_by(&sink, email);
        assert_eq!(mails.len(), 1, "{email}");
        assert!(mails[0].contains("Please confirm: News"), "{}", mails[0]);
        let r = site.form(&confirm_path(&mails[0]), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.contains("You are subscribed"), "{email}: {}", r.body);
        let p = site.store.subscriber(email).await.unwrap().unwrap();
        assert_eq!(p.status, "active", "{email}");
        assert_eq!(
            site.subscription(p.id, &site.news).await.as_deref(),
            Some("confirmed")
        );
        assert!(!site.store.is_suppressed(email).await.unwrap(), "{email}");
        let history = site.history(p.id).await;
        assert_eq!(history.last().unwrap().0, "confirmed");
    }
    // ann and bob were there; bob, carl and eve are back.
    assert_eq!(site.audience(&site.news).await, 4);
    let old_eve = site
        .store
        .subscriber_by_id(site.eve)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((old_eve.email, old_eve.status.as_str()), (None, "erased"));
}

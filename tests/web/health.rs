//! Subscriber pages: health, unknown routes, headers, limits.

use super::*;

#[tokio::test]
async fn healthz_answers_and_unknown_routes_get_the_not_found_page() {
    let site = Site::new().await;
    let r = site.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "ok\n");

    let not_found = site.not_found_page().await;
    assert!(not_found.contains("This link does not work"), "{not_found}");
    let prefs = site.preferences_path(site.ann);
    for (method, path) in [
        ("GET", "/no-such-page".to_string()),
        ("POST", "/no-such-page".to_string()),
        ("GET", "/unsubscribe".to_string()),
        ("GET", "/unsubscribe/".to_string()),
        (
            "GET",
            format!("{}/extra", site.unsubscribe_path(site.ann, &site.news)),
        ),
        ("GET", format!("{prefs}/nope")),
        ("GET", "/preferences".to_string()),
        ("GET", "/confirm".to_string()),
        ("GET", "/admin".to_string()),
        ("GET", "/../../etc/passwd".to_string()),
    ] {
        let r = call(&site.app, request(method, &path, None, Vec::new())).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(r.body, not_found, "{method} {path}");
    }
    // A known route with a method it does not take.
    let r = call(&site.app, request("DELETE", "/healthz", None, Vec::new())).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let site = Site::new().await;
    let prefs = site.preferences_path(site.ann);
    let unsub = site.unsubscribe_path(site.ann, &site.news);
    let big = vec![b'x'; BODY_LIMIT + 1];
    let mut replies = vec![
        ("healthz", site.get("/healthz").await),
        ("unsubscribe page", site.get(&unsub).await),
        ("preferences page", site.get(&prefs).await),
        ("data download", site.get(&format!("{prefs}/data")).await),
        ("erase page", site.get(&format!("{prefs}/erase")).await),
        ("subscribe page", site.get("/subscribe").await),
        ("archive", site.get("/archive").await),
        ("unknown route", site.get("/nope").await),
        ("bad token", site.get("/preferences/garbage").await),
        ("no csrf", site.form(&prefs, &[("action", "save")]).await),
        ("too large", site.post("/subscribe", FORM, big).await),
        (
            "wrong method",
            call(&site.app, request("PUT", "/subscribe", None, Vec::new())).await,
        ),
        (
            "saved",
            site.form(&prefs, &[("csrf", &site.csrf(site.ann)), ("list", "news")])
                .await,
        ),
        (
            "unsubscribed",
            site.post(&unsub, FORM, "List-Unsubscribe=One-Click").await,
        ),
    ];
    let statuses: Vec<u16> = replies.iter().map(|(_, r)| r.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [
            200, 200, 200, 200, 200, 200, 200, 404, 404, 400, 413, 405, 303, 200
        ]
    );
    // Over the rate limit too.
    for _ in 0..11 {
        let mut req = request(
            "POST",
            "/subscribe",
            Some(FORM),
            encode(&[("website", "bot")]).into(),
        );
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 9], 4000))));
        replies.push(("sign-up", call(&site.app, req).await));
        site.state.drain().await; // counted after the answer
    }
    assert_eq!(
        replies.last().unwrap().1.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    for (what, r) in &replies {
        assert_security_headers(what, r);
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_and_change_nothing() {
    let site = Site::new().await;
    let before = site.dump().await;
    let unsub = site.unsubscribe_path(site.ann, &site.news);
    let prefs = site.preferences_path(site.ann);
    let csrf = site.csrf(site.ann);
    let padding = "x".repeat(BODY_LIMIT);
    for (path, body) in [
        (
            unsub.clone(),
            format!("List-Unsubscribe=One-Click&pad={padding}"),
        ),
        (
            prefs.clone(),
            format!("csrf={csrf}&action=leave&pad={padding}"),
        ),
        (
            format!("{prefs}/erase"),
            format!("csrf={csrf}&pad={padding}"),
        ),
        (
            "/subscribe".to_string(),
            format!("email=new%40example.org&list=news&pad={padding}"),
        ),
    ] {
        let r = site.post(&path, FORM, body).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
    assert_eq!(site.dump().await, before);
    assert!(site.mails(0).await.is_empty());

    // Just under the limit is fine.
    let body = format!(
        "List-Unsubscribe=One-Click&pad={}",
        "x".repeat(BODY_LIMIT - 100)
    );
    let r = site.post(&unsub, FORM, body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("unsubscribed")
    );
}

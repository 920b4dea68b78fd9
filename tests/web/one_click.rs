//! Subscriber pages: one-click unsubscribe (RFC 8058).

use super::*;

#[tokio::test]
async fn unsubscribe_get_shows_a_button_and_changes_nothing() {
    let site = Site::new().await;
    let before = site.dump().await;
    let path = site.unsubscribe_path(site.ann, &site.news);
    let r = site.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header(header::CONTENT_TYPE).starts_with("text/html"));
    assert!(r.body.contains("Unsubscribe from News?"), "{}", r.body);
    assert!(
        r.body
            .contains(&format!("<form method=\"post\" action=\"{path}\">")),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("name=\"List-Unsubscribe\" value=\"One-Click\""),
        "{}",
        r.body
    );
    // The preference page it links to marks the list being left.
    let token = site.token(Purpose::Preferences, site.ann, site.news.id);
    let prefs = format!("{BASE}/preferences/{token}");
    assert!(
        r.body.contains(&prefs),
        "link to the preferences: {}",
        r.body
    );
    // A mail scanner following the link twice changes nothing.
    site.get(&path).await;
    assert_eq!(site.dump().await, before);
}

#[tokio::test]
async fn one_click_post_unsubscribes_from_that_list_only_and_is_idempotent() {
    let site = Site::new().await;
    let path = site.unsubscribe_path(site.ann, &site.news);
    assert_eq!(site.audience(&site.news).await, 2);
    let r = site.post(&path, FORM, "List-Unsubscribe=One-Click").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get(header::LOCATION).is_none(), "no redirect");
    assert!(r.body.contains("You are unsubscribed"), "{}", r.body);
    assert!(
        r.body
            .contains("You will no longer receive News at this address."),
        "{}",
        r.body
    );
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("unsubscribed")
    );
    assert_eq!(
        site.subscription(site.ann, &site.staff).await.as_deref(),
        Some("confirmed"),
        "other lists untouched"
    );
    assert_eq!(site.audience(&site.news).await, 1);
    let person = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person.status, "active", "still on staff");

    // Again, as clients retry: same answer, nothing more recorded.
    let after_first = site.dump().await;
    let again = site.post(&path, FORM, "List-Unsubscribe=One-Click").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, r.body);
    assert_eq!(site.dump().await, after_first);
    let unsubscribed: Vec<_> = site
        .history(site.ann)
        .await
        .into_iter()
        .filter(|(kind, _, _)| kind == "unsubscribed")
        .collect();
    assert_eq!(
        unsubscribed,
        [("unsubscribed".into(), Some(site.news.id), "web".into())]
    );
}

#[tokio::test]
async fn the_unsubscribe_event_names_the_campaign_its_link_came_in() {
    let site = Site::new().await;
    let campaign = site
        .store
        .insert_campaign(&bulletin::store::deliveries::NewCampaign {
            slug: "news-1",
            lists: &[site.news.id],
            subject: "News",
            compiled: "{}",
            source_hash: "h",
            send_at: NOW,
            now: NOW,
        })
        .await
        .unwrap();
    let leave = |subscriber, campaign| {
        let claims = Unsubscribe {
            subscriber,
            list: site.news.id,
            campaign,
        };
        format!("/unsubscribe/{}", site.signer.sign(&claims))
    };
    // Ann's link came in the campaign's email; Bob's was sent before links
    // named their campaign, and still works.
    for path in [leave(site.ann, Some(campaign)), leave(site.bob, None)] {
        let r = site.post(&path, FORM, "List-Unsubscribe=One-Click").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.body.contains("You are unsubscribed"), "{}", r.body);
    }
    let events: Vec<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT subscriber_id, list_id, campaign_id FROM events \
         WHERE kind = 'unsubscribed' ORDER BY id",
    )
    .fetch_all(&crate::support::db::raw(site.store.location()).await)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            (site.ann, Some(site.news.id), Some(campaign)),
            (site.bob, Some(site.news.id), None)
        ]
    );
    // Her data download says which email she left from.
    let data = site
        .get(&format!("{}/data", site.preferences_path(site.ann)))
        .await;
    let data: serde_json::Value = serde_json::from_str(&data.body).unwrap();
    let left = data["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "unsubscribed")
        .unwrap();
    assert_eq!(left["campaign"], "news-1");
    assert_eq!(left["list"], "news");
}

#[tokio::test]
async fn one_click_accepts_multipart_and_charset_variants() {
    let site = Site::new().await;
    let (ct, body) = multipart("List-Unsubscribe", "One-Click");
    let r = site
        .post(&site.unsubscribe_path(site.bob, &site.news), &ct, body)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        site.subscription(site.bob, &site.news).await.as_deref(),
        Some("unsubscribed")
    );
    let r = site
        .post(
            &site.unsubscribe_path(site.ann, &site.staff),
            "application/x-www-form-urlencoded; charset=UTF-8",
            "List-Unsubscribe=One-Click",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        site.subscription(site.ann, &site.staff).await.as_deref(),
        Some("unsubscribed")
    );
}

#[tokio::test]
async fn unsubscribe_post_without_one_click_is_refused() {
    let site = Site::new().await;
    let before = site.dump().await;
    let path = site.unsubscribe_path(site.ann, &site.news);
    let (mp, wrong_part) = multipart("Other", "One-Click");
    let (_, wrong_value) = multipart("List-Unsubscribe", "Two-Click");
    for (ct, body) in [
        (FORM, b"".to_vec()),
        (FORM, b"List-Unsubscribe=Two-Click".to_vec()),
        (FORM, b"list-unsubscribe=one-click".to_vec()),
        (FORM, b"One-Click".to_vec()),
        (mp.as_str(), wrong_part),
        (mp.as_str(), wrong_value),
    ] {
        let r = site.post(&path, ct, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(r.body.contains("List-Unsubscribe=One-Click"), "{}", r.body);
    }
    assert_eq!(site.dump().await, before);
}

//! Several `bulletin serve` processes on one PostgreSQL database behave as
//! one (issue 14, item 4): the same one-click unsubscribe or preference
//! change posted to both at once is applied once (one event, one state
//! change), and the sign-up rate limit counts a client's requests to either
//! server together. PostgreSQL only: on SQLite each test prints a notice
//! and passes (set `BULLETIN_TEST_POSTGRES`, see tests/support/pg.rs).

use super::*;
use crate::support::pg;
use crate::util::HttpReply;

/// Two servers on one database with `news` (everyone, confirmed), `events`
/// (public, double opt-in, nobody) and `staff` (private; the first ten).
struct Pair {
    _env: Env,
    store: Store,
    a: Served,
    b: Served,
    news: List,
    events: List,
    staff: List,
    people: Vec<i64>,
    _sink: SmtpSink,
}

impl Pair {
    /// `None`, after a notice, when the tests run on SQLite.
    async fn start(people: usize) -> Option<Pair> {
        if pg::engine() != pg::Engine::Postgres {
            eprintln!(
                "NOTICE: several servers share one PostgreSQL database; set {} to run this test",
                pg::VARIABLE
            );
            return None;
        }
        let sink = SmtpSink::start(Behaviour::new());
        let (env, db) = env_on_engine(sink.port()).await;
        let store = Store::open(&db).await.unwrap();
        let (news, events, staff) = create_lists(&store).await;
        let mut ids = Vec::new();
        for i in 0..people {
            let email = format!("p{i}@example.net");
            store
                .add_subscriber(&email, Some("P"), "news", "cli", NOW)
                .await
                .unwrap();
            if i < 10 {
                store
                    .add_subscriber(&email, Some("P"), "staff", "cli", NOW)
                    .await
                    .unwrap();
            }
            ids.push(store.subscriber(&email).await.unwrap().unwrap().id);
        }
        let (a, b) = tokio::join!(Served::start_as(&env, "a"), Served::start_as(&env, "b"));
        Some(Pair {
            _env: env,
            store,
            a,
            b,
            news,
            events,
            staff,
            people: ids,
            _sink: sink,
        })
    }

    fn signer(&self) -> Signer {
        Signer::new(SECRET.as_bytes(), &[])
    }

    async fn raw(&self) -> sqlx::AnyPool {
        crate::support::db::raw(self.store.location()).await
    }

    /// How many subscriptions to `list` have `status`.
    async fn count_status(&self, list: &List, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE list_id = $1 AND status = $2")
            .bind(list.id)
            .bind(status)
            .fetch_one(&self.raw().await)
            .await
            .unwrap()
    }

    /// (subscriber, how many events) of `kind` about `list`, per person who
    /// has any.
    async fn events_per_person(&self, kind: &str, list: &List) -> Vec<(i64, i64)> {
        sqlx::query_as(
            "SELECT subscriber_id, count(*) FROM events WHERE kind = $1 AND list_id = $2 \
             GROUP BY subscriber_id ORDER BY subscriber_id",
        )
        .bind(kind)
        .bind(list.id)
        .fetch_all(&self.raw().await)
        .await
        .unwrap()
    }

    /// Each form (path, url-encoded body) POSTed to both servers, all at
    /// the same time; each reply beside the address of the server that gave
    /// it.
    async fn post_to_both(
        &self,
        forms: impl Iterator<Item = (String, String)>,
    ) -> Vec<(String, HttpReply)> {
        let requests = forms.flat_map(|(path, body)| {
            [self.a.addr.clone(), self.b.addr.clone()].map(|addr| {
                let (path, body) = (path.clone(), body.clone());
                async move {
                    let r = http(
                        &addr,
                        "POST",
                        &path,
                        &[("Content-Type", FORM)],
                        body.as_bytes(),
                    )
                    .await;
                    (addr, r)
                }
            })
        });
        futures_util::future::join_all(requests).await
    }

    fn assert_quiet_logs(&self) {
        for server in [&self.a, &self.b] {
            let log = server.log();
            assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribes_posted_to_both_servers_at_once_are_applied_once() {
    let Some(pair) = Pair::start(100).await else {
        return;
    };
    let signer = pair.signer();
    // Every person's link, posted to both servers at the same time: half
    // the requests go to each.
    let forms = pair.people.iter().map(|&who| {
        let path = format!(
            "/unsubscribe/{}",
            sign_as(&signer, Purpose::Unsubscribe, who, pair.news.id)
        );
        (path, "List-Unsubscribe=One-Click".to_string())
    });
    let replies = pair.post_to_both(forms).await;
    assert_eq!(replies.len(), 200);
    for (addr, r) in &replies {
        assert_eq!(r.status, 200, "{addr}: {r:?}");
        assert!(
            r.body.contains("You are unsubscribed"),
            "{addr}: {}",
            r.body
        );
    }

    // Each person: one `unsubscribed` event, one state change.
    let events = pair.events_per_person("unsubscribed", &pair.news).await;
    let expected: Vec<(i64, i64)> = pair.people.iter().map(|&id| (id, 1)).collect();
    assert_eq!(events, expected);
    assert_eq!(pair.count_status(&pair.news, "unsubscribed").await, 100);
    assert_eq!(pair.count_status(&pair.news, "confirmed").await, 0);
    // Nothing else changed: the other list, the people themselves.
    assert_eq!(pair.count_status(&pair.staff, "confirmed").await, 10);
    for &id in &pair.people {
        let person = pair.store.subscriber_by_id(id).await.unwrap().unwrap();
        assert_eq!(person.status, "active");
    }
    pair.assert_quiet_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_preference_change_saved_on_both_servers_at_once_is_applied_once() {
    let Some(pair) = Pair::start(30).await else {
        return;
    };
    let signer = pair.signer();
    // The same form (tick Events, keep News) sent to both servers at once,
    // as a double click behind a load balancer does.
    let forms = pair.people.iter().map(|&who| {
        let path = format!(
            "/preferences/{}",
            sign_as(&signer, Purpose::Preferences, who, 0)
        );
        let csrf = sign_as(&signer, Purpose::Csrf, who, 0);
        let body = encode(&[
            ("csrf", &csrf),
            ("list", "news"),
            ("shown", "news:on"),
            ("list", "events"),
            ("shown", "events:off"),
            ("action", "save"),
        ]);
        (path, body)
    });
    let replies = pair.post_to_both(forms).await;
    for (addr, r) in &replies {
        assert_eq!(r.status, 303, "{addr}: {r:?}");
    }
    let events = pair.events_per_person("subscribed", &pair.events).await;
    let expected: Vec<(i64, i64)> = pair.people.iter().map(|&id| (id, 1)).collect();
    assert_eq!(events, expected);
    assert_eq!(pair.count_status(&pair.events, "confirmed").await, 30);
    assert_eq!(pair.count_status(&pair.news, "confirmed").await, 30);
    assert!(
        pair.events_per_person("unsubscribed", &pair.news)
            .await
            .is_empty()
    );
    pair.assert_quiet_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_up_limit_counts_a_client_s_requests_to_both_servers_together() {
    let Some(pair) = Pair::start(0).await else {
        return;
    };
    let raw = pair.raw().await;
    // Behind the load balancer on this host: the client is the address it
    // appends to X-Forwarded-For.
    let sign_up = |addr: String, client: &'static str, email: String| async move {
        let body = encode(&[("email", &email), ("list", "events")]);
        http(
            &addr,
            "POST",
            "/subscribe",
            &[("Content-Type", FORM), ("X-Forwarded-For", client)],
            body.as_bytes(),
        )
        .await
    };
    // The count a server adds after its answer, for `client`.
    let counted = |client: &'static str| {
        let raw = raw.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT hits FROM signup_limits WHERE client = $1")
                .bind(client)
                .fetch_optional(&raw)
                .await
                .unwrap()
                .unwrap_or(0)
        }
    };
    let client = "198.51.100.7";
    // Ten sign-ups, every other one to each server: all answered. (Each
    // is counted before the next is sent: requests that arrive at the
    // same moment may pass the limit by their number, as documented.)
    for i in 0..10 {
        let addr = [&pair.a.addr, &pair.b.addr][i % 2].clone();
        let r = sign_up(addr, client, format!("s{i}@example.net")).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let mut seen = 0;
        for _ in 0..400 {
            seen = counted(client).await;
            if seen > i as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(seen, i as i64 + 1, "request {i} counted once");
    }
    // Each server has seen only five, yet both refuse the eleventh.
    for (addr, email) in [
        (&pair.a.addr, "late-a@example.net"),
        (&pair.b.addr, "late-b@example.net"),
    ] {
        let r = sign_up(addr.clone(), client, email.into()).await;
        assert_eq!(r.status, 429, "{addr}: {r:?}");
        assert!(r.body.contains("Please wait a moment"), "{}", r.body);
    }
    // Another client is not held up by either.
    let r = sign_up(
        pair.b.addr.clone(),
        "198.51.100.8",
        "other@example.net".into(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The refused sign-ups stored nobody; the others are waiting to confirm.
    let mut pending = 0;
    for _ in 0..400 {
        pending = pair.count_status(&pair.events, "pending").await;
        if pending >= 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(pending, 11);
    for email in ["late-a@example.net", "late-b@example.net"] {
        assert!(
            pair.store.subscriber(email).await.unwrap().is_none(),
            "{email}"
        );
    }
    pair.assert_quiet_logs();
}

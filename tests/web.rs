//! The subscriber pages of `bulletin serve`. Every route is called through
//! the router with `oneshot` on a real SQLite file, and each test checks the
//! status, the page and what is stored: one-click unsubscribe, the
//! preference center, download and erasure, sign-up with double opt-in,
//! the archive, every kind of bad token, security headers, body limits.
//! Then over real sockets: a campaign sent through the dispatcher to the
//! SMTP sink, its List-Unsubscribe URL POSTed to `bulletin serve` as a mail
//! client does, and the next send skipping that person; `bulletin serve`
//! stopping on SIGTERM; and headless Chromium through the preference page
//! (`BULLETIN_BROWSER=1` requires it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use tower::ServiceExt as _;

use bulletin::assets::Templates;
use bulletin::config::Organisation;
use bulletin::dispatch::Mailer;
use bulletin::dispatch::transport::Transport;
use bulletin::links::{Purpose, Signer, Urls};
use bulletin::store::{List, Store};
use bulletin::web::{self, AppState, BODY_LIMIT, Pages};

use crate::dispatch::{Env, SECRET, header as mail_header, unfold};
use crate::support::smtp_sink::{Behaviour, SmtpSink};
use crate::util::{Child, free_port, http};

const BASE: &str = "https://news.example.org";
const FROM: &str = "Test Alliance <news@alliance.example>";
const NOW: i64 = 1_750_000_000;
const FORM: &str = "application/x-www-form-urlencoded";

/// The application as `bulletin serve` wires it, on `store`.
pub(crate) fn app_state(store: Store, signer: Signer, mailer: Option<Mailer>) -> AppState {
    let org = Organisation {
        name: "Test Alliance".into(),
        address: "1 Road, Town".into(),
        ..Organisation::default()
    };
    let pages = Pages::new(&Templates::builtin(), &org).expect("built-in pages parse");
    AppState::new(store, signer, Urls::new(BASE), pages, mailer, FROM.into())
}

/// A response, read whole.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub(crate) async fn call(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub(crate) fn request(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        r = r.header(header::CONTENT_TYPE, ct);
    }
    r.header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap()
}

fn encode(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// A multipart/form-data body with one field, as some mail clients POST
/// the one-click unsubscribe.
fn multipart(name: &str, value: &str) -> (String, Vec<u8>) {
    let body = format!(
        "--XyZzy\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n--XyZzy--\r\n"
    );
    (
        "multipart/form-data; boundary=XyZzy".into(),
        body.into_bytes(),
    )
}

/// Every row of every table, as text: "nothing changed" is an equal dump,
/// and "nothing left" is a dump without the string.
async fn dump(store: &Store) -> String {
    let pool = store.pool();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = String::new();
    for t in tables {
        let columns: Vec<String> =
            sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{t}')"))
                .fetch_all(pool)
                .await
                .unwrap();
        let row = columns
            .iter()
            .map(|c| format!("quote(\"{c}\")"))
            .collect::<Vec<_>>()
            .join(" || ' | ' || ");
        let mut rows: Vec<String> = sqlx::query_scalar(&format!("SELECT {row} FROM \"{t}\""))
            .fetch_all(pool)
            .await
            .unwrap();
        rows.sort();
        out.push_str(&format!("{t}:\n"));
        for r in rows {
            out.push_str(&format!("  {r}\n"));
        }
    }
    out
}

/// A database with three lists and a few people, served by the router.
///
/// - `news` ("News"): public; ann and bob are confirmed on it.
/// - `events` ("Events"): public, double opt-in; nobody on it.
/// - `staff` ("Staff"): not public; ann is confirmed on it.
/// - eve was on `events` (pending) and has been erased; carl@example.org
///   bounced long ago, so only his suppression is stored.
struct Site {
    dir: tempfile::TempDir,
    store: Store,
    signer: Signer,
    state: AppState,
    app: Router,
    news: List,
    events: List,
    staff: List,
    ann: i64,
    bob: i64,
    eve: i64,
}

impl Site {
    async fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("web.db")).await.unwrap();
        let news = store
            .create_list("news", "News", "What we did this month", false, true, NOW)
            .await
            .unwrap();
        let events = store
            .create_list("events", "Events", "", true, true, NOW)
            .await
            .unwrap();
        let staff = store
            .create_list("staff", "Staff", "", false, false, NOW)
            .await
            .unwrap();
        for (email, name, list) in [
            ("ann@example.org", "Ann", "news"),
            ("ann@example.org", "Ann", "staff"),
            ("bob@example.org", "Bob", "news"),
            ("eve@example.org", "Eve", "events"),
        ] {
            store
                .add_subscriber(email, Some(name), list, "cli", NOW)
                .await
                .unwrap();
        }
        let id = |e: &'static str| {
            let store = store.clone();
            async move { store.subscriber(e).await.unwrap().unwrap().id }
        };
        let (ann, bob, eve) = (
            id("ann@example.org").await,
            id("bob@example.org").await,
            id("eve@example.org").await,
        );
        store.forget("eve@example.org", "cli", NOW).await.unwrap();
        store
            .suppress("carl@example.org", "bounced", NOW)
            .await
            .unwrap();
        let outbox = dir.path().join("outbox");
        std::fs::create_dir_all(&outbox).unwrap();
        let signer = Signer::new(SECRET.as_bytes(), &[]);
        let mailer = Mailer::new(Transport::Outbox(outbox), "alliance.example");
        let state = app_state(store.clone(), signer.clone(), Some(mailer));
        let app = web::router(state.clone());
        Site {
            dir,
            store,
            signer,
            state,
            app,
            news,
            events,
            staff,
            ann,
            bob,
            eve,
        }
    }

    fn token(&self, purpose: Purpose, a: i64, b: i64) -> String {
        self.signer.sign(purpose, a, b)
    }

    fn unsubscribe_path(&self, who: i64, list: &List) -> String {
        format!(
            "/unsubscribe/{}",
            self.token(Purpose::Unsubscribe, who, list.id)
        )
    }

    fn preferences_path(&self, who: i64) -> String {
        format!("/preferences/{}", self.token(Purpose::Preferences, who, 0))
    }

    fn csrf(&self, who: i64) -> String {
        self.token(Purpose::Csrf, who, 0)
    }

    async fn get(&self, path: &str) -> Reply {
        call(&self.app, request("GET", path, None, Vec::new())).await
    }

    /// A POST, and then the work it left running (sign-ups) is done.
    async fn post(&self, path: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        let reply = call(
            &self.app,
            request("POST", path, Some(content_type), body.into()),
        )
        .await;
        self.state.drain().await;
        reply
    }

    async fn form(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        self.post(path, FORM, encode(fields)).await
    }

    async fn subscription(&self, who: i64, list: &List) -> Option<String> {
        sqlx::query_scalar(
            "SELECT status FROM subscriptions WHERE subscriber_id = ? AND list_id = ?",
        )
        .bind(who)
        .bind(list.id)
        .fetch_optional(self.store.pool())
        .await
        .unwrap()
    }

    async fn audience(&self, list: &List) -> i64 {
        self.store.audience_count(list.id).await.unwrap()
    }

    /// (kind, list id, source) of each event of a person.
    async fn history(&self, who: i64) -> Vec<(String, Option<i64>, String)> {
        sqlx::query_as(
            "SELECT kind, list_id, source FROM events WHERE subscriber_id = ? ORDER BY id",
        )
        .bind(who)
        .fetch_all(self.store.pool())
        .await
        .unwrap()
    }

    async fn dump(&self) -> String {
        dump(&self.store).await
    }

    /// The messages in the outbox now, in no particular order.
    fn outbox(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("outbox"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            // Undo quoted-printable soft breaks, should lettre choose it.
            .map(|p| std::fs::read_to_string(p).unwrap().replace("=\r\n", ""))
            .collect()
    }

    /// The messages the pages sent (the outbox), in no particular order,
    /// once there are at least `expected` (confirmation emails go out after
    /// the answer), and a moment later, so that any extra ones show too.
    async fn mails(&self, expected: usize) -> Vec<String> {
        let read = || self.outbox();
        for _ in 0..400 {
            if read().len() >= expected {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        read()
    }

    /// The page every bad link and unknown route gets.
    async fn not_found_page(&self) -> String {
        let r = self.get("/no-such-page").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        r.body
    }
}

/// The path of the confirmation link in a double opt-in email.
fn confirm_path(mail: &str) -> String {
    let start = mail
        .find(&format!("{BASE}/confirm/"))
        .unwrap_or_else(|| panic!("no confirm link in {mail}"));
    let url: String = mail[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    url.strip_prefix(BASE).unwrap().to_string()
}

// ---------------------------------------------------------------------------
// Health, unknown routes, headers, limits

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

fn assert_security_headers(what: &str, r: &Reply) {
    let csp = r.header(header::CONTENT_SECURITY_POLICY);
    assert!(
        csp.contains("frame-ancestors 'none'"),
        "{what}: CSP {csp:?}"
    );
    assert!(csp.contains("default-src 'none'"), "{what}: CSP {csp:?}");
    assert_eq!(r.header(header::REFERRER_POLICY), "no-referrer", "{what}");
    assert_eq!(
        r.header(header::X_CONTENT_TYPE_OPTIONS),
        "nosniff",
        "{what}"
    );
    assert_eq!(r.header(header::X_FRAME_OPTIONS), "DENY", "{what}");
    assert_eq!(r.header(header::CACHE_CONTROL), "no-store", "{what}");
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

// ---------------------------------------------------------------------------
// Bad tokens

/// Every kind of token that must not work on a route taking `purpose`
/// tokens for (ann, `list`): (what it is, path segment).
fn bad_tokens(site: &Site, purpose: Purpose, list: i64) -> Vec<(String, String)> {
    let good = site.token(purpose, site.ann, list);
    let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
    // Changes the value of the character at `i` in its high bit, which is
    // always signed data (the low bits of the last one may be padding).
    let tamper = |i: usize| {
        let mut chars: Vec<char> = good.chars().collect();
        let v = alphabet.find(chars[i]).unwrap() ^ 16;
        chars[i] = alphabet.as_bytes()[v] as char;
        chars.into_iter().collect::<String>()
    };
    let mut out = vec![
        ("tampered first character".into(), tamper(0)),
        ("tampered middle character".into(), tamper(good.len() / 2)),
        ("tampered last character".into(), tamper(good.len() - 1)),
        (
            "truncated by one".into(),
            good[..good.len() - 1].to_string(),
        ),
        (
            "truncated by half".into(),
            good[..good.len() / 2].to_string(),
        ),
        ("token twice".into(), format!("{good}{good}")),
        (
            "signed with another secret".into(),
            Signer::new(b"another secret", &[]).sign(purpose, site.ann, list),
        ),
        ("unknown person".into(), site.token(purpose, 999_999, list)),
        ("erased person".into(), site.token(purpose, site.eve, list)),
        ("garbage".into(), "garbage".into()),
        ("digits".into(), "0".into()),
        ("not base32".into(), "abc!def".into()),
        ("NUL".into(), "%00".into()),
        ("path traversal".into(), "..%2F..%2Fhealthz".into()),
        ("non-ASCII".into(), "%C3%A9t%C3%A9".into()),
        ("invalid UTF-8".into(), "%FF%FE".into()),
        ("very long".into(), "a".repeat(4000)),
    ];
    if list != 0 {
        out.push(("other list".into(), site.token(purpose, site.ann, 999)));
    }
    for (p, b) in [
        (Purpose::Unsubscribe, site.news.id),
        (Purpose::Preferences, 0),
        (Purpose::Confirm, site.news.id),
        (Purpose::Bounce, 0),
        (Purpose::Csrf, 0),
    ] {
        if p != purpose {
            out.push((format!("{p:?} token"), site.token(p, site.ann, b)));
        }
    }
    out
}

#[tokio::test]
async fn every_bad_token_gets_the_same_404_and_changes_nothing() {
    let site = Site::new().await;
    let not_found = site.not_found_page().await;
    let before = site.dump().await;
    let csrf = site.csrf(site.ann);
    let leave = encode(&[("csrf", &csrf), ("action", "leave"), ("name", "Mallory")]);
    let erase = encode(&[("csrf", &csrf)]);
    // (method, path with {} for the token, form body) per purpose, with
    // valid bodies: only the token is wrong.
    let unsubscribe = [
        ("GET", "/unsubscribe/{}", None),
        (
            "POST",
            "/unsubscribe/{}",
            Some("List-Unsubscribe=One-Click"),
        ),
    ];
    let preferences = [
        ("GET", "/preferences/{}", None),
        ("POST", "/preferences/{}", Some(leave.as_str())),
        ("GET", "/preferences/{}/data", None),
        ("GET", "/preferences/{}/erase", None),
        ("POST", "/preferences/{}/erase", Some(erase.as_str())),
    ];
    let confirm = [
        ("GET", "/confirm/{}", None),
        ("POST", "/confirm/{}", Some("")),
    ];
    let routes = [
        (Purpose::Unsubscribe, site.news.id, &unsubscribe[..]),
        (Purpose::Preferences, 0, &preferences[..]),
        (Purpose::Confirm, site.events.id, &confirm[..]),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for (purpose, list, requests) in routes {
        for (what, token) in bad_tokens(&site, purpose, list) {
            for &(method, template, body) in requests {
                let path = template.replace("{}", &token);
                let r = call(
                    &site.app,
                    request(
                        method,
                        &path,
                        body.map(|_| FORM),
                        body.map(|b| b.as_bytes().to_vec()).unwrap_or_default(),
                    ),
                )
                .await;
                checked += 1;
                if r.status != StatusCode::NOT_FOUND || r.body != not_found {
                    failures.push(format!("{what}: {method} {template} -> {}", r.status));
                }
                assert_security_headers(&what, &r);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 150, "{checked}");
    assert_eq!(site.dump().await, before, "a bad token changed something");
    assert!(site.mails(0).await.is_empty());

    // The same tokens, spelled right, do work (case folded by mail servers too).
    let good = site.token(Purpose::Preferences, site.ann, 0);
    assert_eq!(site.get(&format!("/preferences/{good}")).await.status, 200);
    let upper = good.to_ascii_uppercase();
    assert_eq!(site.get(&format!("/preferences/{upper}")).await.status, 200);
}

// ---------------------------------------------------------------------------
// One-click unsubscribe (RFC 8058)

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
    let prefs = format!("{BASE}{}", site.preferences_path(site.ann));
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

// ---------------------------------------------------------------------------
// Preference center

/// The value of the hidden `csrf` field of a form page.
fn csrf_field(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {page}"))
        + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

fn is_ticked(page: &str, slug: &str) -> bool {
    let input = format!("name=\"list\" value=\"{slug}\"");
    let at = page
        .find(&input)
        .unwrap_or_else(|| panic!("no box for {slug} in {page}"));
    page[at + input.len()..].starts_with(" checked")
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
    let claims = site.signer.verify_for(&csrf, Purpose::Csrf).unwrap();
    assert_eq!(claims.a, site.ann);
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
        .form(
            &site.preferences_path(site.bob),
            &[
                ("csrf", &site.csrf(site.bob)),
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
        .form(
            &site.preferences_path(site.ann),
            // Ticked boxes are sent too when the other button is pressed.
            &[
                ("csrf", &site.csrf(site.ann)),
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
        .form(
            &site.preferences_path(site.ann),
            &[("csrf", &site.csrf(site.ann)), ("action", "leave")],
        )
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
        .form(
            &path,
            &[
                ("csrf", &site.csrf(site.ann)),
                ("list", "news"),
                ("action", "save"),
            ],
        )
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
        Some(Signer::new(b"another secret", &[]).sign(Purpose::Csrf, site.ann, 0)),
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
        .form(
            &site.preferences_path(site.ann),
            &[
                ("csrf", &site.csrf(site.ann)),
                ("name", &long),
                ("action", "leave"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("too long"), "{}", r.body);
    assert_eq!(site.dump().await, before);
    // 200 characters (not bytes) are fine.
    let ok = "é".repeat(200);
    let r = site
        .form(
            &site.preferences_path(site.ann),
            &[
                ("csrf", &site.csrf(site.ann)),
                ("name", &ok),
                ("list", "news"),
                ("list", "staff"),
            ],
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
        .form(
            &path,
            &[
                ("csrf", &site.csrf(site.ann)),
                ("name", name),
                ("list", "news"),
            ],
        )
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
    let reason: String = sqlx::query_scalar("SELECT reason FROM suppressions WHERE hash = ?")
        .bind(bulletin::address::hash("ann@example.org"))
        .fetch_one(site.store.pool())
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

    // Signing up again gets the usual answer, and nothing is stored or sent.
    let r = site
        .form(
            "/subscribe",
            &[("email", "ann@example.org"), ("list", "events")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Check your inbox"));
    assert_eq!(site.dump().await, after);
    assert!(site.mails(0).await.is_empty());
}

#[tokio::test]
async fn an_erased_address_is_not_left_in_the_database_file() {
    let site = Site::new().await;
    let prefs = site.preferences_path(site.ann);
    let r = site
        .form(&format!("{prefs}/erase"), &[("csrf", &site.csrf(site.ann))])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Neither in the file nor in its write-ahead log.
    let db = site.dir.path().join("web.db");
    let mut bytes = std::fs::read(&db).unwrap();
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

// ---------------------------------------------------------------------------
// Sign-up and confirmation

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
    let claims = site.signer.verify_for(token, Purpose::Confirm).unwrap();
    assert_eq!((claims.a, claims.b), (person.id, site.events.id));

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
    assert_eq!(kinds, ["subscribed", "confirmed"]);

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
    // it. Events: every address that may be mailed got a confirmation
    // (ann twice: she asked twice); the suppressed ones are not stored.
    for new in ["nobody@example.net", "nobody2@example.net"] {
        let id = site.store.subscriber(new).await.unwrap().unwrap().id;
        assert_eq!(
            site.subscription(id, &site.news).await.as_deref(),
            Some("confirmed")
        );
    }
    let mails = site.mails(5).await;
    let to = |addr: &str| {
        mails
            .iter()
            .filter(|m| m.contains(&format!("To: {addr}\r\n")))
            .count()
    };
    assert_eq!(mails.len(), 5, "{mails:?}");
    assert!(mails.iter().all(|m| m.contains("Please confirm: Events")));
    assert_eq!(
        [
            to("ann@example.org"),
            to("nobody@example.net"),
            to("nobody3@example.net"),
            to("nobody4@example.net")
        ],
        [2, 1, 1, 1]
    );
    assert!(
        site.store
            .subscriber("carl@example.org")
            .await
            .unwrap()
            .is_none()
    );
    let erased: i64 = sqlx::query_scalar("SELECT count(*) FROM subscribers WHERE email IS NULL")
        .fetch_one(site.store.pool())
        .await
        .unwrap();
    assert_eq!(erased, 1, "eve stays erased, no new row");
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
    }
    site.state.drain().await;
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

// ---------------------------------------------------------------------------
// The archive and the real server

/// `bulletin serve --listen 127.0.0.1:0` running in the folder of an `Env`.
struct Served {
    child: Child,
    /// Where it listens, as it printed.
    addr: String,
    /// Its standard error.
    log: PathBuf,
    /// Kept open: the server may print more.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Served {
    async fn start(env: &Env) -> Served {
        let log = env.dir.path().join("serve.log");
        let mut cmd = env.command(&["serve", "--listen", "127.0.0.1:0"]);
        cmd.stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = Child(cmd.spawn().expect("spawn bulletin serve"));
        let stdout = child.0.stdout.take().unwrap();
        // The first line names the address.
        let (line, stdout) = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            (line, reader)
        })
        .await
        .unwrap();
        let addr = line
            .strip_prefix("serving on http://")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "bulletin serve printed {line:?}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Served {
            child,
            addr,
            log,
            _stdout: stdout,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

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
    let env = Env::new(sink.port(), "");
    env.subscribers(1, &["ana@example.net"]).await;
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
    let store = Store::open(&env.dir.path().join("b.db")).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_end_to_end_skips_the_next_send() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
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
    let store = Store::open(&env.dir.path().join("b.db")).await.unwrap();
    let profile = store.profile("ana@example.net").await.unwrap().unwrap();
    assert_eq!(profile.subscriptions.len(), 1);
    assert_eq!(profile.subscriptions[0].status, "unsubscribed");
    assert_eq!(profile.subscriptions[0].source, "web");

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
    let env = Env::new(sink.port(), "");
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

// ---------------------------------------------------------------------------
// Headless Chromium

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// What the browser saw, collected before the session closes.
struct Seen {
    ticked_before: bool,
    ticked_after: bool,
    notice: String,
    url_after: String,
}

async fn drive_preferences(driver: &str, page: &str, profile: &Path) -> Result<Seen, String> {
    use fantoccini::{ClientBuilder, Locator};
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    // Plain HTTP to chromedriver on loopback: no TLS connector needed.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(driver)
        .await
        .map_err(|e| format!("start a Chromium session: {e}"))?;
    let steps = async {
        client.goto(page).await?;
        let news = client.find(Locator::Css("#list-news")).await?;
        let ticked_before = news.is_selected().await?;
        news.click().await?;
        client
            .find(Locator::Css("button[value=save]"))
            .await?
            .click()
            .await?;
        let notice = client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(".notice"))
            .await?
            .text()
            .await?;
        let ticked_after = client
            .find(Locator::Css("#list-news"))
            .await?
            .is_selected()
            .await?;
        let url_after = client.current_url().await?.to_string();
        Ok::<_, fantoccini::error::CmdError>(Seen {
            ticked_before,
            ticked_after,
            notice,
            url_after,
        })
    };
    let seen = steps.await.map_err(|e| e.to_string());
    // Always end the session, so no Chromium outlives the test.
    let closed = client.close().await;
    let seen = seen?;
    closed.map_err(|e| format!("close the session: {e}"))?;
    Ok(seen)
}

/// Waits until something accepts connections on `port` (up to 30 s).
async fn wait_for_port(port: u16) -> bool {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_unticks_a_list_on_the_preference_page() {
    let required = std::env::var("BULLETIN_BROWSER").is_ok_and(|v| v == "1");
    if !required && !Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "note: browser test skipped: {CHROMEDRIVER} not found (apt-get install chromium \
             chromium-driver; BULLETIN_BROWSER=1 makes this a failure)"
        );
        return;
    }
    for bin in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: apt-get install chromium chromium-driver"
        );
    }
    let site = Site::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(web::serve(listener, site.state.clone(), async {
        let _ = stopped.await;
    }));

    let port = free_port();
    let driver = Child(
        std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                site.dir.path().join("chromedriver.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    assert!(wait_for_port(port).await, "chromedriver did not listen");
    let page = format!("http://{addr}{}", site.preferences_path(site.ann));
    let profile = site.dir.path().join("chromium-profile");
    let seen = drive_preferences(&format!("http://127.0.0.1:{port}"), &page, &profile).await;
    drop(driver);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let seen = seen.unwrap_or_else(|e| {
        panic!(
            "{e}\nchromedriver log:\n{}",
            std::fs::read_to_string(site.dir.path().join("chromedriver.log")).unwrap_or_default()
        )
    });

    assert!(seen.ticked_before, "news was ticked");
    assert!(!seen.ticked_after, "and is unticked after saving");
    assert_eq!(seen.notice, "Your choices are saved.");
    assert_eq!(seen.url_after, format!("{page}?saved=1"));
    // What the browser did is stored.
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("unsubscribed")
    );
    assert_eq!(
        site.subscription(site.ann, &site.staff).await.as_deref(),
        Some("confirmed")
    );
    let person = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person.name, "Ann");
    assert_eq!(site.audience(&site.news).await, 1);
}

// ---------------------------------------------------------------------------
// Work after the answer, and forms that went stale

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
    let mut lock = site
        .store
        .pool()
        .begin_with("BEGIN IMMEDIATE")
        .await
        .unwrap();
    sqlx::query("INSERT INTO settings (key, value) VALUES ('held', 'yes')")
        .execute(&mut *lock)
        .await
        .unwrap();
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
    assert_eq!(answers[0], answers[1], "a suppressed address answers alike");
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
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains("To: late@example.net\r\n"));
    let late = site.store.subscriber("late@example.net").await.unwrap();
    let late = late.expect("stored before serve returned");
    assert_eq!(
        site.subscription(late.id, &site.events).await.as_deref(),
        Some("pending")
    );
    assert!(
        site.store
            .subscriber("carl@example.org")
            .await
            .unwrap()
            .is_none()
    );
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
        .form(
            &path,
            &[
                ("csrf", &site.csrf(site.ann)),
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
    site.form(
        &path,
        &[
            ("csrf", &site.csrf(site.ann)),
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

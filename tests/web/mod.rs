//! The subscriber pages of `bulletin serve`. Every route is called through
//! the router with `oneshot` on a real database (SQLite, or PostgreSQL
//! when `BULLETIN_TEST_POSTGRES` is set), and each test checks the
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
use bulletin::links::{Bounce, Confirm, Csrf, Preferences, Purpose, Signer, Unsubscribe, Urls};
use bulletin::store::{List, Location, Store};
use bulletin::web::{self, AppState, BODY_LIMIT, Pages};

use crate::dispatch::{Env, SECRET, header as mail_header, unfold};
use crate::support::smtp_sink::{Behaviour, SmtpSink};
use crate::util::{Child, free_port, http};

mod after_answer; // Work after the answer, and forms that went stale
mod archive; // The archive and the real server
mod browser; // Headless Chromium
mod health; // Health, unknown routes, headers, limits
mod load; // Slow clients, the connection limit, a locked database, X-Forwarded-For
mod one_click; // One-click unsubscribe (RFC 8058)
mod preferences; // Preference center
mod several; // Several `bulletin serve` on one PostgreSQL database: changes applied once, one sign-up limit
mod signup; // Sign-up and confirmation
mod tokens; // Bad tokens
mod typed_values; // What people type: control characters out, length limits, every way in

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
/// and "nothing left" is a dump without the string. Tables and columns come
/// from the engine's catalogue; each value is shown as the text of what it
/// decodes to.
async fn dump(store: &Store) -> String {
    use sqlx::{Column as _, Row as _};
    let pool = &crate::support::db::raw(store.location()).await;
    let tables: Vec<String> = sqlx::query_scalar(match crate::support::pg::engine() {
        crate::support::pg::Engine::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        crate::support::pg::Engine::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
        }
    })
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = String::new();
    for t in tables {
        let mut rows: Vec<String> = sqlx::query(&format!("SELECT * FROM \"{t}\""))
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|row| {
                (0..row.columns().len())
                    .map(|i| {
                        let value = row
                            .try_get::<Option<i64>, _>(i)
                            .map(|v| v.map(|v| v.to_string()))
                            .or_else(|_| {
                                row.try_get::<Option<f64>, _>(i)
                                    .map(|v| v.map(|v| v.to_string()))
                            })
                            .or_else(|_| {
                                row.try_get::<Option<String>, _>(i)
                                    .map(|v| v.map(|v| format!("'{v}'")))
                            })
                            .unwrap_or_else(|e| panic!("{t}.{}: {e}", row.columns()[i].name()));
                        value.unwrap_or_else(|| "NULL".into())
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect();
        rows.sort();
        out.push_str(&format!("{t}:\n"));
        for r in rows {
            out.push_str(&format!("  {r}\n"));
        }
    }
    out
}

/// Another process holding the database's write lock until the returned
/// transaction ends: SQLite's `BEGIN IMMEDIATE` with a write in it, or on
/// PostgreSQL the advisory lock every store write transaction takes
/// (`store::sql::begin_write`; its key is "bulletin" in ASCII).
pub(crate) async fn hold_write_lock(location: &Location) -> sqlx::Transaction<'static, sqlx::Any> {
    let pool = crate::support::db::raw(location).await;
    match crate::support::pg::engine() {
        crate::support::pg::Engine::Sqlite => {
            let mut lock = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("INSERT INTO settings (key, value) VALUES ('held', 'yes')")
                .execute(&mut *lock)
                .await
                .unwrap();
            lock
        }
        crate::support::pg::Engine::Postgres => {
            let mut lock = pool.begin().await.unwrap();
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(0x6275_6c6c_6574_696e_i64)
                .execute(&mut *lock)
                .await
                .unwrap();
            lock
        }
    }
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
        let store = Store::open(crate::support::pg::location_in(dir.path()).await)
            .await
            .unwrap();
        let (news, events, staff) = create_lists(&store).await;
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
        sign_as(&self.signer, purpose, a, b)
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

    /// The preference form of `who` POSTed: their CSRF token, then `fields`.
    async fn preferences_form(&self, who: i64, fields: &[(&str, &str)]) -> Reply {
        let csrf = self.csrf(who);
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.form(&self.preferences_path(who), &all).await
    }

    async fn subscription(&self, who: i64, list: &List) -> Option<String> {
        sqlx::query_scalar(
            "SELECT status FROM subscriptions WHERE subscriber_id = $1 AND list_id = $2",
        )
        .bind(who)
        .bind(list.id)
        .fetch_optional(&crate::support::db::raw(self.store.location()).await)
        .await
        .unwrap()
    }

    async fn audience(&self, list: &List) -> i64 {
        self.store.audience_count(list.id).await.unwrap()
    }

    /// (kind, list id, source) of each event of a person.
    async fn history(&self, who: i64) -> Vec<(String, Option<i64>, String)> {
        sqlx::query_as(
            "SELECT kind, list_id, source FROM events WHERE subscriber_id = $1 ORDER BY id",
        )
        .bind(who)
        .fetch_all(&crate::support::db::raw(self.store.location()).await)
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

/// The three lists of the web tests, created on `store`: `news` ("News",
/// public, described), `events` ("Events", public, double opt-in) and
/// `staff` ("Staff", not public), in that order.
pub(crate) async fn create_lists(store: &Store) -> (List, List, List) {
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
    (news, events, staff)
}

/// A token for `purpose` naming `a` (the subscriber, or the delivery) and
/// `b` (the list; 0 for none), as the pages' own links do; the tests that
/// try every purpose alike go through it.
fn sign_as(signer: &Signer, purpose: Purpose, a: i64, b: i64) -> String {
    match purpose {
        Purpose::Unsubscribe => signer.sign(&Unsubscribe {
            subscriber: a,
            list: b,
            campaign: None,
        }),
        Purpose::Preferences => signer.sign(&Preferences {
            subscriber: a,
            via_list: (b != 0).then_some(b),
        }),
        Purpose::Confirm => signer.sign(&Confirm {
            subscriber: a,
            list: b,
        }),
        Purpose::Bounce => signer.sign(&Bounce { delivery: a }),
        Purpose::Csrf => signer.sign(&Csrf { subscriber: a }),
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

fn is_ticked(page: &str, slug: &str) -> bool {
    let input = format!("name=\"list\" value=\"{slug}\"");
    let at = page
        .find(&input)
        .unwrap_or_else(|| panic!("no box for {slug} in {page}"));
    page[at + input.len()..].starts_with(" checked")
}

/// An `Env` (tests/dispatch.rs) whose `db` is on the engine under test
/// (`support::pg::db_setting`), and where that database is.
pub(crate) async fn env_on_engine(port: u16) -> (Env, Location) {
    let env = Env::new(port, "");
    let location = env.location();
    (env, location)
}

/// `bulletin serve --listen 127.0.0.1:0` running in the folder of an `Env`.
pub(crate) struct Served {
    child: Child,
    /// Where it listens, as it printed.
    pub(crate) addr: String,
    /// Its standard error.
    log: PathBuf,
    /// Kept open: the server may print more.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Served {
    pub(crate) async fn start(env: &Env) -> Served {
        Served::start_as(env, "serve").await
    }

    /// One of several servers in the folder of `env`, its standard error in
    /// `NAME.log`.
    pub(crate) async fn start_as(env: &Env, name: &str) -> Served {
        let log = env.dir.path().join(format!("{name}.log"));
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

//! The engines under test: SQLite always, PostgreSQL when
//! `BULLETIN_TEST_POSTGRES` names a server's admin URL (`.ci/postgres`
//! prints one). Each test that stores something gets its own database:
//! a file in its temp dir, or a fresh database on that server.
//!
//! Gating: with the variable set, a server that cannot be reached or
//! refuses to create a database is a test failure, never a skip.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The variable that asks for the PostgreSQL half of the tests.
pub const VARIABLE: &str = "BULLETIN_TEST_POSTGRES";

/// Which engine the tests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// The admin URL in `BULLETIN_TEST_POSTGRES`, if set and not empty.
pub fn requested() -> Option<String> {
    std::env::var(VARIABLE)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// PostgreSQL when it is requested, SQLite otherwise.
pub fn engine() -> Engine {
    match requested() {
        Some(_) => Engine::Postgres,
        None => Engine::Sqlite,
    }
}

/// What a test writes as `db = "…"` or passes as `--db`: `DIR/b.db` on
/// SQLite, the URL of a fresh database on PostgreSQL.
pub async fn db_setting(dir: &Path) -> String {
    db_named(dir, "b.db").await
}

/// [`db_setting`] for a test that needs several databases: `DIR/NAME` on
/// SQLite, the URL of a fresh database on PostgreSQL.
pub async fn db_named(dir: &Path, name: &str) -> String {
    match engine() {
        Engine::Sqlite => dir.join(name).display().to_string(),
        Engine::Postgres => fresh_database().await,
    }
}

/// [`db_named`] for synchronous code and helpers that name a database
/// several times: the same `NAME` in the same `DIR` is the same database
/// (on PostgreSQL, created by the first call, on a thread of its own).
pub fn db_in(dir: &Path, name: &str) -> String {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static MADE: LazyLock<Mutex<HashMap<std::path::PathBuf, String>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let key = dir.join(name);
    if let Some(setting) = MADE.lock().unwrap().get(&key) {
        return setting.clone();
    }
    let (dir_owned, name_owned) = (dir.to_path_buf(), name.to_string());
    let setting = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(db_named(&dir_owned, &name_owned))
    })
    .join()
    .expect("database created");
    MADE.lock().unwrap().insert(key, setting.clone());
    setting
}

/// Points the `db = "b.db"` line of `DIR/bulletin.toml` (a test project's
/// config) at the engine under test and returns the setting: unchanged on
/// SQLite (`DIR/b.db`), a fresh database on PostgreSQL ([`db_in`]).
pub fn config_db(dir: &Path) -> String {
    let config = dir.join("bulletin.toml");
    // `dispatch::Env` may already name a fresh database (`db_setting`):
    // that one is the project's.
    if engine() == Engine::Postgres {
        let text = std::fs::read_to_string(&config).unwrap();
        if let Some(url) = text
            .lines()
            .find_map(|l| l.strip_prefix("db = \"postgres"))
            .and_then(|rest| rest.strip_suffix('"'))
        {
            return format!("postgres{url}");
        }
    }
    let setting = db_in(dir, "b.db");
    if engine() == Engine::Postgres {
        let text = std::fs::read_to_string(&config).unwrap();
        let line = format!("db = \"{setting}\"");
        if !text.contains(&line) {
            let at = text.find("db = \"b.db\"");
            assert!(at.is_some(), "{}: no db line", config.display());
            std::fs::write(&config, text.replacen("db = \"b.db\"", &line, 1)).unwrap();
        }
    }
    setting
}

/// A setting from [`db_setting`] or [`db_named`] as the program reads it.
pub fn location(setting: &str) -> bulletin::store::Location {
    bulletin::store::Location::parse(Path::new(setting), None)
        .unwrap_or_else(|e| panic!("{}: {e}", redacted(setting)))
}

/// A fresh store of the engine under test, opened (and its schema made)
/// the way the program does: `DIR/NAME` on SQLite.
pub async fn store_named(dir: &Path, name: &str) -> bulletin::store::Store {
    let setting = db_named(dir, name).await;
    bulletin::store::Store::open(location(&setting))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", redacted(&setting)))
}

/// What the first command that creates the database prints about it, for
/// a setting as given on the command line (relative to the command's dir).
pub fn created_line(setting: &str) -> String {
    match location(setting) {
        bulletin::store::Location::File(_) => format!("created database {setting}"),
        pg => format!("created the bulletin schema in {pg}"),
    }
}

/// Creates a new, empty database `bt_<pid>_<counter>_<nanos>` on the
/// requested server and returns its URL (the admin URL with that database).
/// Panics, naming the variable and the URL, when nothing is requested or
/// the server cannot be reached or refuses.
pub async fn fresh_database() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let admin = requested().unwrap_or_else(|| panic!("{VARIABLE} is not set"));
    let mut url = url::Url::parse(&admin)
        .unwrap_or_else(|e| panic!("{VARIABLE}={}: not a URL: {e}", redacted(&admin)));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let name = format!(
        "bt_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!(
            "{VARIABLE}={}: cannot connect to the PostgreSQL server: {e} (start one with `.ci/postgres`, or unset {VARIABLE})",
            redacted(&admin)
        )
    });
    // Identifiers take no bound parameters; the name is ours, [a-z0-9_].
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{VARIABLE}={}: CREATE DATABASE {name}: {e}",
                redacted(&admin)
            )
        });
    conn.close().await.ok();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// [`fresh_database`], opened to `role` (an existing role of the
/// cluster): it may connect, create tables and use the schema `public`,
/// as granted over the admin's trusted connection. Returns the database's
/// URL (the admin's) and the admin's connection inside it.
pub async fn fresh_database_for(role: &str) -> (String, PgConnection) {
    let database = fresh_database().await;
    let name = url::Url::parse(&database).unwrap().path()[1..].to_string();
    let mut inside = PgConnection::connect(&database).await.unwrap();
    // Identifiers take no bound parameters; both names are ours.
    for sql in [
        format!("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {name} TO {role}"),
        // The tables go in the schema `public`, which its owner (the
        // database's owner, the admin) must open to the role.
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {role}"),
    ] {
        sqlx::raw_sql(&sql)
            .execute(&mut inside)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    (database, inside)
}

/// `url` with its password, if any, replaced by `***`, for messages.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            parsed.set_password(Some("***")).ok();
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// [`db_setting`] as the store reads it: what a test passes to
/// `Store::open`.
pub async fn location_in(dir: &Path) -> bulletin::store::Location {
    let setting = db_setting(dir).await;
    bulletin::store::Location::parse(Path::new(&setting), None)
        .unwrap_or_else(|e| panic!("{}: {e}", redacted(&setting)))
}

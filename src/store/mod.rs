//! The subscriber store: every line of SQL in bulletin lives under this
//! module. Two engines behind one door: a SQLite file (the default) or a
//! PostgreSQL database ([`Location`]), both through sqlx's Any driver with
//! runtime queries (no compile-time macros, no database at build time); one
//! pool shared by the CLI, the dispatcher and the web server. The pool never
//! leaves this module, and callers use `Store` methods. Each statement is
//! written once ([`sql`] numbers its parameters for both engines); the few
//! that must differ are written side by side with `Engine::pick`.
//!
//! The schemas are `subscribers.sql` and `subscribers.pg.sql` at the top of
//! the repository, embedded and applied on [`Store::open`] (see [`schema`]).
//! Times are unix seconds passed in by the caller (`now`), so tests control
//! the clock.
//!
//! The rule the store exists to keep: a person who left, bounced, complained
//! or was erased is never selected to receive mail. The rule is written once,
//! as [`MAILABLE`] (and its person half [`MAILABLE_PERSON`]), and every query
//! that selects recipients ([`Store::audience`], the dispatcher's claim, the
//! default exports, the counts) embeds it. Every path that stops mail to an
//! address (bounce, complaint, erasure, manual) records it with `suppress_hash`.

/// The suppression check, over `subscribers s`: the person's address hash
/// is in `suppressions`. The mailable rule embeds it; so does the status
/// column of a list export, which names who it keeps unmailed.
macro_rules! suppressed {
    () => {
        "EXISTS (SELECT 1 FROM suppressions x WHERE x.hash = s.email_hash)"
    };
}

/// The person half of the mailable rule, over `subscribers s`: an active
/// person (so not erased), with an address, whose hash is not suppressed.
/// A macro so that queries can embed the rule in `concat!` constants.
macro_rules! mailable_person {
    () => {
        concat!(
            "(s.status = 'active' AND s.email IS NOT NULL AND NOT ",
            suppressed!(),
            ")"
        )
    };
}

/// The one mailable rule, over `subscribers s` and their `subscriptions sub`
/// row for the list the query names (see [`MAILABLE`]).
macro_rules! mailable {
    () => {
        concat!("(sub.status = 'confirmed' AND ", mailable_person!(), ")")
    };
}

/// A JSON array of ids bound as one parameter (`$param`, e.g. `"?1"`), read
/// as a table of one column, `id`: the one way each engine expands the id
/// lists the store binds (SQLite's `json_each`, PostgreSQL's
/// `json_array_elements_text`). The query gives the table an alias.
macro_rules! json_ids {
    (sqlite, $param:literal) => {
        concat!("(SELECT value AS id FROM json_each(", $param, "))")
    };
    (postgres, $param:literal) => {
        concat!(
            "(SELECT CAST(value AS BIGINT) AS id FROM json_array_elements_text(CAST(",
            $param,
            " AS json)))"
        )
    };
}

/// A statement over one JSON array of ids, written once: the text before
/// the id table ([`json_ids!`]), its parameter, and the text after; the
/// text for `$engine`.
macro_rules! over_json_ids {
    ($engine:expr, $before:literal, $param:literal, $after:literal) => {
        $engine.pick(
            concat!($before, json_ids!(sqlite, $param), $after),
            concat!($before, json_ids!(postgres, $param), $after),
        )
    };
}

pub mod archive; // which sent campaigns the public archive shows
mod bounces; // returned mail: matching people, applying bounce and complaint rules
pub mod copy; // `db copy`: a SQLite database into an empty PostgreSQL one
pub mod deliveries; // the dispatcher's campaigns, delivery log and lease
mod events;
mod export;
mod import;
mod lists;
mod location; // the `db` setting: a SQLite file or a PostgreSQL URL
pub mod people; // what the subscriber pages read and change
mod placeholders; // the attribute keys a list has and who lacks each value
mod probe; // what `doctor` asks of the database: engine, server version, schema step
mod runs; // which transport each campaign run used
pub mod schema;
mod sql; // one statement text for both engines; write transactions
mod subscribers;
pub mod welcome; // welcome campaigns: the active one per list, `queue_welcome`
pub mod workers; // dispatch workers, their heartbeats, dead workers' rows, the shared pace

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection as _};

use sql::{query, query_scalar};

pub use bounces::{
    Action, Applied, BounceEvent, BounceScore, DeliveryOwner, ScoreChange, SoftRule, UnmatchedMail,
};
pub use copy::CopiedTable;
pub use events::Event;
pub use export::{ExportRow, ListMembership, Selection};
pub use import::{
    Consent, DEFAULT_BATCH_SIZE, ImportOptions, ImportReport, Left, RowError, Skipped,
};
pub use lists::{List, ListChanges, ListCounts, ListsAudience, RemovedList};
pub use location::{DbPassword, Location};
pub use probe::{Probe, probe};
pub use runs::RunTransport;
pub use sql::Engine;
pub use subscribers::{Added, Profile, Reactivated, Recipient, Removed, Subscriber, Subscription};

/// Who may be mailed, whatever the list: [`MAILABLE`] without the
/// subscription. Never used alone: every query names the subscription too.
pub const MAILABLE_PERSON: &str = mailable_person!();

/// Who may be mailed on a list: the one mailable rule, as an SQL condition
/// over `subscribers s` joined to their `subscriptions sub` row for the list
/// (the query names the list). A confirmed subscription, an active person,
/// an address, not suppressed. Every query that selects people to mail
/// embeds this text (through the `mailable!` macro); none spells the rule
/// out itself.
pub const MAILABLE: &str = mailable!();

/// How long a statement waits for another writer before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a first connection to the database may take, login included.
/// A host and port where something accepts connections but never answers
/// as PostgreSQL does (a wrong port that is another service's, a server
/// hung at startup) would otherwise hold the command, and every cron run
/// after it, without end.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to `url`, or [`Error::Unreachable`] once
/// [`CONNECT_TIMEOUT`] has passed without the server finishing the login.
async fn connect_within(url: &str) -> Result<AnyConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect(url)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(Error::Unreachable(format!(
            "no answer within {} s (is a PostgreSQL server listening at that host and port?)",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Store errors. Messages name no path: the caller knows which database or
/// file it opened and adds it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database is locked by another process (gave up after {0:?})")]
    Locked(Duration),
    /// PostgreSQL chose this transaction to undo so that another could go
    /// on (`deadlock_detected`, `serialization_failure`): nothing of it was
    /// written, and running it again may succeed.
    #[error("database: this write collided with another ({0}) and was undone")]
    Collided(&'static str),
    #[error(
        "no database connection became free in time (all in use, or the server slow to accept one)"
    )]
    NoConnection,
    #[error("not a bulletin database, or the file is corrupt")]
    Corrupt,
    #[error(
        "read-only: bulletin must write the database file and create its -wal and -shm files beside it; check the permissions of the file and its folder"
    )]
    ReadOnly,
    #[error("no database file there")]
    Missing,
    #[error("backup: {0}")]
    Backup(std::io::Error),
    #[error("database: {0}")]
    Sql(sqlx::Error),
    #[error("{0}")]
    NotOnPostgres(&'static str),
    #[error("the database server cannot be reached: {0}")]
    Unreachable(String),
    /// TLS with the PostgreSQL server failed (`sslmode` asks for it): a
    /// certificate not trusted or not for that host, a server without
    /// TLS. A setting to fix, which retrying does not.
    #[error("TLS with the database server failed: {0}")]
    Tls(String),
    /// The server refused the login (PostgreSQL's SQLSTATE class 28: a
    /// wrong or missing password, a role that may not log in, no
    /// pg_hba.conf line for it). The server's own words, which name the
    /// role and never the password.
    #[error("the server refused the login: {0}")]
    LoginRefused(String),
    /// The server has no database of that name (PostgreSQL's SQLSTATE
    /// 3D000, invalid_catalog_name): a wrong setting or a database not yet
    /// created, which retrying will not fix.
    #[error("no database {name:?} on the server; create it (createdb {name}) or fix the name")]
    NoDatabase { name: String },
    #[error("schema: {0}")]
    Schema(String),
    #[error("the subscription writer has stopped (the server is shutting down)")]
    WriterStopped,
    #[error("{email:?}: {source}")]
    Address {
        email: String,
        source: crate::address::Error,
    },
    #[error("no list {slug:?}{}", match suggestion {
        Some(near) => format!("; did you mean {near:?}? (`bulletin lists` shows all)"),
        None => " (`bulletin lists` shows all; create one with `bulletin lists add`)".into(),
    })]
    NoList {
        slug: String,
        /// The existing slug closest to `slug`, when one is near.
        suggestion: Option<String>,
    },
    #[error("list {0:?} already exists")]
    ListExists(String),
    #[error(
        "list {0:?} has {1} confirmed or pending subscriber(s); not removed (add --force to remove it anyway: people and their history are kept)"
    )]
    ListNotEmpty(String, i64),
    #[error(
        "list {0:?} has {1} campaign(s) scheduled, sending or held; not removed (let them finish or cancel them first)"
    )]
    ListInUse(String, i64),
    #[error("invalid list slug {0:?}: use lower-case letters, digits, '-' and '_'")]
    BadSlug(String),
    #[error("no subscriber {0}")]
    NoSubscriber(String),
    #[error("{email} is {status}; not subscribed (they can sign up again themselves)")]
    NotActive { email: String, status: String },
    #[error(
        "{0} unsubscribed from {1:?}; not subscribed again (they can sign up again themselves)"
    )]
    Unsubscribed(String, String),
    #[error("{email} {why}; not reactivated (reactivate returns only bounced addresses)")]
    NotReactivated { email: String, why: String },
    #[error("{0} is suppressed (erased, bounced or complained); never subscribed again")]
    Suppressed(String),
    #[error("invalid status {0:?}: use one of {1}")]
    BadStatus(String, &'static str),
    #[error(
        "--status {0}: a subscription state belongs to one list; add --list SLUG (without --list, --status takes {1})"
    )]
    StatusNeedsList(String, &'static str),
    #[error("empty file: no header row")]
    EmptyFile,
    #[error(transparent)]
    Header(#[from] crate::import::Error),
    #[error("line {line}: {message}")]
    Read { line: u64, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        if let Some((state, message)) = err
            .as_database_error()
            .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
            .map(|d| (d.code().to_string(), d.message().to_string()))
        {
            return match state.as_str() {
                "40001" => Error::Collided("a serialization failure"),
                "40P01" => Error::Collided("a deadlock"),
                // lock_not_available: `lock_timeout` passed
                "55P03" => Error::Locked(BUSY_TIMEOUT),
                // invalid_authorization_specification, invalid_password: a
                // wrong setting, which retrying will not fix.
                s if s.starts_with("28") => Error::LoginRefused(message),
                // invalid_catalog_name: `database "NAME" does not exist`
                // (`connect_postgres` puts the URL's own name in).
                "3D000" => Error::NoDatabase {
                    name: message
                        .split('"')
                        .nth(1)
                        .map_or(message.clone(), String::from),
                },
                // connection exceptions (08), insufficient resources (53:
                // too many connections), the server shutting down or
                // starting up (57P01-57P03): retry later.
                s if s.starts_with("08") || s.starts_with("53") || s.starts_with("57P0") => {
                    Error::Unreachable(err.to_string())
                }
                _ => Error::Sql(err),
            };
        }
        let code = err
            .as_database_error()
            .and_then(|d| d.code())
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff);
        match code {
            // SQLITE_BUSY, SQLITE_LOCKED
            Some(5) | Some(6) => Error::Locked(BUSY_TIMEOUT),
            // SQLITE_CORRUPT, SQLITE_NOTADB
            Some(11) | Some(26) => Error::Corrupt,
            // SQLITE_READONLY; SQLITE_CANTOPEN on a file that exists means
            // its folder refuses the -wal and -shm files.
            Some(8) | Some(14) => Error::ReadOnly,
            _ => match err {
                sqlx::Error::PoolTimedOut => Error::NoConnection,
                // The server cannot be reached (PostgreSQL): retry later.
                // A TLS handshake that failed (an untrusted certificate)
                // comes as an IO error carrying rustls' own.
                sqlx::Error::Io(ref e) => match rustls_error(e) {
                    Some(tls) => Error::Tls(tls.to_string()),
                    None => Error::Unreachable(err.to_string()),
                },
                sqlx::Error::Tls(e) => Error::Tls(e.to_string()),
                other => Error::Sql(other),
            },
        }
    }
}

/// The rustls error inside an IO error, if that is what it carries.
fn rustls_error(e: &std::io::Error) -> Option<&tokio_rustls::rustls::Error> {
    e.get_ref()?.downcast_ref::<tokio_rustls::rustls::Error>()
}

impl Error {
    /// True when retrying later may succeed: another process held the
    /// database too long, a write collided with another's, no connection
    /// came free, or the server (PostgreSQL) could not be reached.
    /// A refused login ([`Error::LoginRefused`]) is not: a wrong or missing
    /// password stays wrong until someone fixes the setting, so cron's
    /// `dispatch` fails loudly (exit 2) instead of exiting 75 run after run.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Locked(_) | Error::Collided(_) | Error::NoConnection | Error::Unreachable(_)
        )
    }

    /// A copy of a transient error, for each of several callers that were
    /// waiting on the one write it stopped (`None` for any other error,
    /// which carries what cannot be copied).
    pub fn transient_copy(&self) -> Option<Error> {
        match self {
            Error::Locked(waited) => Some(Error::Locked(*waited)),
            Error::Collided(what) => Some(Error::Collided(what)),
            Error::NoConnection => Some(Error::NoConnection),
            Error::Unreachable(why) => Some(Error::Unreachable(why.clone())),
            _ => None,
        }
    }

    /// True when a row with the same unique key was written first (by
    /// another process, as a rule: two commands racing on one new row).
    pub fn is_duplicate(&self) -> bool {
        match self {
            Error::Sql(e) => e
                .as_database_error()
                .is_some_and(|d| d.is_unique_violation()),
            _ => false,
        }
    }

    fn address(email: &str, source: crate::address::Error) -> Error {
        Error::Address {
            email: email.trim().to_string(),
            source,
        }
    }
}

/// A handle on the database: cheap to clone, shared by every task.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    location: Location,
}

/// Moves a file just written (`VACUUM INTO` does not flush it) into place
/// so that a power cut leaves at `to` either what was there before or the
/// whole new file: the file reaches the disk before the rename, and the
/// rename before this returns.
fn durable_rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::File::open(from)?.sync_all()?;
    std::fs::rename(from, to)?;
    let folder = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(folder)?.sync_all()
}

/// SQLite's `synchronous` for every connection: FULL, which flushes the
/// write-ahead log at every commit, so that a commit is on the disk before
/// bulletin acts on it (sends the message its claim allowed, confirms the
/// unsubscribe), whatever crashes, the machine included. The NORMAL often
/// recommended with WAL (bulletin's setting until 2026-12-02) flushes only
/// at checkpoints: a power cut could undo a row committed `sending` whose
/// message had gone out (mailed again by the next run) or an unsubscribe a
/// page had confirmed. On PostgreSQL each connection sets
/// `synchronous_commit = on` for the same reason (the server's `fsync`
/// must stay on, its default).
const SYNCHRONOUS: &str = "FULL";

impl Store {
    /// Opens (creating a SQLite file if needed) the database, and brings
    /// the schema up to date. SQLite runs in WAL mode with foreign keys on
    /// and a busy timeout; a PostgreSQL database must exist (the schema is
    /// created inside it).
    pub async fn open(location: impl Into<Location>) -> Result<Store> {
        Self::open_with(location, BUSY_TIMEOUT).await
    }

    /// Opens the database only if it exists: commands that merely read or
    /// send never create an empty database by accident. On PostgreSQL,
    /// "exists" means the bulletin schema is in it.
    pub async fn open_existing(location: impl Into<Location>) -> Result<Store> {
        match &location.into() {
            Location::File(path) if !path.is_file() => Err(Error::Missing),
            Location::File(path) => Self::connect_sqlite(path, BUSY_TIMEOUT, false).await,
            Location::Postgres(url) => Self::connect_postgres(url, BUSY_TIMEOUT, false).await,
        }
    }

    /// [`Store::open`] with another busy timeout (tests use a short one).
    pub async fn open_with(location: impl Into<Location>, busy_timeout: Duration) -> Result<Store> {
        match &location.into() {
            Location::File(path) => Self::connect_sqlite(path, busy_timeout, true).await,
            Location::Postgres(url) => Self::connect_postgres(url, busy_timeout, true).await,
        }
    }

    async fn connect_sqlite(path: &Path, busy_timeout: Duration, create: bool) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let locked = |e: Error| match e {
            Error::Locked(_) => Error::Locked(busy_timeout),
            other => other,
        };
        let locked_from = |e: sqlx::Error| locked(Error::from(e));
        let url = location::sqlite_url(path, create);
        // The file itself first: a corrupt or unreadable file fails here,
        // once, with its own error (the pool would retry until its timeout).
        let mut first = AnyConnection::connect(&url).await.map_err(locked_from)?;
        sqlx::raw_sql("PRAGMA journal_mode = WAL")
            .execute(&mut first)
            .await
            .map_err(locked_from)?;
        first.close().await.map_err(locked_from)?;
        // A commit reaches the disk before it is acknowledged
        // (`SYNCHRONOUS`), and erasure must not leave the address in free
        // pages of the file (`secure_delete`).
        let pragmas = format!(
            "PRAGMA busy_timeout = {}; PRAGMA synchronous = {SYNCHRONOUS}; \
             PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;",
            busy_timeout.as_millis()
        );
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(busy_timeout + Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let pragmas = pragmas.clone();
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&pragmas)).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(locked_from)?;
        let store = Store {
            pool,
            location: Location::File(path.to_path_buf()),
        };
        schema::apply(&store.pool).await.map_err(locked)?;
        Ok(store)
    }

    async fn connect_postgres(
        url: &url::Url,
        busy_timeout: Duration,
        create: bool,
    ) -> Result<Store> {
        sqlx::any::install_default_drivers();
        // The server itself first: one that cannot be reached, a refused
        // login or a missing database fails here, once, with its own error
        // (the pool would retry until its timeout and report a timeout).
        connect_within(url.as_str())
            .await
            .map_err(|e| match e {
                Error::NoDatabase { .. } => Error::NoDatabase {
                    name: location::database_name(url),
                },
                other => other,
            })?
            .close()
            .await?;
        // As SQLite's busy timeout: a write waits this long for another
        // writer's lock (`sql::begin_write`'s advisory lock, a row lock),
        // then fails as `Error::Locked` (lock_not_available) instead of
        // holding its caller without a deadline (the web pages answer 503).
        // And every commit waits for its flush to disk (`SYNCHRONOUS`),
        // whatever the server, the database or the role says.
        let session = format!(
            "SET lock_timeout = {}; SET synchronous_commit = on",
            busy_timeout.as_millis()
        );
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let session = session.clone();
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&session)).await?;
                    Ok(())
                })
            })
            .connect(url.as_str())
            .await?;
        let store = Store {
            pool,
            location: Location::Postgres(url.clone()),
        };
        if !create && schema::version(&store.pool).await? == 0 {
            return Err(Error::Missing);
        }
        schema::apply(&store.pool).await?;
        Ok(store)
    }

    /// A round trip to the database, for health checks.
    pub async fn ping(&self) -> Result<()> {
        query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The pool, for the store's modules and their unit tests only: nothing
    /// outside `src/store/` sees it (the store is the one door).
    fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Where the database is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The engine the database runs on.
    pub fn engine(&self) -> Engine {
        Engine::of(&self.pool)
    }

    /// Waits for running queries, copies the write-ahead log into the
    /// database file and closes every connection, so that the `.db` file
    /// alone holds everything (a copy without its `-wal` is complete).
    pub async fn close(self) {
        // Best effort: another process may hold the log; SQLite also
        // checkpoints when the last connection closes.
        if self.engine() == Engine::Sqlite {
            let _ = query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await;
        }
        self.pool.close().await;
    }

    /// Writes a consistent copy of the database to `target` (SQLite's
    /// `VACUUM INTO`), while other connections go on reading and writing.
    /// The copy is written beside `target` and renamed over it, each step
    /// flushed to disk ([`durable_rename`]), so `target` is never a
    /// half-written file, not even after a power cut.
    pub async fn backup(&self, target: &Path) -> Result<()> {
        if self.engine() == Engine::Postgres {
            return Err(Error::NotOnPostgres(
                "`db backup` copies a SQLite file; back PostgreSQL up with pg_dump",
            ));
        }
        let partial = {
            let mut name = target.as_os_str().to_owned();
            name.push(format!(".partial-{}", std::process::id()));
            PathBuf::from(name)
        };
        let _ = std::fs::remove_file(&partial);
        let written = query("VACUUM INTO ?")
            .bind(partial.to_string_lossy().into_owned())
            .execute(&self.pool)
            .await;
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
        durable_rename(&partial, target).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            Error::Backup(e)
        })
    }

    /// True when `email` (any spelling) must never be mailed: erased,
    /// bounced or complained. Invalid addresses are an error.
    pub async fn is_suppressed(&self, email: &str) -> Result<bool> {
        let canonical = crate::address::normalize(email).map_err(|e| Error::address(email, e))?;
        self.is_hash_suppressed(&crate::address::hash(&canonical))
            .await
    }

    async fn is_hash_suppressed(&self, hash: &str) -> Result<bool> {
        Ok(
            query_scalar::<i64>("SELECT count(*) FROM suppressions WHERE hash = ?")
                .bind(hash)
                .fetch_one(&self.pool)
                .await?
                > 0,
        )
    }

    /// Records that `email` must never be mailed again (`reason`: bounced,
    /// complained, manual). Keeps an existing entry and its reason.
    pub async fn suppress(&self, email: &str, reason: &str, now: i64) -> Result<()> {
        let canonical = crate::address::normalize(email).map_err(|e| Error::address(email, e))?;
        let mut conn = self.pool.acquire().await?;
        suppress_hash(&mut conn, &crate::address::hash(&canonical), reason, now).await
    }

    /// A value from `settings`.
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Stores a value in `settings`, replacing any previous one.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        query(
            "INSERT INTO settings (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Records that the address with this hash (`address::hash`) must never be
/// mailed again, inside the caller's transaction. The one function that
/// writes `suppressions`: bounces, complaints, erasure and manual entries all
/// come here. Keeps an existing entry and its reason.
async fn suppress_hash(
    conn: &mut sqlx::AnyConnection,
    hash: &str,
    reason: &str,
    now: i64,
) -> Result<()> {
    suppress_hashes(conn, &[(hash, reason)], now).await
}

/// `suppress_hash` for a batch of (hash, reason) pairs in one statement (an
/// import's people who left): the one statement that writes `suppressions`.
async fn suppress_hashes(
    conn: &mut sqlx::AnyConnection,
    pairs: &[(&str, &str)],
    now: i64,
) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let rows = serde_json::to_string(pairs).expect("strings serialise");
    query(sql::Engine::of_connection(conn).pick(
        "INSERT INTO suppressions (hash, reason, created_at) \
         SELECT value ->> 0, value ->> 1, ?2 FROM json_each(?1) WHERE true \
         ON CONFLICT (hash) DO NOTHING",
        "INSERT INTO suppressions (hash, reason, created_at) \
         SELECT value ->> 0, value ->> 1, ?2 FROM json_array_elements(CAST(?1 AS json)) \
         ON CONFLICT (hash) DO NOTHING",
    ))
    .bind(rows)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The current time as unix seconds, for callers at the edges.
/// `BULLETIN_NOW` (unix seconds, read once) replaces the clock: tests apply
/// returned mail at the times they choose with it. `config` refuses a value
/// that is not a number; here one is ignored.
pub fn now() -> i64 {
    static FIXED: std::sync::LazyLock<Option<i64>> = std::sync::LazyLock::new(|| {
        std::env::var("BULLETIN_NOW")
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    FIXED.unwrap_or_else(|| chrono::Utc::now().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sql::{begin_write, query_as};

    /// `setting` (a statement reading one value) as each connection the
    /// pool can open sees it: all of them held at once, so none is read
    /// twice.
    async fn on_every_connection<T>(store: &Store, setting: &str) -> Vec<T>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + Unpin,
    {
        let mut held = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..store.pool.options().get_max_connections() {
            let mut conn = store.pool.acquire().await.unwrap();
            seen.push(
                sql::query_scalar(setting)
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap(),
            );
            held.push(conn);
        }
        seen
    }

    /// A power cut must not undo a commit bulletin acted on: every
    /// connection of the pool (the ledger's among them) flushes the log at
    /// commit (`PRAGMA synchronous` 2 is FULL; NORMAL, 1, waits for the
    /// next checkpoint in WAL mode).
    #[tokio::test]
    async fn every_sqlite_connection_flushes_each_commit_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let levels: Vec<i64> = on_every_connection(&store, "PRAGMA synchronous").await;
        assert_eq!(levels, [2; 4], "synchronous = FULL on every connection");
    }

    /// On PostgreSQL every connection waits for its commit's flush even
    /// where the server does not (the test cluster runs with
    /// `synchronous_commit = off`). Runs when `BULLETIN_TEST_POSTGRES` names
    /// a server, in a database of its own.
    #[tokio::test]
    async fn every_postgresql_connection_waits_for_each_commit_to_reach_disk() {
        let Ok(admin) = std::env::var("BULLETIN_TEST_POSTGRES") else {
            return;
        };
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(&admin).await.unwrap();
        let name = format!("unit_sync_{}", std::process::id());
        let create = format!("CREATE DATABASE {name}");
        sqlx::raw_sql(&create).execute(&mut conn).await.unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&name);
        let store = Store::open(Location::Postgres(url)).await.unwrap();
        let reading = "SELECT current_setting('synchronous_commit')";
        let levels: Vec<String> = on_every_connection(&store, reading).await;
        assert_eq!(levels, ["on"; 4], "synchronous_commit on every connection");
        store.pool.close().await;
        let drop_it = format!("DROP DATABASE {name}");
        sqlx::raw_sql(&drop_it).execute(&mut conn).await.unwrap();
    }

    #[tokio::test]
    async fn erasure_removes_unmatched_mail_that_names_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let kept = |hash: &str, sender: &str, subject: &str| bounces::UnmatchedMail {
            hash: hash.into(),
            kind: "complaint".into(),
            sender: sender.into(),
            subject: subject.into(),
            reason: "no VERP token and no Message-ID of ours".into(),
            received_at: 5,
        };
        for mail in [
            kept("a", "Ann <Ann@Example.org>", "Fwd: spam"),
            kept("b", "abuse@isp.example", "complaint about ann@example.org"),
            kept("c", "Bob <bob@example.org>", "Out of office"),
        ] {
            assert!(store.record_unmatched(&mail).await.unwrap());
        }
        store.forget("ann@example.org", "cli", 6).await.unwrap();
        let left = store.unmatched_since(0).await.unwrap();
        let senders: Vec<_> = left.iter().map(|m| m.sender.as_str()).collect();
        assert_eq!(senders, ["Bob <bob@example.org>"]);
    }

    #[tokio::test]
    async fn corrupt_file_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let err = Store::open(&path).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt), "{err:?}");
    }

    #[tokio::test]
    async fn held_write_lock_is_locked_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let a = Store::open(&path).await.unwrap();
        let mut tx = begin_write(a.pool()).await.unwrap();
        query("INSERT INTO settings (key, value) VALUES ('k', 'v')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let b = Store::open_with(&path, Duration::from_millis(100))
            .await
            .unwrap();
        let err = b.set_setting("x", "y").await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        tx.rollback().await.unwrap();
        b.set_setting("x", "y").await.unwrap();
        assert_eq!(b.setting("x").await.unwrap().as_deref(), Some("y"));
    }

    #[test]
    fn no_free_connection_is_its_own_transient_error() {
        let err = Error::from(sqlx::Error::PoolTimedOut);
        assert!(matches!(err, Error::NoConnection), "{err:?}");
        assert!(err.is_transient());
        assert!(err.to_string().contains("no database connection"), "{err}");
    }

    #[tokio::test]
    async fn missing_file_is_not_created_and_a_second_row_is_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let err = Store::open_existing(&path).await.unwrap_err();
        assert!(matches!(err, Error::Missing), "{err:?}");
        assert!(!path.exists());
        let s = Store::open(&path).await.unwrap();
        let insert = "INSERT INTO settings (key, value) VALUES ('k', 'v')";
        query(insert).execute(s.pool()).await.unwrap();
        let err = Error::from(query(insert).execute(s.pool()).await.unwrap_err());
        assert!(err.is_duplicate(), "{err:?}");
        assert!(!Error::Corrupt.is_duplicate());
        s.close().await;
        let s = Store::open_existing(&path).await.unwrap();
        assert_eq!(s.setting("k").await.unwrap().as_deref(), Some("v"));
    }

    #[tokio::test]
    async fn close_leaves_everything_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = Store::open(&path).await.unwrap();
        s.set_setting("k", "v").await.unwrap();
        s.close().await;
        let wal = dir.path().join("t.db-wal");
        assert!(std::fs::metadata(&wal).map_or(true, |m| m.len() == 0));
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).unwrap();
        let c = Store::open_existing(&copy).await.unwrap();
        assert_eq!(c.setting("k").await.unwrap().as_deref(), Some("v"));
    }

    #[tokio::test]
    async fn suppression_matches_any_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        assert!(!s.is_suppressed("Ann@Example.org").await.unwrap());
        s.suppress("ann@example.org", "manual", 1).await.unwrap();
        assert!(s.is_suppressed(" ANN@EXAMPLE.ORG").await.unwrap());
    }

    /// One person per way of leaving, all confirmed on `news` and queued for
    /// a campaign first; then each leaves their way.
    const CASES: [(&str, &str, bool, bool); 8] = [
        // (address, how they left, mailable on the list, mailable anywhere:
        // on at least one list, and `news` is their only one)
        ("ok@example.org", "stays", true, true),
        ("pending@example.org", "subscription pending", false, false),
        (
            "left@example.org",
            "unsubscribed from the list",
            false,
            false,
        ),
        ("gone@example.org", "person unsubscribed", false, false),
        ("bounced@example.org", "person bounced", false, false),
        ("complained@example.org", "person complained", false, false),
        ("suppressed@example.org", "address suppressed", false, false),
        ("erased@example.org", "erased (email NULL)", false, false),
    ];

    async fn leave(s: &Store, list: i64, email: &str, how: &str) {
        let id = s.subscriber(email).await.unwrap().unwrap().id;
        let person = |status: &'static str| {
            query("UPDATE subscribers SET status = ? WHERE id = ?")
                .bind(status)
                .bind(id)
                .execute(s.pool())
        };
        match how {
            "stays" => {}
            "subscription pending" => {
                s.set_subscription(id, list, "pending", "web", 2)
                    .await
                    .unwrap();
            }
            "unsubscribed from the list" => {
                s.remove_subscriber(email, Some("news"), "cli", 2)
                    .await
                    .unwrap();
            }
            "person unsubscribed" => {
                person("unsubscribed").await.unwrap();
            }
            // The person's status alone (no suppression entry).
            "person bounced" => {
                person("bounced").await.unwrap();
            }
            "person complained" => {
                person("complained").await.unwrap();
            }
            "address suppressed" => s.suppress(email, "manual", 2).await.unwrap(),
            "erased (email NULL)" => assert!(s.forget(email, "cli", 2).await.unwrap()),
            other => unreachable!("{other}"),
        }
    }

    #[tokio::test]
    async fn every_query_that_selects_people_to_mail_keeps_the_one_rule() {
        use futures_util::TryStreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        let list = s
            .create_list("news", "News", "", false, false, 1)
            .await
            .unwrap();
        for (email, ..) in CASES {
            s.add_subscriber(email, None, "news", "cli", 1)
                .await
                .unwrap();
        }
        let lists = [list.id];
        let campaign = deliveries::NewCampaign::test("c", &lists);
        let campaign_id = s.insert_campaign(&campaign).await.unwrap();
        let campaign = s.campaign_by_id(campaign_id).await.unwrap().unwrap();
        let queued = s.materialise(campaign_id, 1).await.unwrap();
        assert_eq!(queued, CASES.len() as u64);
        for (email, how, ..) in CASES {
            leave(&s, list.id, email, how).await;
        }
        let on_list: Vec<&str> = CASES.iter().filter(|c| c.2).map(|c| c.0).collect();
        let anywhere: Vec<&str> = CASES.iter().filter(|c| c.3).map(|c| c.0).collect();

        let audience: Vec<String> = s
            .audience(list.id)
            .map_ok(|r| r.email)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(audience, on_list, "Store::audience");
        assert_eq!(
            s.audience_count(list.id).await.unwrap(),
            1,
            "audience_count"
        );
        assert_eq!(s.lists().await.unwrap()[0].audience, 1, "Store::lists");
        for (selection, expected) in [
            (Selection::Audience(list.id), &on_list),
            (Selection::Active, &anywhere),
        ] {
            let mut got = Vec::new();
            s.export(&selection, |row| {
                got.push(row.email);
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
            assert_eq!(&got, expected, "export {selection:?}");
            let count = s.count(&selection).await.unwrap();
            assert_eq!(count, expected.len() as i64, "count {selection:?}");
        }
        // The dispatcher's claim, on rows queued while everyone was mailable.
        let claimed = s
            .record_and_claim(&campaign, "test:1:1", 8, &[], 3)
            .await
            .unwrap();
        let mailed: Vec<&str> = claimed.jobs.iter().map(|j| j.email.as_str()).collect();
        assert_eq!(mailed, on_list, "the claim");
        assert_eq!(claimed.skipped, 7);
        assert!(claimed.exhausted);
        let skipped: Vec<(String, String)> = query_as(
            "SELECT status, last_reply FROM deliveries WHERE status != 'sending' ORDER BY id",
        )
        .fetch_all(s.pool())
        .await
        .unwrap();
        let reasons: Vec<&str> = skipped.iter().map(|(_, r)| r.as_str()).collect();
        assert!(
            skipped.iter().all(|(status, _)| status == "skipped"),
            "{skipped:?}"
        );
        assert_eq!(
            reasons,
            [
                "subscription pending before their turn",
                "subscription unsubscribed before their turn",
                "unsubscribed before their turn",
                "bounced before their turn",
                "complained before their turn",
                "address suppressed before their turn",
                "erased before their turn",
            ]
        );
    }

    /// Every store file but this one, for the tests that read the code.
    const STORE_FILES: [(&str, &str); 13] = [
        ("archive.rs", include_str!("archive.rs")),
        ("bounces.rs", include_str!("bounces.rs")),
        ("deliveries.rs", include_str!("deliveries.rs")),
        ("events.rs", include_str!("events.rs")),
        ("export.rs", include_str!("export.rs")),
        ("import.rs", include_str!("import.rs")),
        ("lists.rs", include_str!("lists.rs")),
        ("people.rs", include_str!("people.rs")),
        ("placeholders.rs", include_str!("placeholders.rs")),
        ("runs.rs", include_str!("runs.rs")),
        ("schema.rs", include_str!("schema.rs")),
        ("subscribers.rs", include_str!("subscribers.rs")),
        ("welcome.rs", include_str!("welcome.rs")),
    ];

    /// No confirming path without `queue_welcome`: every store file with a
    /// statement that makes a subscription confirmed calls it (the
    /// behaviour of each path is checked in `welcome::tests`).
    #[test]
    fn every_file_that_confirms_subscriptions_queues_the_welcome_mail() {
        let mut confirming = Vec::new();
        for (file, text) in STORE_FILES {
            let confirms = ["SET status = 'confirmed'", "'confirmed', 'import'"]
                .iter()
                .any(|statement| text.contains(statement));
            if confirms {
                confirming.push(file);
                assert!(
                    text.contains("welcome::queue_welcome("),
                    "{file} confirms subscriptions without queue_welcome"
                );
            }
        }
        assert_eq!(confirming, ["import.rs", "people.rs", "subscribers.rs"]);
    }

    #[test]
    fn the_mailable_rule_is_spelled_out_in_one_place() {
        use deliveries::{CLAIM_SQL, OTHER_LIST_SQL};
        use subscribers::{AUDIENCE_OF_LISTS_SQL, AUDIENCE_OF_LISTS_SQL_PG, AUDIENCE_SQL};
        for sql in [
            AUDIENCE_SQL,
            AUDIENCE_OF_LISTS_SQL,
            AUDIENCE_OF_LISTS_SQL_PG,
            CLAIM_SQL,
            OTHER_LIST_SQL,
        ] {
            assert!(sql.contains(MAILABLE), "{sql}");
        }
        assert!(MAILABLE.contains(MAILABLE_PERSON));
        // The suppression check, the heart of the rule, appears in no other
        // store file: each query embeds the rule instead.
        let check = "x.hash = s.email_hash";
        for (file, text) in STORE_FILES {
            assert!(!text.contains(check), "{file} spells out the mailable rule");
        }
        // And one function writes suppressions.
        for (file, text) in STORE_FILES {
            assert!(
                !text.contains("INTO suppressions"),
                "{file} writes suppressions"
            );
        }
    }

    /// Every `.rs` file under `src/`, as (path from the crate root, text).
    fn source_files() -> Vec<(String, String)> {
        fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
                    let name = path.strip_prefix(root).unwrap().to_string_lossy();
                    out.push((name.replace('\\', "/"), text));
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        assert!(files.len() > 20, "found the sources");
        files
    }

    /// The store is the one door: no code outside `src/store/` holds the
    /// pool, names sqlx or writes SQL against it.
    #[test]
    fn nothing_outside_the_store_reaches_the_database() {
        for (file, text) in source_files() {
            if file.starts_with("src/store/") {
                continue;
            }
            for word in ["SqlitePool", "AnyPool", "PgPool", "sqlx::", ".pool()"] {
                assert!(!text.contains(word), "{file} uses {word}");
            }
        }
    }

    /// Campaign status changes in one statement (`move_campaign`), which
    /// checks `CampaignStatus::comes_from`.
    #[test]
    fn campaign_status_changes_in_one_place() {
        let update = ["UPDATE campaigns", " SET"].concat();
        let mut found = Vec::new();
        for (file, text) in source_files() {
            for (at, _) in text.match_indices(&update) {
                let set = &text[at..];
                let set = &set[..set.find("WHERE").unwrap_or(set.len())];
                if set.contains("status") {
                    found.push(file.clone());
                }
            }
        }
        assert_eq!(found, ["src/store/deliveries.rs"]);
        let deliveries = include_str!("deliveries.rs");
        let at = deliveries
            .match_indices(&update)
            .map(|(at, _)| at)
            .find(|&at| deliveries[at..].starts_with(&format!("{update} status")))
            .unwrap();
        let before = &deliveries[..at];
        let function = &before[before.rfind("async fn ").unwrap()..];
        assert!(
            function.starts_with("async fn move_campaign("),
            "{function}"
        );
        assert!(function.contains("status.comes_from()"), "{function}");
    }
}

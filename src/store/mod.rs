//! The subscriber store: every line of SQL in bulletin lives under this
//! module. SQLite through sqlx (no compile-time macros), one pool shared by
//! the CLI, the dispatcher and the web server.
//!
//! The schema is `subscribers.sql` at the top of the repository, embedded and
//! applied on [`Store::open`] (see [`schema`]). Times are unix seconds passed
//! in by the caller (`now`), so tests control the clock.
//!
//! The rule the store exists to keep: a person who left, bounced, complained
//! or was erased is never selected to receive mail. Every query that selects
//! recipients ([`Store::audience`], the default export, the counts) requires a
//! confirmed subscription, an active subscriber, and an address whose hash is
//! not in `suppressions`.

mod bounces; // returned mail: matching people, applying bounce and complaint rules
pub mod deliveries; // the dispatcher's campaigns, delivery log and lease
mod events;
mod export;
mod import;
mod lists;
pub mod people; // what the subscriber pages read and change
mod runs; // which transport each campaign run used
pub mod schema;
mod subscribers;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use bounces::{Action, Applied, BounceEvent, SoftRule};
pub use events::Event;
pub use export::{ExportRow, ListMembership, Selection};
pub use import::{
    Consent, DEFAULT_BATCH_SIZE, ImportOptions, ImportReport, Left, RowError, Skipped,
};
pub use lists::{List, ListCounts};
pub use runs::RunTransport;
pub use subscribers::{Added, Profile, Recipient, Removed, Subscriber, Subscription};

/// How long a statement waits for another writer before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Store errors. Messages name no path: the caller knows which database or
/// file it opened and adds it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database is locked by another process (gave up after {0:?})")]
    Locked(Duration),
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
    #[error("schema: {0}")]
    Schema(String),
    #[error("the subscription writer has stopped (the server is shutting down)")]
    WriterStopped,
    #[error("{email:?}: {source}")]
    Address {
        email: String,
        source: crate::address::Error,
    },
    #[error("no list {0:?} (create it with `bulletin lists add`)")]
    NoList(String),
    #[error("list {0:?} already exists")]
    ListExists(String),
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
    #[error("{0} is suppressed (erased, bounced or complained); never subscribed again")]
    Suppressed(String),
    #[error("invalid status {0:?}: use one of {1}")]
    BadStatus(String, &'static str),
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
                sqlx::Error::PoolTimedOut => Error::Locked(BUSY_TIMEOUT),
                other => Error::Sql(other),
            },
        }
    }
}

impl Error {
    /// True when another process held the database too long; retrying later
    /// may succeed.
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Locked(_))
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
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens (creating it if needed) the database at `path`, in WAL mode with
    /// foreign keys on and a busy timeout, and brings the schema up to date.
    pub async fn open(path: &Path) -> Result<Store> {
        Self::open_with(path, BUSY_TIMEOUT).await
    }

    /// Opens the database at `path` only if the file exists: commands that
    /// merely read or send never create an empty database by accident.
    pub async fn open_existing(path: &Path) -> Result<Store> {
        if !path.is_file() {
            return Err(Error::Missing);
        }
        Self::connect(path, BUSY_TIMEOUT, false).await
    }

    /// [`Store::open`] with another busy timeout (tests use a short one).
    pub async fn open_with(path: &Path, busy_timeout: Duration) -> Result<Store> {
        Self::connect(path, busy_timeout, true).await
    }

    async fn connect(path: &Path, busy_timeout: Duration, create: bool) -> Result<Store> {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(Error::Sql)?
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(busy_timeout)
            .synchronous(SqliteSynchronous::Normal)
            // Erasure must not leave the address in free pages of the file.
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(busy_timeout + Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| match Error::from(e) {
                Error::Locked(_) => Error::Locked(busy_timeout),
                other => other,
            })?;
        let store = Store {
            pool,
            path: path.to_path_buf(),
        };
        schema::apply(&store.pool).await.map_err(|e| match e {
            Error::Locked(_) => Error::Locked(busy_timeout),
            other => other,
        })?;
        Ok(store)
    }

    /// The pool, for code in this module and its tests.
    /// A round trip to the database, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The pool, for the store's function modules (`deliveries`, `people`)
    /// and the benchmarks that drive them.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for running queries, copies the write-ahead log into the
    /// database file and closes every connection, so that the `.db` file
    /// alone holds everything (a copy without its `-wal` is complete).
    pub async fn close(self) {
        // Best effort: another process may hold the log; SQLite also
        // checkpoints when the last connection closes.
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }

    /// Writes a consistent copy of the database to `target` (SQLite's
    /// `VACUUM INTO`), while other connections go on reading and writing.
    /// The copy is written beside `target` and renamed over it, so `target`
    /// is never a half-written file.
    pub async fn backup(&self, target: &Path) -> Result<()> {
        let partial = {
            let mut name = target.as_os_str().to_owned();
            name.push(format!(".partial-{}", std::process::id()));
            PathBuf::from(name)
        };
        let _ = std::fs::remove_file(&partial);
        let written = sqlx::query("VACUUM INTO ?")
            .bind(partial.to_string_lossy().into_owned())
            .execute(&self.pool)
            .await;
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
        std::fs::rename(&partial, target).map_err(|e| {
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
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM suppressions WHERE hash = ?")
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
        sqlx::query(
            "INSERT INTO suppressions (hash, reason, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(crate::address::hash(&canonical))
        .bind(reason)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A value from `settings`.
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Stores a value in `settings`, replacing any previous one.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
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

/// The current time as unix seconds, for callers at the edges.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut tx = a.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO settings (key, value) VALUES ('k', 'v')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let b = Store::open_with(&path, Duration::from_millis(100))
            .await
            .unwrap();
        let err = b.set_setting("x", "y").await.unwrap_err();
        assert!(err.is_locked(), "{err:?}");
        tx.rollback().await.unwrap();
        b.set_setting("x", "y").await.unwrap();
        assert_eq!(b.setting("x").await.unwrap().as_deref(), Some("y"));
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
        sqlx::query(insert).execute(s.pool()).await.unwrap();
        let err = Error::from(sqlx::query(insert).execute(s.pool()).await.unwrap_err());
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
}

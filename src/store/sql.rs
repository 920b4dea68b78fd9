//! Statement text for both engines. Store statements are written once, with
//! SQLite's `?` and `?N` parameters; [`numbered`] turns them into `$N`, which
//! PostgreSQL requires and SQLite (through sqlx) reads the same way, so one
//! text runs on both. [`query`], [`query_as`] and [`query_scalar`] are sqlx's
//! functions of the same names over that text; every store statement starts
//! with one of them. Write transactions start with [`begin_write`] (the
//! dispatcher's rounds with [`begin_rows`]).
//!
//! The numbered text is kept for the life of the process, one copy per
//! distinct statement: the store's statements are a fixed set (dynamic ones
//! vary only by batch size), like sqlx's own statement cache.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, FromRow, Transaction};

use super::{Error, Result};

/// Which database a pool or connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// The engine of a pool, from the URL it was opened with.
    pub fn of(pool: &AnyPool) -> Engine {
        Self::of_scheme(pool.connect_options().database_url.scheme())
    }

    fn of_scheme(scheme: &str) -> Engine {
        if scheme.starts_with("postgres") {
            Engine::Postgres
        } else {
            Engine::Sqlite
        }
    }

    /// The engine of one connection.
    pub fn of_connection(conn: &AnyConnection) -> Engine {
        if conn.backend_name().eq_ignore_ascii_case("postgresql") {
            Engine::Postgres
        } else {
            Engine::Sqlite
        }
    }
}

impl Engine {
    /// The statement for this engine, when the two must differ (JSON
    /// functions, SQLite-only syntax): both texts side by side at the one
    /// call site, the SQLite one first.
    pub fn pick(self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Engine::Sqlite => sqlite,
            Engine::Postgres => postgres,
        }
    }
}

/// `text` with every `?` and `?N` parameter outside quotes written `$N`
/// (a bare `?` takes one more than the highest number so far, as in SQLite).
pub fn numbered(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut highest = 0u32;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = if digits.is_empty() {
                    highest + 1
                } else {
                    digits.parse().expect("digits")
                };
                highest = highest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            None => out.push(c),
        }
    }
    out
}

/// The numbered text of `text`, kept for the life of the process.
fn statement(text: &str) -> &'static str {
    static KEPT: LazyLock<Mutex<HashMap<Box<str>, &'static str>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = kept.get(text) {
        return found;
    }
    let numbered: &'static str = Box::leak(numbered(text).into_boxed_str());
    kept.insert(text.into(), numbered);
    numbered
}

/// `sqlx::query` over the numbered text.
pub fn query<'q>(text: &str) -> Query<'q, Any, AnyArguments<'q>> {
    sqlx::query(statement(text))
}

/// `sqlx::query_as` over the numbered text.
pub fn query_as<'q, O>(text: &str) -> QueryAs<'q, Any, O, AnyArguments<'q>>
where
    O: for<'r> FromRow<'r, AnyRow>,
{
    sqlx::query_as(statement(text))
}

/// `sqlx::query_scalar` over the numbered text.
pub fn query_scalar<'q, O>(text: &str) -> QueryScalar<'q, Any, O, AnyArguments<'q>>
where
    (O,): for<'r> FromRow<'r, AnyRow>,
{
    sqlx::query_scalar(statement(text))
}

/// `sqlx::query_with` (arguments built beforehand) over the numbered text.
#[cfg(test)]
pub fn query_with<'q>(text: &str, args: AnyArguments<'q>) -> Query<'q, Any, AnyArguments<'q>> {
    sqlx::query_with(statement(text), args)
}

/// `sqlx::query_as_with` over the numbered text.
pub fn query_as_with<'q, O>(
    text: &str,
    args: AnyArguments<'q>,
) -> QueryAs<'q, Any, O, AnyArguments<'q>>
where
    O: for<'r> FromRow<'r, AnyRow>,
{
    sqlx::query_as_with(statement(text), args)
}

/// `sqlx::query_scalar_with` over the numbered text.
pub fn query_scalar_with<'q, O>(
    text: &str,
    args: AnyArguments<'q>,
) -> QueryScalar<'q, Any, O, AnyArguments<'q>>
where
    (O,): for<'r> FromRow<'r, AnyRow>,
{
    sqlx::query_scalar_with(statement(text), args)
}

/// A yes/no column as a bool: stored 0/1 on both engines, but a comparison
/// or `EXISTS` reads as an integer on SQLite and a boolean on PostgreSQL.
pub fn flag(row: &AnyRow, column: &str) -> std::result::Result<bool, sqlx::Error> {
    use sqlx::Row as _;
    match row.try_get::<i64, _>(column) {
        Ok(value) => Ok(value != 0),
        Err(_) => row.try_get::<bool, _>(column),
    }
}

/// The key of the one advisory lock PostgreSQL write transactions take.
const WRITE_LOCK: i64 = 0x6275_6c6c_6574_696e; // "bulletin"

/// Starts a write transaction: one writer at a time, as every read-then-write
/// in the store assumes. SQLite's `BEGIN IMMEDIATE`; on PostgreSQL, `BEGIN`
/// and a transaction-level advisory lock that every write transaction takes,
/// released at commit or rollback (the dispatcher's rounds do not take it
/// unless they must: they lock their rows with `FOR UPDATE SKIP LOCKED`
/// instead, see [`begin_rows`]).
pub async fn begin_write(pool: &AnyPool) -> Result<Transaction<'static, Any>> {
    match Engine::of(pool) {
        Engine::Sqlite => Ok(pool.begin_with("BEGIN IMMEDIATE").await?),
        Engine::Postgres => {
            let mut tx = pool.begin().await?;
            lock_writes(&mut tx).await?;
            Ok(tx)
        }
    }
}

/// [`begin_write`] for a caller that can wait longer than the busy timeout
/// for the lock (on PostgreSQL; on SQLite the connection's busy timeout
/// holds): a worker queueing a campaign while another worker queues the
/// same one. Only the wait for the write lock is longer: once it is held,
/// the connection's own `lock_timeout` is back for the statements that
/// follow, and a wait for the lock that runs out is `Locked(patience)`.
pub async fn begin_write_waiting(
    pool: &AnyPool,
    patience: std::time::Duration,
) -> Result<Transaction<'static, Any>> {
    match Engine::of(pool) {
        Engine::Sqlite => Ok(pool.begin_with("BEGIN IMMEDIATE").await?),
        Engine::Postgres => {
            let mut tx = pool.begin().await?;
            let usual: String = sqlx::query_scalar("SELECT current_setting('lock_timeout')")
                .fetch_one(&mut *tx)
                .await?;
            set_lock_timeout(&mut tx, &patience.as_millis().to_string()).await?;
            lock_writes(&mut tx).await.map_err(|e| match e {
                Error::Locked(_) => Error::Locked(patience),
                other => other,
            })?;
            set_lock_timeout(&mut tx, &usual).await?;
            Ok(tx)
        }
    }
}

/// `lock_timeout` until the end of the transaction `conn` is in.
async fn set_lock_timeout(conn: &mut AnyConnection, value: &str) -> Result<()> {
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(value)
        .execute(conn)
        .await?;
    Ok(())
}

/// [`begin_write`] on a connection the caller holds.
pub async fn begin_write_on(conn: &mut AnyConnection) -> Result<Transaction<'_, Any>> {
    match Engine::of_connection(conn) {
        Engine::Sqlite => Ok(conn.begin_with("BEGIN IMMEDIATE").await?),
        Engine::Postgres => {
            let mut tx = conn.begin().await?;
            lock_writes(&mut tx).await?;
            Ok(tx)
        }
    }
}

/// A write transaction that locks only the rows it writes, on a connection
/// the caller holds: on PostgreSQL `BEGIN` without the write lock, for the
/// dispatcher's rounds, which several workers run at once on rows each
/// holds alone; on SQLite the same as [`begin_write`]. A round that turns
/// out to need the write lock (it records a hard bounce, or lowers a bounce
/// score) takes it with [`take_write_lock`] before its first write, so that
/// it never waits for the lock while holding row locks that the lock's
/// holder may wait for.
pub async fn begin_rows(conn: &mut AnyConnection) -> Result<Transaction<'_, Any>> {
    match Engine::of_connection(conn) {
        Engine::Sqlite => Ok(conn.begin_with("BEGIN IMMEDIATE").await?),
        Engine::Postgres => Ok(conn.begin().await?),
    }
}

/// The write lock, inside a [`begin_rows`] transaction before its first
/// write (on SQLite the transaction already holds it).
pub async fn take_write_lock(conn: &mut AnyConnection) -> Result<()> {
    match Engine::of_connection(conn) {
        Engine::Sqlite => Ok(()),
        Engine::Postgres => lock_writes(conn).await,
    }
}

async fn lock_writes(conn: &mut AnyConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn parameters_are_numbered_outside_quotes() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b = ? AND c = '?' AND d = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = '?' AND d = $2"
        );
        assert_eq!(
            numbered("VALUES (?2, ?1, ?, ?1) -- \"?\""),
            "VALUES ($2, $1, $3, $1) -- \"?\""
        );
        assert_eq!(numbered("SELECT $1"), "SELECT $1");
    }
}

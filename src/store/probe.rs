//! What `bulletin doctor` asks of the database, changing nothing: which
//! engine, whether its server answers (PostgreSQL), its version, and the
//! schema step it holds against the one this program brings.

use sqlx::Connection as _;

use super::location::{self, Location};
use super::sql::{Engine, query_scalar};
use super::{Error, Result, schema};

/// The database as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub engine: Engine,
    /// The server's version (PostgreSQL's `server_version`, SQLite's library).
    pub version: String,
    /// The last schema step applied (0: no bulletin schema yet).
    pub step: i64,
    /// The last step of this program's schema for the engine.
    pub latest: i64,
}

/// Connects once (no pool, no retry: an unreachable server is
/// [`Error::Unreachable`] at once) and reads the version and schema step.
/// A SQLite file that does not exist is [`Error::Missing`]; nothing is
/// created or applied.
pub async fn probe(location: &Location) -> Result<Probe> {
    sqlx::any::install_default_drivers();
    let url = match location {
        Location::File(path) if !path.is_file() => return Err(Error::Missing),
        Location::File(path) => location::sqlite_url(path, false),
        Location::Postgres(url) => url.to_string(),
    };
    let mut conn = super::connect_within(&url).await?;
    let engine = Engine::of_connection(&conn);
    let version: String = query_scalar(engine.pick(
        "SELECT sqlite_version()",
        "SELECT current_setting('server_version')",
    ))
    .fetch_one(&mut conn)
    .await?;
    let step = schema::version_in(&mut conn, engine).await?;
    conn.close().await?;
    Ok(Probe {
        engine,
        version,
        step,
        latest: schema::steps(schema::text(engine))?.len() as i64,
    })
}

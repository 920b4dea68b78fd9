//! An independent observer on a test's database: its own sqlx pool, like a
//! second process. Tests arrange or inspect raw rows through it; the store's
//! own pool never leaves `src/store/`.

use bulletin::store::Location;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

/// A pool of its own on the database (which must exist): a SQLite file
/// (foreign keys on, SQLite's default wait for a locked database) or a
/// PostgreSQL database.
pub async fn raw(location: impl Into<Location>) -> AnyPool {
    sqlx::any::install_default_drivers();
    let location = location.into();
    let url = match &location {
        Location::File(path) => format!("sqlite://{}?mode=rw", path.display()),
        Location::Postgres(url) => url.to_string(),
    };
    AnyPoolOptions::new()
        .after_connect(|conn, _| {
            Box::pin(async move {
                if conn.backend_name() == "SQLite" {
                    sqlx::Executor::execute(&mut *conn, "PRAGMA foreign_keys = ON").await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{location}: {e}"))
}

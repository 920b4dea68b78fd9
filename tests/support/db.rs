//! An independent observer on a test's database file: its own sqlx pool,
//! like a second process. Tests arrange or inspect raw rows through it; the
//! store's own pool never leaves `src/store/`.

use std::path::Path;

use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

/// A pool of its own on the database at `path` (which must exist), with
/// foreign keys on and SQLite's default wait for a locked database.
pub async fn raw(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .foreign_keys(true)
        .busy_timeout(std::time::Duration::from_secs(5));
    SqlitePool::connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

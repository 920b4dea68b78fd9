//! The two engines (issue 14): `subscribers.pg.sql` builds the tables,
//! columns and indexes `subscribers.sql` builds, step by step and when run
//! twice, and sqlx's Any driver reads its column types; the PostgreSQL test
//! databases (`support::pg`) are fresh and apart.
//! The server half runs when `BULLETIN_TEST_POSTGRES` is set and prints a
//! notice otherwise.

use std::path::Path;

use bulletin::store::schema;
use sqlx::AnyConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{Connection, Executor};

use crate::support::pg;

/// The PostgreSQL schema, as the program will embed it.
const PG_SCHEMA: &str = include_str!("../subscribers.pg.sql");

/// One table's column, or one named index: `(table, name, type)`, with
/// SQLite's declared types written as their PostgreSQL twins, and `index`
/// as the type of an index.
type Item = (String, String, String);

/// The admin URL, or `None` after printing why the test does nothing.
fn server() -> Option<String> {
    let url = pg::requested();
    if url.is_none() {
        eprintln!(
            "notice: skipping PostgreSQL test ({} is not set; `.ci/postgres` starts a server)",
            pg::VARIABLE
        );
    }
    url
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", pg::redacted(url)))
}

#[test]
fn postgres_schema_steps_are_numbered() {
    let steps = schema::steps(PG_SCHEMA).expect("subscribers.pg.sql splits into steps");
    assert!(!steps.is_empty(), "subscribers.pg.sql has no step");
    assert!(
        steps[0]
            .sql
            .contains("CREATE TABLE IF NOT EXISTS subscribers")
    );
    for step in &steps {
        assert!(!step.title.is_empty(), "step {} has no title", step.number);
    }
}

#[tokio::test]
async fn fresh_databases_are_distinct_and_empty() {
    let Some(_) = server() else { return };
    let first = pg::fresh_database().await;
    let second = pg::fresh_database().await;
    assert_ne!(first, second);

    let mut one = connect(&first).await;
    let mut two = connect(&second).await;
    let name = |url: &str| url.rsplit('/').next().unwrap().to_string();
    let current: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut one)
        .await
        .unwrap();
    assert_eq!(current, name(&first));
    assert!(pg_items(&mut one).await.is_empty(), "{first} is not empty");
    assert!(pg_items(&mut two).await.is_empty(), "{second} is not empty");

    // Apart for real: a table made in one is not in the other.
    one.execute("CREATE TABLE only_here (id BIGINT)")
        .await
        .unwrap();
    assert_eq!(pg_items(&mut one).await.len(), 1);
    assert!(pg_items(&mut two).await.is_empty());
}

#[tokio::test]
async fn db_setting_names_a_database_of_the_engine_under_test() {
    let dir = tempfile::tempdir().unwrap();
    let setting = pg::db_setting(dir.path()).await;
    match pg::engine() {
        pg::Engine::Sqlite => assert_eq!(Path::new(&setting), dir.path().join("b.db")),
        pg::Engine::Postgres => {
            let shown = pg::redacted(&setting);
            assert!(setting.starts_with("postgres://"), "{shown}");
            let mut conn = connect(&setting).await;
            assert!(pg_items(&mut conn).await.is_empty(), "{shown} is not empty");
            assert_ne!(setting, pg::db_setting(dir.path()).await);
        }
    }
}

#[tokio::test]
async fn postgres_schema_has_the_sqlite_tables_columns_and_indexes() {
    let Some(_) = server() else { return };
    let url = pg::fresh_database().await;
    let mut conn = connect(&url).await;
    // Twice: every statement must be re-runnable.
    apply_pg_schema(&mut conn).await;
    apply_pg_schema(&mut conn).await;
    let postgres = pg_items(&mut conn).await;

    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_items(&dir.path().join("schema.db")).await;

    let tables = |items: &[Item]| {
        let mut names: Vec<String> = items.iter().map(|(t, _, _)| t.clone()).collect();
        names.dedup();
        names
    };
    assert_eq!(tables(&postgres), tables(&sqlite), "table lists differ");
    let only_in = |these: &[Item], those: &[Item]| -> Vec<Item> {
        these
            .iter()
            .filter(|i| !those.contains(i))
            .cloned()
            .collect()
    };
    assert_eq!(
        (only_in(&sqlite, &postgres), only_in(&postgres, &sqlite)),
        (vec![], vec![]),
        "columns or indexes differ: (only in subscribers.sql, only in subscribers.pg.sql)"
    );
}

#[tokio::test]
async fn any_driver_reads_every_column_type_of_the_postgres_schema() {
    let Some(_) = server() else { return };
    let url = pg::fresh_database().await;
    apply_pg_schema(&mut connect(&url).await).await;
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(&url).await.unwrap();
    // As the program's SQL: `$n` placeholders, 0/1 integers for booleans.
    sqlx::query("INSERT INTO lists (slug, name, public, created_at) VALUES ($1, $2, 1, $3)")
        .bind("news")
        .bind("News")
        .bind(1_700_000_000_i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let (id, slug, public, created_at): (i64, String, i64, i64) =
        sqlx::query_as("SELECT id, slug, public, created_at FROM lists WHERE public = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        (slug.as_str(), public, created_at),
        ("news", 1, 1_700_000_000)
    );
    sqlx::query(
        "INSERT INTO subscribers (email, created_at, updated_at) VALUES ('a@example.org', 1, 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO bounce_scores (subscriber_id, score, computed_at, half_life)
         SELECT id, $1, 2, 3 FROM subscribers",
    )
    .bind(1.5_f64)
    .execute(&mut conn)
    .await
    .unwrap();
    let (score, email_hash): (f64, Option<String>) = sqlx::query_as(
        "SELECT b.score, s.email_hash FROM bounce_scores b JOIN subscribers s ON s.id = b.subscriber_id",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((score, email_hash), (1.5, None));
    // An id given explicitly (as `db copy` will give them) is kept.
    let copied: i64 = sqlx::query_scalar(
        "INSERT INTO lists (id, slug, name, created_at) VALUES ($1, 'copied', 'Copied', 1) RETURNING id",
    )
    .bind(id + 41)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(copied, id + 41);
}

/// Applies every step of `subscribers.pg.sql`, each in a transaction, as
/// the program will.
async fn apply_pg_schema(conn: &mut PgConnection) {
    for step in schema::steps(PG_SCHEMA).unwrap() {
        let mut tx = conn.begin().await.unwrap();
        sqlx::raw_sql(&step.sql)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "subscribers.pg.sql step {} ({}): {e}",
                    step.number, step.title
                )
            });
        tx.commit().await.unwrap();
    }
}

/// Every column and named index of the public schema, sorted. Indexes that
/// back a primary key or UNIQUE constraint are left out: SQLite names
/// those itself.
async fn pg_items(conn: &mut PgConnection) -> Vec<Item> {
    let mut items: Vec<Item> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text
         FROM information_schema.columns WHERE table_schema = 'public'
         UNION ALL
         SELECT t.relname::text, c.relname::text, 'index'
         FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_class t ON t.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE n.nspname = 'public'
           AND NOT EXISTS (SELECT 1 FROM pg_constraint
                           WHERE conindid = i.indexrelid AND contype IN ('p', 'u'))",
    )
    .fetch_all(conn)
    .await
    .unwrap();
    items.sort();
    items
}

/// `subscribers.sql` applied step by step to a new SQLite file at `path`,
/// and its columns and named indexes as [`pg_items`] lists them.
async fn sqlite_items(path: &Path) -> Vec<Item> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    for step in schema::steps(schema::SQL).unwrap() {
        sqlx::raw_sql(&step.sql).execute(&pool).await.unwrap();
    }
    let rows: Vec<Item> = sqlx::query_as(
        "SELECT m.name, p.name, p.type
         FROM sqlite_master m JOIN pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
         UNION ALL
         SELECT tbl_name, name, 'index' FROM sqlite_master
         WHERE type = 'index' AND sql IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut items: Vec<Item> = rows
        .into_iter()
        .map(|(table, name, ty)| {
            let ty = match ty.as_str() {
                "INTEGER" => "bigint".to_string(),
                "TEXT" => "text".to_string(),
                "REAL" => "double precision".to_string(),
                other => other.to_string(),
            };
            (table, name, ty)
        })
        .collect();
    items.sort();
    items
}

/// PostgreSQL's ways of refusing a write come back as the store's own
/// errors, each saying which it was, and each worth trying again later: a
/// deadlock (one side is undone), a lock not granted within `lock_timeout`.
#[tokio::test]
async fn a_deadlock_and_a_lock_timeout_are_told_apart_and_both_transient() {
    let Some(_) = server() else { return };
    let url = pg::fresh_database().await;
    let (mut a, mut b) = (connect(&url).await, connect(&url).await);
    a.execute("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    a.execute("BEGIN; UPDATE t SET id = id WHERE id = 1")
        .await
        .unwrap();
    b.execute("BEGIN; UPDATE t SET id = id WHERE id = 2")
        .await
        .unwrap();
    // Each now waits for the other's row: PostgreSQL undoes one of them.
    let (left, right) = tokio::join!(
        a.execute("UPDATE t SET id = id WHERE id = 2"),
        b.execute("UPDATE t SET id = id WHERE id = 1")
    );
    let undone = left.err().or(right.err()).expect("one side is undone");
    let err = bulletin::store::Error::from(undone);
    assert!(
        matches!(err, bulletin::store::Error::Collided("a deadlock")),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("deadlock"), "{err}");
    a.execute("ROLLBACK").await.unwrap();
    b.execute("ROLLBACK").await.unwrap();

    a.execute("BEGIN; UPDATE t SET id = id WHERE id = 1")
        .await
        .unwrap();
    let waited = b
        .execute("SET lock_timeout = 100; UPDATE t SET id = id WHERE id = 1")
        .await
        .unwrap_err();
    let err = bulletin::store::Error::from(waited);
    assert!(matches!(err, bulletin::store::Error::Locked(_)), "{err:?}");
    assert!(err.is_transient());
    a.execute("ROLLBACK").await.unwrap();
}

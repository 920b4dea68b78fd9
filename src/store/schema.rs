//! The schema: `subscribers.sql` (SQLite) and `subscribers.pg.sql`
//! (PostgreSQL), embedded, split into their numbered steps and applied above
//! the version the database records (`PRAGMA user_version` on SQLite, the
//! `schema_steps` table on PostgreSQL; the convention is explained at the top
//! of each file).

use sqlx::{AnyConnection, AnyPool};

use super::sql::{Engine, begin_write, query, query_scalar};
use super::{Error, Result};

/// The SQLite schema, as compiled into the binary.
pub const SQL: &str = include_str!("../../subscribers.sql");

/// The PostgreSQL schema: its own numbered steps, kept next to `SQL`.
pub const POSTGRES_SQL: &str = include_str!("../../subscribers.pg.sql");

/// The schema text of an engine.
pub fn text(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => SQL,
        Engine::Postgres => POSTGRES_SQL,
    }
}

/// One numbered step of the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub number: i64,
    pub title: String,
    pub sql: String,
}

/// Splits schema text into its steps: a line `-- step N: title` starts step N.
/// Text before the first step is the header and is not run.
pub fn steps(text: &str) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("-- step ") {
            let (num, title) = rest.split_once(':').unwrap_or((rest, ""));
            let number: i64 = num
                .trim()
                .parse()
                .map_err(|_| Error::Schema(format!("bad step marker {line:?}")))?;
            let expected = steps.len() as i64 + 1;
            if number != expected {
                return Err(Error::Schema(format!(
                    "step {number} found where step {expected} was expected"
                )));
            }
            steps.push(Step {
                number,
                title: title.trim().to_string(),
                sql: String::new(),
            });
        } else if let Some(step) = steps.last_mut() {
            step.sql.push_str(line);
            step.sql.push('\n');
        }
    }
    Ok(steps)
}

/// The number of the last step in the embedded SQLite schema.
pub fn latest() -> i64 {
    steps(SQL).map(|s| s.len() as i64).unwrap_or(0)
}

/// Applies every step above the database's version. Each step runs in a
/// write transaction ([`begin_write`]) that re-reads the version first, so
/// two processes opening a new database at once do not both apply it.
pub(super) async fn apply(pool: &AnyPool) -> Result<i64> {
    let engine = Engine::of(pool);
    let steps = steps(text(engine))?;
    if engine == Engine::Postgres {
        sqlx::raw_sql(STEPS_TABLE).execute(pool).await?;
    }
    let mut version = version(pool).await?;
    if version > steps.len() as i64 {
        return Err(Error::Schema(format!(
            "database schema is at step {version}, newer than this program (step {}); upgrade bulletin",
            steps.len()
        )));
    }
    let start = version;
    for step in steps.iter().filter(|s| s.number > start) {
        let mut tx = begin_write(pool).await?;
        if version_in(&mut tx, engine).await? >= step.number {
            tx.rollback().await?;
            continue;
        }
        match engine {
            Engine::Sqlite => {
                let sql = without_columns_present(&mut tx, &step.sql).await?;
                sqlx::raw_sql(&sql).execute(&mut *tx).await?;
                // PRAGMA takes no bound parameters; the number comes from our file.
                sqlx::raw_sql(&format!("PRAGMA user_version = {}", step.number))
                    .execute(&mut *tx)
                    .await?;
            }
            Engine::Postgres => {
                sqlx::raw_sql(&step.sql).execute(&mut *tx).await?;
                query("INSERT INTO schema_steps (step, title, applied_at) VALUES (?, ?, ?)")
                    .bind(step.number)
                    .bind(&step.title)
                    .bind(super::now())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        version = step.number;
    }
    Ok(version)
}

/// PostgreSQL's record of the steps applied (SQLite keeps the number in
/// `PRAGMA user_version`).
const STEPS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_steps (\
     step BIGINT PRIMARY KEY, title TEXT NOT NULL, applied_at BIGINT NOT NULL)";

/// The last schema step applied (0 for a database bulletin never opened).
pub(super) async fn version(pool: &AnyPool) -> Result<i64> {
    let mut conn = pool.acquire().await?;
    version_in(&mut conn, Engine::of(pool)).await
}

pub(super) async fn version_in(conn: &mut AnyConnection, engine: Engine) -> Result<i64> {
    match engine {
        Engine::Sqlite => Ok(query_scalar("PRAGMA user_version").fetch_one(conn).await?),
        Engine::Postgres => {
            let recorded: bool = query_scalar("SELECT to_regclass('schema_steps') IS NOT NULL")
                .fetch_one(&mut *conn)
                .await?;
            if !recorded {
                return Ok(0);
            }
            Ok(
                query_scalar("SELECT coalesce(max(step), 0) FROM schema_steps")
                    .fetch_one(conn)
                    .await?,
            )
        }
    }
}

/// The step's SQL without its `ALTER TABLE T ADD COLUMN C ...;` lines whose
/// column exists already. SQLite has no `ADD COLUMN IF NOT EXISTS`; this is
/// it, so a step that adds a column is harmless when run twice too. Such a
/// statement must be on one line.
async fn without_columns_present(conn: &mut AnyConnection, sql: &str) -> Result<String> {
    let mut kept = String::with_capacity(sql.len());
    for line in sql.lines() {
        if let Some((table, column)) = added_column(line) {
            let present: i64 = query_scalar(
                "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2 COLLATE NOCASE",
            )
            .bind(table)
            .bind(column)
            .fetch_one(&mut *conn)
            .await?;
            if present > 0 {
                continue;
            }
        }
        kept.push_str(line);
        kept.push('\n');
    }
    Ok(kept)
}

/// `(table, column)` of a line `ALTER TABLE table ADD COLUMN column ...`.
fn added_column(line: &str) -> Option<(&str, &str)> {
    let mut words = line.split_whitespace();
    let mut next_is = |w: &str| words.next().is_some_and(|x| x.eq_ignore_ascii_case(w));
    if !(next_is("ALTER") && next_is("TABLE")) {
        return None;
    }
    let table = words.next()?;
    let mut next_is = |w: &str| words.next().is_some_and(|x| x.eq_ignore_ascii_case(w));
    if !(next_is("ADD") && next_is("COLUMN")) {
        return None;
    }
    Some((table, words.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schema_splits() {
        let steps = steps(SQL).unwrap();
        assert!(!steps.is_empty());
        assert_eq!(steps[0].number, 1);
        assert!(
            steps[0]
                .sql
                .contains("CREATE TABLE IF NOT EXISTS subscribers")
        );
    }

    #[test]
    fn step_markers_must_be_consecutive() {
        let err = steps("-- step 1: a\nSELECT 1;\n-- step 3: c\n").unwrap_err();
        assert!(err.to_string().contains("step 3"), "{err}");
        let ok = steps("header\n-- step 1: a\nA;\n-- step 2: b\nB;\n").unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].title, "b");
        assert_eq!(ok[1].sql, "B;\n");
    }

    #[test]
    fn added_columns_are_recognised() {
        assert_eq!(
            added_column("ALTER TABLE deliveries ADD COLUMN list_id INTEGER;"),
            Some(("deliveries", "list_id"))
        );
        assert_eq!(added_column("alter table t add column c"), Some(("t", "c")));
        assert_eq!(added_column("ALTER TABLE t RENAME TO u;"), None);
        assert_eq!(added_column("-- ALTER TABLE t ADD COLUMN c"), None);
    }

    #[tokio::test]
    async fn applying_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = crate::store::Store::open(&path).await.unwrap();
        assert_eq!(version(store.pool()).await.unwrap(), latest());
        let tables = |pool: AnyPool| async move {
            query_scalar::<String>(
                "SELECT group_concat(type || ':' || name || ':' || coalesce(sql, ''), '\n') \
                 FROM (SELECT * FROM sqlite_schema ORDER BY type, name)",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        let before = tables(store.pool().clone()).await;
        assert_eq!(apply(store.pool()).await.unwrap(), latest());
        // Even forcing every step to run again changes nothing.
        sqlx::raw_sql("PRAGMA user_version = 0")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(apply(store.pool()).await.unwrap(), latest());
        assert_eq!(tables(store.pool().clone()).await, before);
        store.close().await;
        let again = crate::store::Store::open(&path).await.unwrap();
        assert_eq!(version(again.pool()).await.unwrap(), latest());
    }
}

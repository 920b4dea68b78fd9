//! `db copy`: a SQLite database copied into an empty PostgreSQL one (issue
//! 14, moving over). The tables come from the SQLite schema itself
//! (`sqlite_schema`, `pragma_table_info`), never from a list written here,
//! so a table added to `subscribers.sql` is copied too, or the copy fails
//! naming it when `subscribers.pg.sql` lacks its twin.
//!
//! Everything is read in one SQLite read transaction (one snapshot, while
//! other processes go on writing the file) and written in one PostgreSQL
//! write transaction, parents before the tables that refer to them, in
//! multi-row `INSERT`s with the same ids; the row counts of both sides are
//! compared and the identity sequences moved past the highest id before the
//! commit. Any failure rolls the whole copy back: the target keeps its
//! schema and no row. Inserting is all the copy does to `events`, which its
//! triggers allow (they refuse DELETE and UPDATE).

use futures_util::TryStreamExt as _;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, ConnectOptions as _, Connection as _, Row as _};

use super::Store;
use super::sql::{Engine, begin_write_on, query, query_as, query_scalar};

/// One table copied: its rows on each side after the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedTable {
    pub name: String,
    pub sqlite_rows: i64,
    pub postgres_rows: i64,
}

/// Why a copy did not happen. Whatever the error, nothing was committed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("db copy copies a SQLite database into a PostgreSQL one, and only that way")]
    Direction,
    #[error(
        "the target already holds bulletin rows (in {}); db copy fills an empty database only: create a new one (createdb) and copy into that",
        .0.join(", ")
    )]
    TargetNotEmpty(Vec<String>),
    #[error(
        "table {0} of the SQLite database has no twin in the PostgreSQL schema (subscribers.pg.sql); this bulletin cannot copy it"
    )]
    MissingTable(String),
    #[error(
        "column {table}.{column} of the SQLite database has no twin in the PostgreSQL schema (subscribers.pg.sql); this bulletin cannot copy it"
    )]
    MissingColumn { table: String, column: String },
    #[error("column {table}.{column} is {kind} on PostgreSQL, a type db copy does not write")]
    UnknownType {
        table: String,
        column: String,
        kind: String,
    },
    #[error("a value of {table}.{column} does not fit its PostgreSQL column: {source}")]
    Value {
        table: String,
        column: String,
        source: sqlx::Error,
    },
    #[error("the foreign keys of {} refer to each other in a circle; no order copies them", .0.join(", "))]
    Circle(Vec<String>),
    #[error("{table}: {sqlite} rows in SQLite but {postgres} in PostgreSQL after the copy")]
    CountMismatch {
        table: String,
        sqlite: i64,
        postgres: i64,
    },
    #[error(transparent)]
    Store(#[from] super::Error),
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        Error::Store(err.into())
    }
}

/// PostgreSQL takes at most 65,535 bound parameters per statement.
const MAX_PARAMETERS: usize = 30_000;
/// Rows per `INSERT`, at most.
const MAX_BATCH_ROWS: usize = 1_000;

/// How a column's SQLite value is read: by the type of its PostgreSQL twin.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Integer,
    Real,
    Text,
    Bytes,
}

impl Kind {
    fn of(data_type: &str) -> Option<Kind> {
        match data_type {
            "bigint" | "integer" | "smallint" => Some(Kind::Integer),
            "double precision" | "real" => Some(Kind::Real),
            "text" | "character varying" => Some(Kind::Text),
            "bytea" => Some(Kind::Bytes),
            _ => None,
        }
    }
}

/// A table to copy: its columns (SQLite's, in order) and its row count in
/// the snapshot.
#[derive(Debug)]
struct Table {
    name: String,
    columns: Vec<(String, Kind)>,
    rows: i64,
}

impl Table {
    fn column_list(&self) -> String {
        let quoted: Vec<String> = self
            .columns
            .iter()
            .map(|(c, _)| format!("\"{c}\""))
            .collect();
        quoted.join(", ")
    }
}

impl Store {
    /// Copies this SQLite database into `target`, a PostgreSQL database
    /// with the bulletin schema and no bulletin rows, and returns the row
    /// counts of both sides. `progress(table, rows copied, rows)` is called
    /// after each batch.
    pub async fn copy_to(
        &self,
        target: &Store,
        mut progress: impl FnMut(&str, u64, u64),
    ) -> Result<Vec<CopiedTable>, Error> {
        if self.engine() != Engine::Sqlite || target.engine() != Engine::Postgres {
            return Err(Error::Direction);
        }
        // Connections of their own, without sqlx's slow-statement warnings:
        // reading a big table is one statement that takes its time.
        let mut reader = quiet_connection(self).await?;
        let mut writer = quiet_connection(target).await?;
        // SQLite's BEGIN is deferred: the snapshot starts at the first read
        // and holds for every table below.
        let mut source = reader.begin().await?;
        let mut sink = begin_write_on(&mut writer).await?;
        let tables = plan(&mut source, &mut sink).await?;
        refuse_rows(&mut sink, &tables).await?;
        for table in &tables {
            copy_table(&mut source, &mut sink, table, &mut progress).await?;
        }
        let copied = compare_counts(&mut sink, &tables).await?;
        move_sequences(&mut sink).await?;
        sink.commit().await?;
        source.rollback().await?;
        writer.close().await?;
        reader.close().await?;
        Ok(copied)
    }
}

/// A new connection to the store's database that logs no statement.
async fn quiet_connection(store: &Store) -> Result<AnyConnection, Error> {
    let options = (*store.pool.connect_options())
        .clone()
        .disable_statement_logging();
    Ok(AnyConnection::connect_with(&options).await?)
}

/// The SQLite tables with their PostgreSQL column types, parents first.
async fn plan(source: &mut AnyConnection, sink: &mut AnyConnection) -> Result<Vec<Table>, Error> {
    let names: Vec<String> = query_scalar(
        "SELECT name FROM sqlite_schema \
         WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name",
    )
    .fetch_all(&mut *source)
    .await?;
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let columns = columns(source, sink, &name).await?;
        let rows = query_scalar(&format!("SELECT count(*) FROM \"{name}\""))
            .fetch_one(&mut *source)
            .await?;
        tables.push(Table {
            name,
            columns,
            rows,
        });
    }
    let references = foreign_keys(sink).await?;
    parents_first(tables, &references)
}

/// The SQLite columns of `table`, each with the kind of its PostgreSQL
/// twin; an error names the first table or column without one.
async fn columns(
    source: &mut AnyConnection,
    sink: &mut AnyConnection,
    table: &str,
) -> Result<Vec<(String, Kind)>, Error> {
    let postgres: Vec<(String, String)> = query_as(
        "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = ?",
    )
    .bind(table)
    .fetch_all(&mut *sink)
    .await?;
    if postgres.is_empty() {
        return Err(Error::MissingTable(table.to_string()));
    }
    let sqlite: Vec<String> = query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
        .bind(table)
        .fetch_all(&mut *source)
        .await?;
    let mut columns = Vec::with_capacity(sqlite.len());
    for column in sqlite {
        let Some((_, data_type)) = postgres.iter().find(|(c, _)| *c == column) else {
            let table = table.to_string();
            return Err(Error::MissingColumn { table, column });
        };
        let Some(kind) = Kind::of(data_type) else {
            let (table, kind) = (table.to_string(), data_type.clone());
            return Err(Error::UnknownType {
                table,
                column,
                kind,
            });
        };
        columns.push((column, kind));
    }
    Ok(columns)
}

/// (table, the table it refers to) for every foreign key on PostgreSQL,
/// the side that checks them as rows arrive.
async fn foreign_keys(sink: &mut AnyConnection) -> Result<Vec<(String, String)>, Error> {
    Ok(query_as(
        "SELECT CAST(c.relname AS TEXT), CAST(p.relname AS TEXT) \
         FROM pg_constraint k \
         JOIN pg_class c ON c.oid = k.conrelid \
         JOIN pg_class p ON p.oid = k.confrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE k.contype = 'f' AND n.nspname = current_schema()",
    )
    .fetch_all(sink)
    .await?)
}

/// `tables` ordered so that each comes after every table it refers to
/// (otherwise in name order).
fn parents_first(
    mut left: Vec<Table>,
    references: &[(String, String)],
) -> Result<Vec<Table>, Error> {
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let waits = |table: &Table, left: &[Table]| {
            references.iter().any(|(child, parent)| {
                *child == table.name
                    && *parent != table.name
                    && left.iter().any(|t| t.name == *parent)
            })
        };
        let Some(ready) = left.iter().position(|t| !waits(t, &left)) else {
            return Err(Error::Circle(left.into_iter().map(|t| t.name).collect()));
        };
        ordered.push(left.remove(ready));
    }
    Ok(ordered)
}

/// Refuses a target where any table to copy has a row.
async fn refuse_rows(sink: &mut AnyConnection, tables: &[Table]) -> Result<(), Error> {
    let mut filled = Vec::new();
    for table in tables {
        let rows: i64 = query_scalar(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM \"{}\" LIMIT 1) AS one",
            table.name
        ))
        .fetch_one(&mut *sink)
        .await?;
        if rows > 0 {
            filled.push(table.name.clone());
        }
    }
    if filled.is_empty() {
        Ok(())
    } else {
        Err(Error::TargetNotEmpty(filled))
    }
}

/// Streams one table from the snapshot into multi-row `INSERT`s.
async fn copy_table(
    source: &mut AnyConnection,
    sink: &mut AnyConnection,
    table: &Table,
    progress: &mut impl FnMut(&str, u64, u64),
) -> Result<(), Error> {
    let per_batch = (MAX_PARAMETERS / table.columns.len()).clamp(1, MAX_BATCH_ROWS);
    let select = format!("SELECT {} FROM \"{}\"", table.column_list(), table.name);
    let mut rows = query(&select).fetch(source);
    let mut batch = Vec::with_capacity(per_batch);
    let mut copied = 0u64;
    let total = table.rows.max(0) as u64;
    loop {
        let row = rows.try_next().await?;
        let last = row.is_none();
        batch.extend(row);
        if batch.len() == per_batch || (last && !batch.is_empty()) {
            insert(sink, table, &batch).await?;
            copied += batch.len() as u64;
            batch.clear();
            progress(&table.name, copied, total);
        }
        if last {
            return Ok(());
        }
    }
}

/// One `INSERT ... VALUES (...), (...)` of `rows`, each value read as the
/// type of its PostgreSQL column.
async fn insert(sink: &mut AnyConnection, table: &Table, rows: &[AnyRow]) -> Result<(), Error> {
    let one = format!("({})", vec!["?"; table.columns.len()].join(", "));
    let text = format!(
        "INSERT INTO \"{}\" ({}) VALUES {}",
        table.name,
        table.column_list(),
        vec![one; rows.len()].join(", ")
    );
    let mut statement = query(&text);
    for row in rows {
        for (i, (column, kind)) in table.columns.iter().enumerate() {
            let misfit = |source| Error::Value {
                table: table.name.clone(),
                column: column.clone(),
                source,
            };
            statement = match kind {
                Kind::Integer => statement.bind(row.try_get::<Option<i64>, _>(i).map_err(misfit)?),
                Kind::Real => statement.bind(real(row, i).map_err(misfit)?),
                Kind::Text => statement.bind(row.try_get::<Option<String>, _>(i).map_err(misfit)?),
                Kind::Bytes => {
                    statement.bind(row.try_get::<Option<Vec<u8>>, _>(i).map_err(misfit)?)
                }
            };
        }
    }
    statement.execute(sink).await?;
    Ok(())
}

/// A REAL value, which SQLite may hand over as an integer (`1` for `1.0`).
fn real(row: &AnyRow, i: usize) -> Result<Option<f64>, sqlx::Error> {
    row.try_get::<Option<f64>, _>(i).or_else(|err| {
        row.try_get::<Option<i64>, _>(i)
            .map(|n| n.map(|n| n as f64))
            .map_err(|_| err)
    })
}

/// The row count of every table on both sides: the snapshot's and the
/// target's, inside the copy's transaction.
async fn compare_counts(
    sink: &mut AnyConnection,
    tables: &[Table],
) -> Result<Vec<CopiedTable>, Error> {
    let mut copied = Vec::with_capacity(tables.len());
    for table in tables {
        let postgres: i64 = query_scalar(&format!("SELECT count(*) FROM \"{}\"", table.name))
            .fetch_one(&mut *sink)
            .await?;
        if postgres != table.rows {
            return Err(Error::CountMismatch {
                table: table.name.clone(),
                sqlite: table.rows,
                postgres,
            });
        }
        copied.push(CopiedTable {
            name: table.name.clone(),
            sqlite_rows: table.rows,
            postgres_rows: postgres,
        });
    }
    Ok(copied)
}

/// Moves every identity sequence past the highest id copied, so the next
/// row inserted gets a fresh id (ids are copied as they are, which leaves
/// the sequences where they were).
async fn move_sequences(sink: &mut AnyConnection) -> Result<(), Error> {
    let identities: Vec<(String, String)> = query_as(
        "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT) \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND is_identity = 'YES'",
    )
    .fetch_all(&mut *sink)
    .await?;
    for (table, column) in identities {
        query(&format!(
            "SELECT setval(pg_get_serial_sequence(?1, ?2), coalesce(max(\"{column}\"), 1), \
             max(\"{column}\") IS NOT NULL) FROM \"{table}\""
        ))
        .bind(&table)
        .bind(&column)
        .execute(&mut *sink)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> Table {
        Table {
            name: name.into(),
            columns: vec![("id".into(), Kind::Integer)],
            rows: 0,
        }
    }

    #[test]
    fn parents_come_before_the_tables_that_refer_to_them() {
        let refs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(c, p)| (c.to_string(), p.to_string()))
                .collect()
        };
        let tables = vec![
            table("deliveries"),
            table("events"),
            table("lists"),
            table("subscribers"),
        ];
        let ordered = parents_first(
            tables,
            &refs(&[
                ("deliveries", "subscribers"),
                ("events", "deliveries"),
                ("events", "events"),
                ("subscribers", "lists"),
                ("elsewhere", "deliveries"),
            ]),
        )
        .unwrap();
        let names: Vec<&str> = ordered.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["lists", "subscribers", "deliveries", "events"]);
        let err = parents_first(
            vec![table("a"), table("b")],
            &refs(&[("a", "b"), ("b", "a")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("a, b"), "{err}");
    }
}

//! Import benchmark (not a test): generates ROWS subscribers as CSV in a
//! temporary directory, imports them through the library, imports the same
//! file again (which must change nothing), then exports and counts, printing
//! rows per second and the peak memory of each phase (VmHWM, reset before
//! each with /proc/self/clear_refs).
//! Issue 3's target: at 100,000 rows, import at 50,000 rows/s or more with
//! peak memory under 100 MB; at 1,000,000, memory stays flat.
//!
//! The generated addresses (`person{i}@example{i % 97}.org`) sort close to
//! file order, so each batch touches few pages of the email index. Addresses
//! in random order cost more: on the development machine, about 50,000 to
//! 60,000 rows/s at 100,000 rows and about 28,000 rows/s at 1,000,000.
//!
//! Then the same rows as a Mailchimp audience export (issue 12: every
//! Mailchimp column, name from First + Last, opt-in and confirmation times
//! and IPs, so a consent record per row) import into a fresh database, to
//! compare with the plain CSV rate (target: at least 80 % of it, peak memory
//! under 100 MB). Like with like: the same addresses, the same name and the
//! same two attributes (`City`, `Plan` as merge fields; Mailchimp's own
//! `TIMEZONE`, `CC`, `REGION` and `TAGS` left empty, as for members without
//! geolocation or tags), so what the ratio measures is the Mailchimp
//! columns and the consent records.
//!
//! cargo run --release --example import_bench -- [ROWS]   (default 100000)
//!
//! On PostgreSQL (issue 14): `--db postgres://USER:PASSWORD@HOST:PORT/DB`
//! (or `BULLETIN_BENCH_DB`) names a server and a database to connect to
//! there; the bench creates its two databases beside it (`bench_<pid>_csv`,
//! `bench_<pid>_mailchimp`, so the role needs CREATEDB) and drops them at the
//! end. Measure against a server configured as in production:
//!
//!   URL=$(.ci/postgres --durable)
//!   cargo run --release --example import_bench -- 1000000 --db "$URL"
//!
//! Peak memory is this process's (the client's), as on SQLite; the server's
//! own memory is not counted. Figures: README, Benchmarks.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bulletin::store::{ImportOptions, Location, Selection, Store};
use sqlx::Connection as _;

/// Where the bench's databases live: files in its temporary directory, or
/// fresh databases on a PostgreSQL server.
enum Target {
    Sqlite(PathBuf),
    Postgres { server: url::Url, made: Vec<String> },
}

impl Target {
    /// The database called `name` (a file name on SQLite), created empty.
    async fn database(&mut self, name: &str) -> anyhow::Result<Location> {
        match self {
            Target::Sqlite(dir) => Ok(Location::File(dir.join(name))),
            Target::Postgres { server, made } => {
                let db = format!(
                    "bench_{}_{}",
                    std::process::id(),
                    name.trim_end_matches(".db")
                );
                let mut conn = sqlx::PgConnection::connect(server.as_str()).await?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db}"))
                    .execute(&mut conn)
                    .await?;
                sqlx::raw_sql(&format!("CREATE DATABASE {db}"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                made.push(db.clone());
                let mut url = server.clone();
                url.set_path(&format!("/{db}"));
                Ok(Location::Postgres(url))
            }
        }
    }

    /// Drops the databases made on a PostgreSQL server.
    async fn clean_up(&self) -> anyhow::Result<()> {
        if let Target::Postgres { server, made } = self {
            let mut conn = sqlx::PgConnection::connect(server.as_str()).await?;
            for db in made {
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db}"))
                    .execute(&mut conn)
                    .await?;
            }
            conn.close().await?;
        }
        Ok(())
    }
}

/// ROWS (the first argument that is not `--db`) and the `--db` value, or
/// `BULLETIN_BENCH_DB`.
fn arguments() -> anyhow::Result<(u64, Option<String>)> {
    let mut rows = None;
    let mut db = std::env::var("BULLETIN_BENCH_DB")
        .ok()
        .filter(|v| !v.is_empty());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--db" => {
                db = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--db: give a postgres:// URL"))?,
                )
            }
            n => rows = Some(n.parse().map_err(|e| anyhow::anyhow!("ROWS {n:?}: {e}"))?),
        }
    }
    Ok((rows.unwrap_or(100_000), db))
}

fn target(db: Option<String>, dir: &Path) -> anyhow::Result<Target> {
    let Some(db) = db else {
        return Ok(Target::Sqlite(dir.to_path_buf()));
    };
    match Location::parse(
        Path::new(&db),
        std::env::var("BULLETIN_DB_PASSWORD").ok().as_deref(),
    ) {
        Ok(Location::Postgres(server)) => Ok(Target::Postgres {
            server,
            made: Vec::new(),
        }),
        Ok(Location::File(_)) => anyhow::bail!(
            "--db {db}: give a postgres:// URL (without --db the bench uses SQLite files)"
        ),
        Err(e) => anyhow::bail!("--db: {e}"),
    }
}

/// Resets VmHWM to the current size, so each phase shows its own peak.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system, every thread) this process has used: on a
/// shared machine a steadier measure of the work than the wall clock.
fn cpu_secs() -> f64 {
    // Fields 14 and 15 of /proc/self/stat (after the parenthesised name),
    // in clock ticks of (on Linux, always) 1/100 s.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let mut fields = s.rsplit_once(')')?.1.split_whitespace().skip(11);
            let user: f64 = fields.next()?.parse().ok()?;
            let system: f64 = fields.next()?.parse().ok()?;
            Some((user + system) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (rows, db) = arguments()?;
    let dir = tempfile::tempdir()?;
    let mut target = target(db, dir.path())?;
    let csv_path = dir.path().join("people.csv");
    let mut out = BufWriter::new(std::fs::File::create(&csv_path)?);
    writeln!(out, "email,name,city,plan")?;
    for i in 0..rows {
        writeln!(
            out,
            "person{i}@example{}.org,Person {i},City {},{}",
            i % 97,
            i % 1000,
            if i % 3 == 0 { "pro" } else { "free" }
        )?;
    }
    out.flush()?;
    drop(out);
    let size = std::fs::metadata(&csv_path)?.len();
    let location = target.database("csv.db").await?;
    println!(
        "rows: {rows}, csv: {:.1} MB, database: {location}",
        size as f64 / 1e6
    );

    let store = Store::open(&location).await?;
    reset_peak();
    let (start, cpu) = (Instant::now(), cpu_secs());
    let (report, errors) = store
        .import(
            std::fs::File::open(&csv_path)?,
            "news",
            &ImportOptions::new(1_750_000_000),
            |_| {},
        )
        .await?;
    let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_secs() - cpu);
    assert!(errors.is_empty() && report.imported == rows, "{report:?}");
    let csv = Rate::new(rows, secs, cpu);
    println!("import:  {csv}, peak RSS {:.1} MB", peak_rss_mb());

    reset_peak();
    let start = Instant::now();
    let (report, errors) = store
        .import(
            std::fs::File::open(&csv_path)?,
            "news",
            &ImportOptions::new(1_750_000_001),
            |_| {},
        )
        .await?;
    let secs = start.elapsed().as_secs_f64();
    assert!(
        errors.is_empty()
            && report.unchanged == rows
            && report.imported == 0
            && report.updated == 0,
        "{report:?}"
    );
    println!(
        "re-import (no change): {:.2} s, {:.0} rows/s, peak RSS {:.1} MB",
        secs,
        rows as f64 / secs,
        peak_rss_mb()
    );

    let list = store.require_list("news").await?;
    reset_peak();
    let start = Instant::now();
    let selection = Selection::Audience(list.id);
    let keys = store.attribute_keys(&selection).await?;
    let mut sink = csv::Writer::from_writer(std::io::sink());
    let n = store
        .export(&selection, |row| -> anyhow::Result<()> {
            let mut rec = vec![row.email, row.name, row.status];
            for k in &keys {
                rec.push(
                    row.attributes
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string(),
                );
            }
            sink.write_record(&rec)?;
            Ok(())
        })
        .await?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "export:  {n} rows in {:.2} s, {:.0} rows/s, peak RSS {:.1} MB",
        secs,
        n as f64 / secs,
        peak_rss_mb()
    );

    reset_peak();
    let start = Instant::now();
    let lists = store.lists().await?;
    let audience = store.audience_count(list.id).await?;
    assert!(lists[0].confirmed as u64 == rows && audience as u64 == rows);
    println!(
        "count:   {} confirmed, {audience} receiving, in {:.2} s, peak RSS {:.1} MB",
        lists[0].confirmed,
        start.elapsed().as_secs_f64(),
        peak_rss_mb()
    );
    store.close().await;
    let mailchimp_db = target.database("mailchimp.db").await?;
    let mailchimp = mailchimp(dir.path(), &mailchimp_db, rows).await?;
    target.clean_up().await?;
    println!(
        "mailchimp / csv import rate: {:.0} % (per CPU second: {:.0} %)",
        100.0 * mailchimp.per_sec / csv.per_sec,
        100.0 * mailchimp.per_cpu_sec / csv.per_cpu_sec
    );
    Ok(())
}

/// Rows per second of wall clock and per second of CPU time.
struct Rate {
    secs: f64,
    per_sec: f64,
    cpu: f64,
    per_cpu_sec: f64,
}

impl Rate {
    fn new(rows: u64, secs: f64, cpu: f64) -> Rate {
        Rate {
            secs,
            per_sec: rows as f64 / secs,
            cpu,
            per_cpu_sec: rows as f64 / cpu,
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s, {:.0} rows/s (CPU {:.2} s, {:.0} rows per CPU second)",
            self.secs, self.per_sec, self.cpu, self.per_cpu_sec
        )
    }
}

/// The Mailchimp phase: writes ROWS members in Mailchimp's subscribed
/// export layout and imports them into a fresh database; returns its rate.
async fn mailchimp(dir: &Path, db: &Location, rows: u64) -> anyhow::Result<Rate> {
    let path = dir.join("subscribed_members_export_bench.csv");
    let mut out = BufWriter::new(std::fs::File::create(&path)?);
    writeln!(
        out,
        "Email Address,First Name,Last Name,Address,Phone Number,City,Plan,MEMBER_RATING,OPTIN_TIME,OPTIN_IP,\
         CONFIRM_TIME,CONFIRM_IP,LATITUDE,LONGITUDE,GMTOFF,DSTOFF,TIMEZONE,CC,REGION,LAST_CHANGED,LEID,EUID,NOTES,TAGS"
    )?;
    for i in 0..rows {
        writeln!(
            out,
            "person{i}@example{}.org,Person,{i},,,City {},{},2,2021-03-{:02} 09:12:02,203.0.113.{},\
             2021-03-{:02} 09:22:02,198.51.100.{},59.9,10.7,1,2,,,,2023-05-01 10:00:00,{i},e{i},,",
            i % 97,
            i % 1000,
            if i % 3 == 0 { "pro" } else { "free" },
            1 + i % 28,
            i % 250,
            1 + i % 28,
            i % 250,
        )?;
    }
    out.flush()?;
    drop(out);
    let size = std::fs::metadata(&path)?.len();
    println!("mailchimp file: {:.1} MB", size as f64 / 1e6);
    let store = Store::open(db).await?;
    reset_peak();
    let (start, cpu) = (Instant::now(), cpu_secs());
    let options = ImportOptions {
        file_name: Some("subscribed_members_export_bench.csv".into()),
        ..ImportOptions::new(1_750_000_000)
    };
    let (report, errors) = store
        .import(std::fs::File::open(&path)?, "news", &options, |_| {})
        .await?;
    let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_secs() - cpu);
    assert!(
        errors.is_empty() && report.imported == rows,
        "{report:?} {errors:?}"
    );
    let list = store.require_list("news").await?;
    let person = store
        .subscriber(&format!(
            "person{}@example{}.org",
            rows - 1,
            (rows - 1) % 97
        ))
        .await?
        .expect("the last row is stored");
    // City and Plan, and the name's two parts (kept as attributes too).
    let keys: Vec<&str> = person.attributes.keys().map(String::as_str).collect();
    assert!(
        person.name == format!("Person {}", rows - 1)
            && keys == ["city", "first_name", "last_name", "plan"],
        "{person:?}"
    );
    assert_eq!(store.audience_count(list.id).await? as u64, rows);
    let rate = Rate::new(rows, secs, cpu);
    println!("mailchimp import: {rate}, peak RSS {:.1} MB", peak_rss_mb());
    store.close().await;
    Ok(rate)
}

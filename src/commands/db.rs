//! `bulletin init` (create the database), `bulletin db backup FILE` (a
//! consistent copy of a database in use) and `bulletin db copy --to URL`
//! (a SQLite database moved into PostgreSQL, `store::copy`).

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::config::Config;
use crate::redact::{self, Password};
use crate::store::{CopiedTable, Location, Store};

pub(crate) fn init(config: &Config) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        match crate::store::Store::open_existing(&config.db).await {
            Err(crate::store::Error::Missing) => {
                super::create_store(config).await?;
            }
            _ => {
                super::open_store(config).await?;
                println!(
                    "database {} (set by {}) exists; schema up to date",
                    config.db, config.db_source
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn backup(config: &Config, target: &Path) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        store
            .backup(target)
            .await
            .with_context(|| format!("backup of {} to {}", config.db, target.display()))?;
        println!("backed up {} to {}", config.db, target.display());
        Ok(ExitCode::SUCCESS)
    })
}

/// Tables with at least this many rows get a progress bar (on a terminal).
const BIG_TABLE: u64 = 10_000;

pub(crate) fn copy(config: &Config, to: &str) -> Result<ExitCode> {
    let parsed =
        Location::parse_with_password(Path::new(to), config.secrets.db_password.as_deref());
    let (target, password) = match parsed {
        Ok((Location::Postgres(url), password)) => (Location::Postgres(url), password),
        Ok((Location::File(_), _)) => anyhow::bail!(
            "--to {to:?}: give the PostgreSQL database as a URL, postgres://user@host/dbname (db copy moves a SQLite database to PostgreSQL)"
        ),
        Err(e) => anyhow::bail!("--to: {e}"),
    };
    if config.db.file().is_none() {
        anyhow::bail!(
            "db copy reads a SQLite database, and the configured one ({}, set by {}) is PostgreSQL already",
            config.db,
            config.db_source
        );
    }
    super::runtime()?.block_on(async {
        let source = super::open_store(config).await?;
        let sink = Store::open(&target).await.map_err(|e| {
            let login = match e {
                crate::store::Error::LoginRefused(_) => {
                    format!(", {}", crate::config::password_source(password))
                }
                _ => String::new(),
            };
            anyhow::Error::new(e).context(format!("--to {target}{login}"))
        })?;
        let sink = super::remember(sink);
        let mut bar: Option<(String, indicatif::ProgressBar)> = None;
        let show = std::io::stderr().is_terminal();
        let result = source
            .copy_to(&sink, |table, done, total| {
                if show && total >= BIG_TABLE {
                    table_bar(&mut bar, table, total).set_position(done);
                }
            })
            .await;
        if let Some((_, bar)) = bar {
            bar.finish_and_clear();
        }
        let tables = result.map_err(|e| copy_error(e, config, &target))?;
        print_counts(config, &target, &tables);
        print_next_steps(&target);
        Ok(ExitCode::SUCCESS)
    })
}

/// The progress bar of `table`, started when the copy reaches it.
fn table_bar<'a>(
    bar: &'a mut Option<(String, indicatif::ProgressBar)>,
    table: &str,
    total: u64,
) -> &'a indicatif::ProgressBar {
    if bar.as_ref().is_none_or(|(name, _)| name != table) {
        if let Some((_, done)) = bar.take() {
            done.finish_and_clear();
        }
        let fresh = indicatif::ProgressBar::new(total);
        fresh.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:16} {bar:40} {human_pos}/{human_len} rows, eta {eta}",
            )
            .expect("valid template"),
        );
        fresh.set_message(table.to_string());
        *bar = Some((table.to_string(), fresh));
    }
    &bar.as_ref().expect("just set").1
}

/// What a failed copy means for the target: untouched when it held rows,
/// otherwise rolled back to its schema alone, ready for another try.
fn copy_error(e: crate::store::copy::Error, config: &Config, target: &Location) -> anyhow::Error {
    use crate::store::copy::Error;
    let what = format!("db copy of {} to {target}", config.db);
    match e {
        Error::TargetNotEmpty(_) | Error::Direction => anyhow::Error::new(e).context(what),
        other => anyhow::Error::new(other).context(format!(
            "{what}: nothing was copied (the target has the bulletin schema and no rows); run it again once this is fixed"
        )),
    }
}

fn print_counts(config: &Config, target: &Location, tables: &[CopiedTable]) {
    println!(
        "copied {} (set by {}) to {target}, checked row counts:",
        config.db, config.db_source
    );
    println!("{:<20} {:>12} {:>12}", "table", "SQLite", "PostgreSQL");
    for table in tables {
        println!(
            "{:<20} {:>12} {:>12}",
            table.name, table.sqlite_rows, table.postgres_rows
        );
    }
}

/// What to change in the config to use the copy.
fn print_next_steps(target: &Location) {
    let Location::Postgres(url) = target else {
        return;
    };
    // The password goes in the environment, not in the file.
    let shown = redact::url(url.as_str(), Password::Removed);
    println!();
    println!("To run on PostgreSQL from now on, set in bulletin.toml (or BULLETIN_DB):");
    println!("    db = \"{shown}\"");
    println!("and put the password in the environment, not in the file: BULLETIN_DB_PASSWORD=...");
    println!(
        "The SQLite file is unchanged. Anything written to it after the copy started is not in the copy: stop `serve`, `dispatch` and bounce processing before copying, and switch them over afterwards."
    );
}

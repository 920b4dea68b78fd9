//! One function per CLI command. These are the edges of the program: they
//! resolve the `Config`, do the IO, call into the library modules, print
//! results, and return an exit code. Only `main` and this module print.

mod bounces;
mod build;
mod doctor;
mod lists;
mod preview;
mod quickstart;
mod send;
mod serve;
mod setup;
mod subscribers;

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::cli::{BouncesCommand, Cli, Command};
use crate::config::{Config, Overrides};
use crate::links::Signer;

/// Logs go to standard error; `RUST_LOG` (or `BULLETIN_LOG`) sets the level.
pub fn init_tracing() {
    let filter = std::env::var("BULLETIN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let flags = Overrides {
        config: cli.global.config.clone(),
        no_config: cli.global.no_config,
        db: cli.global.db.clone(),
        smtp_url: cli.global.smtp_url.clone(),
    };
    let config = Config::load(&flags)?;
    match cli.command {
        Command::Build(args) => build::run(&config, &args),
        Command::Bounces(BouncesCommand::Parse(args)) => bounces::parse(&args),
        Command::Bounces(command) => bounces::run(&config, &command),
        Command::Preview(args) => preview::run(&config, &args),
        Command::Send(args) => send::send(&config, &args),
        Command::Dispatch => send::dispatch(&config),
        Command::Status(args) => send::status(&config, &args),
        Command::Test(args) => send::test(&config, &args),
        Command::Serve(args) => serve::run(&config, &args),
        Command::Quickstart => quickstart::run(&config),
        Command::Lists(args) => lists::run(&config, &args),
        Command::Subscribers(command) => subscribers::run(&config, &command),
        Command::Doctor(args) => doctor::run(&config, &cli.global, &args),
    }
}

/// The signer for links in rendered samples: the configured secret, or a
/// fixed preview-only one (sample links then do not work on a real server).
fn sample_signer(config: &Config) -> Signer {
    match &config.secrets.current {
        Some(s) => Signer::new(s.as_bytes(), &[]),
        None => Signer::new(b"preview only: BULLETIN_SECRET is not set", &[]),
    }
}

/// Opens the configured database, creating it (and its directory) on first
/// use. Errors name the file.
async fn open_store(config: &Config) -> Result<crate::store::Store> {
    let path = &config.db;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    crate::store::Store::open(path)
        .await
        .with_context(|| path.display().to_string())
}

/// Store errors about the database itself (locked, corrupt, SQL) get the
/// database path in front; the others (no such list...) speak for themselves.
fn db_error(config: &Config) -> impl Fn(crate::store::Error) -> anyhow::Error + '_ {
    move |e| match e {
        crate::store::Error::Locked(_)
        | crate::store::Error::Corrupt
        | crate::store::Error::Sql(_)
        | crate::store::Error::Schema(_) => {
            anyhow::Error::new(e).context(config.db.display().to_string())
        }
        other => other.into(),
    }
}

/// A tokio runtime for the async commands.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

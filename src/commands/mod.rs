//! One function per CLI command. These are the edges of the program: they
//! resolve the `Config`, do the IO, call into the library modules, print
//! results, and return an exit code. Only `main` and this module print.

mod bounces;
mod build;
mod preview;

use std::process::ExitCode;

use anyhow::Result;

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
        smtp_url: None,
    };
    let config = Config::load(&flags)?;
    match cli.command {
        Command::Build(args) => build::run(&config, &args),
        Command::Bounces(BouncesCommand::Parse(args)) => bounces::parse(&args),
        Command::Preview(args) => preview::run(&config, &args),
        Command::Lists(_) | Command::Subscribers(_) => {
            anyhow::bail!("this command is not built yet")
        }
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

/// A tokio runtime for the async commands.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

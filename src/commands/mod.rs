//! One function per CLI command. These are the edges of the program: they
//! resolve the `Config`, do the IO, call into the library modules, print
//! results, and return an exit code. Only `main` and this module print.

/// `println!` for every command (it shadows `std::println!` in the modules
/// below): writes through the locked standard output and never panics. When
/// the reader has gone away (`bulletin subscribers show X | head -1`) the
/// rest of the output is dropped and the command finishes its work as usual;
/// any other write error fails the command at the end (see [`print_line`]).
macro_rules! println {
    () => {
        $crate::commands::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::commands::print_line(format_args!($($arg)*))
    };
}

mod bounces;
mod build;
mod cancel;
mod compile;
mod db;
mod dispatch;
mod doctor;
mod freeze;
mod import_file;
mod lists;
mod preview;
mod quickstart;
mod report;
mod running;
mod send;
mod serve;
mod setup;
mod status;
mod subscribers;
mod test;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context as _, Result};

use crate::cli::{BouncesCommand, Cli, Command, DbCommand};
use crate::config::{Config, Overrides};
use crate::links::Signer;
use crate::store::Store;

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

/// The first error writing standard output other than a closed pipe (a
/// full disk behind `> file`), reported when the command ends.
static STDOUT_ERROR: Mutex<Option<std::io::Error>> = Mutex::new(None);

/// Writes one line to standard output for [`println!`]. A closed pipe is
/// not an error (the reader has what it wanted); other errors are kept for
/// [`run`] to report.
#[doc(hidden)]
pub fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        let mut kept = STDOUT_ERROR.lock().unwrap_or_else(|e| e.into_inner());
        if e.kind() != std::io::ErrorKind::BrokenPipe && kept.is_none() {
            *kept = Some(e);
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let code = run_command(cli)?;
    let kept = STDOUT_ERROR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match kept {
        Some(e) => Err(anyhow::Error::new(e).context("standard output")),
        None => Ok(code),
    }
}

fn run_command(cli: Cli) -> Result<ExitCode> {
    let flags = Overrides {
        config: cli.global.config.clone(),
        no_config: cli.global.no_config,
        db: cli.global.db.clone(),
        smtp_url: cli.global.smtp_url.clone(),
        outbox: cli.global.outbox.clone(),
    };
    let config = Config::load(&flags)?;
    if cli.command.uses_link_secret() {
        config.secrets.check()?;
    }
    match cli.command {
        Command::Build(args) => build::run(&config, &args),
        Command::Bounces(BouncesCommand::Parse(args)) => bounces::parse(&args),
        Command::Bounces(command) => bounces::run(&config, &command),
        Command::Preview(args) => preview::run(&config, &args),
        Command::Send(args) => send::run(&config, &args),
        Command::Dispatch => dispatch::run(&config),
        Command::Status(args) => status::run(&config, &args),
        Command::Cancel(args) => cancel::run(&config, &args),
        Command::Report(args) => report::run(&config, &args),
        Command::Test(args) => test::run(&config, &args),
        Command::Serve(args) => serve::run(&config, &args),
        Command::Quickstart => quickstart::run(&config),
        Command::Lists(args) => lists::run(&config, &args),
        Command::Subscribers(command) => subscribers::run(&config, &command),
        Command::Init => db::init(&config),
        Command::Db(DbCommand::Backup { file }) => db::backup(&config, &file),
        Command::Db(DbCommand::Copy { to }) => db::copy(&config, &to),
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

/// Opens the configured database, which must exist: a command that reads
/// or sends never creates an empty database by accident. Errors name the
/// file and how it was chosen.
async fn open_store(config: &Config) -> Result<Store> {
    let store = Store::open_existing(&config.db)
        .await
        .map_err(|e| open_error(config, e))?;
    Ok(remember(store))
}

/// Opens the configured database, creating it (and its folder) when it is
/// missing, and says so: only `init`, `quickstart` and the commands that add
/// data (lists and subscribers) call this.
async fn create_store(config: &Config) -> Result<Store> {
    match Store::open_existing(&config.db).await {
        Err(crate::store::Error::Missing) => {}
        found => return Ok(remember(found.map_err(|e| open_error(config, e))?)),
    }
    if let Some(dir) = config
        .db
        .file()
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{} (folder of the database)", dir.display()))?;
    }
    let store = Store::open(&config.db)
        .await
        .map_err(|e| open_error(config, e))?;
    let what = match config.db.file() {
        Some(_) => "created database",
        None => "created the bulletin schema in",
    };
    println!("{what} {} (set by {})", config.db, config.db_source);
    Ok(remember(store))
}

fn open_error(config: &Config, e: crate::store::Error) -> anyhow::Error {
    let path = &config.db;
    match e {
        crate::store::Error::Missing if path.file().is_none() => anyhow::anyhow!(
            "no bulletin schema in {path} (set by {}); `bulletin init` creates it, or `bulletin db copy` fills it from a SQLite file",
            config.db_source
        ),
        crate::store::Error::Missing => anyhow::anyhow!(
            "no database at {path} (set by {}); `bulletin init` creates one, or point --db, BULLETIN_DB or db in bulletin.toml at the existing file",
            config.db_source
        ),
        // Where the setting came from, for the operator who must fix it;
        // the store error stays in the chain (`main` exits 75 on it).
        unreachable @ crate::store::Error::Unreachable(_) => {
            anyhow::Error::new(unreachable).context(format!("{path} (set by {})", config.db_source))
        }
        // A refused login: the setting to fix is the URL or the password,
        // so both sources are named (the password itself never is).
        refused @ crate::store::Error::LoginRefused(_) => {
            anyhow::Error::new(refused).context(format!("{path} ({})", config.db_login_source()))
        }
        // No database of that name: fixed in the setting (or by createdb).
        missing @ crate::store::Error::NoDatabase { .. } => {
            anyhow::Error::new(missing).context(format!("{path} (set by {})", config.db_source))
        }
        // `sslmode` and `sslrootcert` are in the URL: the setting to fix.
        tls @ crate::store::Error::Tls(_) => anyhow::Error::new(tls).context(format!(
            "{path} (set by {}; TLS as its sslmode and sslrootcert say)",
            config.db_source
        )),
        other => anyhow::Error::new(other).context(path.to_string()),
    }
}

/// The stores opened by this process, checkpointed and closed when the
/// command's work is done (see [`Runtime::block_on`]).
static OPENED: Mutex<Vec<Store>> = Mutex::new(Vec::new());

fn remember(store: Store) -> Store {
    OPENED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(store.clone());
    store
}

/// Checkpoints and closes every store opened so far, so that the `.db`
/// file holds everything when the command exits.
async fn close_stores() {
    let stores = std::mem::take(&mut *OPENED.lock().unwrap_or_else(|e| e.into_inner()));
    for store in stores {
        store.close().await;
    }
}

/// Store errors about the database itself (locked, corrupt, SQL) get the
/// database path in front; the others (no such list...) speak for themselves.
fn db_error(config: &Config) -> impl Fn(crate::store::Error) -> anyhow::Error + '_ {
    move |e| match e {
        crate::store::Error::Locked(_)
        | crate::store::Error::Collided(_)
        | crate::store::Error::NoConnection
        | crate::store::Error::Corrupt
        | crate::store::Error::ReadOnly
        | crate::store::Error::Backup(_)
        | crate::store::Error::Sql(_)
        | crate::store::Error::Schema(_) => anyhow::Error::new(e).context(config.db.to_string()),
        // A new connection of the pool refused mid-command (the password
        // changed on the server): as when opening.
        crate::store::Error::LoginRefused(_) | crate::store::Error::NoDatabase { .. } => {
            open_error(config, e)
        }
        other => other.into(),
    }
}

/// A tokio runtime for the async commands.
fn runtime() -> Result<Runtime> {
    Ok(Runtime(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    ))
}

/// The commands' runtime: whatever the command did, the databases it opened
/// are checkpointed and closed before `block_on` returns.
struct Runtime(tokio::runtime::Runtime);

impl Runtime {
    fn block_on<F: std::future::Future>(&self, work: F) -> F::Output {
        self.0.block_on(async {
            let output = work.await;
            close_stores().await;
            output
        })
    }
}

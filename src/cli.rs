//! `Cli`: the raw command line, parsed by clap. Nothing here reads files or
//! the environment beyond what clap does; `commands` turns a `Cli` into a
//! `Config` and runs it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Newsletter composer and dispatcher: campaign files to responsive email,
/// sent once to every subscriber.
#[derive(Debug, Parser)]
#[command(name = "bulletin", version, args_override_self = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Config file [env: BULLETIN_CONFIG] [default: ./bulletin.toml when present]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Ignore any config file; use defaults and the environment
    #[arg(long, global = true)]
    pub no_config: bool,
    /// Database: a SQLite file, or postgres://user@host/dbname (password in
    /// BULLETIN_DB_PASSWORD) [env: BULLETIN_DB] [default: bulletin.db beside the config]
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// SMTP server, e.g. smtp://user@host:587 [env: BULLETIN_SMTP_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub smtp_url: Option<String>,
    /// Write messages as .eml files to this folder instead of sending them
    /// [env: BULLETIN_OUTBOX]
    #[arg(long, global = true, value_name = "DIR")]
    pub outbox: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile a campaign to HTML, text and a sample .eml
    Build(BuildArgs),
    /// Serve the rendered campaign on localhost, re-rendering on change
    Preview(PreviewArgs),
    /// Show mailing lists with counts, or add, rename, edit or remove one
    Lists(ListsArgs),
    /// Add, remove, show, import, export or erase subscribers
    #[command(subcommand)]
    Subscribers(SubscribersCommand),
    /// Freeze a campaign and send it to its list now (or schedule it with --at)
    Send(SendArgs),
    /// Send every due campaign and retry; the cron entry point
    Dispatch,
    /// Delivery counts per campaign, with bounces, complaints and unsubscribes
    Status(StatusArgs),
    /// Stop a scheduled or partly sent campaign: nothing more is sent
    Cancel(CancelArgs),
    /// Who got a campaign: one row per recipient, failures first
    Report(ReportArgs),
    /// Send a test copy of a campaign to each address given (not logged as a delivery)
    Test(TestArgs),
    /// Serve the subscriber pages: unsubscribe, preferences, sign-up, archive
    Serve(ServeArgs),
    /// Try everything at once: create the database, load the example
    /// subscribers and send the example e-bulletin to the local outbox
    Quickstart,
    /// Read returned mail: bounces, complaints, auto-replies, unsubscribes
    #[command(subcommand)]
    Bounces(BouncesCommand),
    /// Check the setup before a send: config, secret, links, SMTP server,
    /// DKIM key and the DNS record to publish (exit 0 ok, 1 warnings, 2 failures)
    Doctor(DoctorArgs),
    /// Create the database (the only command besides quickstart, `lists add`
    /// and `subscribers add/import` that does)
    Init,
    /// Database upkeep: backups, moving to PostgreSQL
    #[command(subcommand)]
    Db(DbCommand),
}

impl Command {
    /// The exit code when the command fails with an error: 75
    /// (EX_TEMPFAIL, "try again later") for `bounces ingest`, so that an MTA
    /// keeps the message and retries instead of losing it, and for
    /// `dispatch` when the error is `transient` (the database server
    /// unreachable, the database locked), so that cron's next run is the
    /// retry; 2 otherwise (`bounces imap` picks 75 itself for a mailbox it
    /// could not reach).
    pub fn error_exit_code(&self, transient: bool) -> u8 {
        match self {
            Command::Bounces(BouncesCommand::Ingest { .. }) => EX_TEMPFAIL,
            Command::Dispatch if transient => EX_TEMPFAIL,
            _ => 2,
        }
    }

    /// True for the commands that sign links or verify signed tokens, which
    /// refuse a short secret (`config::Secrets::check`).
    pub fn uses_link_secret(&self) -> bool {
        match self {
            Command::Build(_)
            | Command::Preview(_)
            | Command::Send(_)
            | Command::Dispatch
            | Command::Test(_)
            | Command::Serve(_)
            | Command::Quickstart => true,
            Command::Bounces(b) => matches!(
                b,
                BouncesCommand::Ingest { .. }
                    | BouncesCommand::Scan { .. }
                    | BouncesCommand::Imap { .. }
            ),
            Command::Status(_)
            | Command::Cancel(_)
            | Command::Report(_)
            | Command::Lists(_)
            | Command::Subscribers(_)
            | Command::Init
            | Command::Db(_)
            | Command::Doctor(_) => false,
        }
    }
}

/// sysexits.h: "temporary failure; the sender should try again later".
pub const EX_TEMPFAIL: u8 = 75;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Write a consistent copy of the database to FILE while it is in use
    /// (replaces FILE)
    Backup {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Copy the SQLite database into an empty PostgreSQL database, check
    /// the row counts and say what to change in the config
    Copy {
        /// The PostgreSQL database: postgres://user@host/dbname (the
        /// password in the URL or in BULLETIN_DB_PASSWORD)
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Compare the server's SIZE limit with this campaign's compiled message
    #[arg(long, value_name = "FILE")]
    pub campaign: Option<PathBuf>,
    /// Also check that `bulletin serve` answers at base_url/healthz
    #[arg(long)]
    pub web: bool,
    /// Send one test message to this address (nothing is sent without it)
    #[arg(long, value_name = "ADDR")]
    pub send_test: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: `listen` in the config, 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Campaign file
    pub campaign: PathBuf,
    /// Schedule instead of sending now: 2026-12-01T09:00:00+01:00 or "2026-12-01 09:00" (local); `now` sends a scheduled campaign at once
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Send a campaign that was already sent once more, as a new campaign
    /// (everyone gets it again)
    #[arg(long, conflicts_with_all = ["only_new", "replace"])]
    pub again: bool,
    /// Send an already sent campaign to the people of its list who have not
    /// had it (joined since); nobody gets it twice
    #[arg(long, conflicts_with = "replace")]
    pub only_new: bool,
    /// Refreeze a queued campaign from the file as it is now (subject, body,
    /// time); refused once a message went out
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Campaign name (file stem) or file
    pub campaign: String,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Campaign name (file stem) or file
    pub campaign: String,
    /// Only recipients in this state: failed, unknown, deferred, skipped,
    /// sending, queued, sent
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

/// Output format of `bulletin report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ReportFormat {
    #[default]
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Campaign name (file stem) or file [default: all campaigns]
    pub campaign: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Campaign file
    pub campaign: PathBuf,
    /// Where to send a test copy: repeat `--to A --to B` or give `--to A,B`;
    /// each address gets its own copy
    #[arg(long, value_name = "ADDR", required = true, value_delimiter = ',', action = clap::ArgAction::Append)]
    pub to: Vec<String>,
    /// Fill the copy with this subscriber's name and attributes instead of
    /// the sample ("Sample Recipient")
    #[arg(long = "as", value_name = "ADDR")]
    pub as_subscriber: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BouncesCommand {
    /// Print what each message says, one JSON line per file, without touching the database
    Parse(BouncesParseArgs),
    /// Process returned mail from files, or one message on standard input
    /// (for an MTA alias such as `bounces: "|bulletin bounces ingest"`)
    Ingest {
        /// Raw messages; standard input when none
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Process the new messages of a Maildir, moving each to cur/ once recorded
    Scan {
        #[arg(value_name = "MAILDIR")]
        maildir: PathBuf,
    },
    /// Read the bounce mailbox of [bounces.imap] (password from
    /// BULLETIN_IMAP_PASSWORD): each unseen message is processed like `ingest`,
    /// then marked seen and moved to the processed folder; other mail stays
    Imap {
        /// Process what is there and exit, instead of staying connected
        #[arg(long)]
        once: bool,
    },
    /// Bounces and complaints recorded, oldest first
    List {
        /// Only since this date or time (2026-11-01, or 2026-11-01 09:00)
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Instead, returned mail that carried no valid token and changed
        /// nobody: date, from, subject and why
        #[arg(long)]
        unmatched: bool,
    },
}

#[derive(Debug, Args)]
pub struct BouncesParseArgs {
    /// Raw messages (.eml), one per file
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Campaign file (.md with front matter, or .mjml)
    pub campaign: PathBuf,
    /// Output directory
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Also write the MJML that was compiled
    #[arg(long)]
    pub mjml: bool,
    /// Treat deliverability warnings as errors
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Campaign file
    pub campaign: PathBuf,
    /// Address to listen on (loopback only)
    #[arg(long, default_value = "127.0.0.1:8025", value_name = "ADDR")]
    pub listen: String,
}

#[derive(Debug, Args)]
pub struct ListsArgs {
    #[command(subcommand)]
    pub command: Option<ListsCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ListsCommand {
    /// Create a list
    Add {
        /// Short name used in campaign files (`list = "..."`)
        slug: String,
        /// Human-readable name
        #[arg(long)]
        name: String,
        /// Optional description shown on the sign-up page
        #[arg(long, default_value = "")]
        description: String,
        /// New subscribers must confirm by email
        #[arg(long)]
        double_opt_in: bool,
        /// Shown on the sign-up page and in the preference center
        #[arg(long)]
        public: bool,
    },
    /// Change a list's slug (what campaign files name); its subscribers,
    /// campaigns and history stay with it
    Rename { slug: String, new_slug: String },
    /// Change a list's name, description, or whether it is public or asks
    /// new subscribers to confirm
    Edit {
        slug: String,
        /// Human-readable name
        #[arg(long)]
        name: Option<String>,
        /// Description shown on the sign-up page
        #[arg(long)]
        description: Option<String>,
        /// yes/no: new subscribers must confirm by email (those already on
        /// the list are not changed)
        #[arg(long, value_name = "yes|no", value_parser = clap::builder::BoolishValueParser::new())]
        double_opt_in: Option<bool>,
        /// yes/no: shown on the sign-up page and in the preference center
        #[arg(long, value_name = "yes|no", value_parser = clap::builder::BoolishValueParser::new())]
        public: Option<bool>,
    },
    /// Remove a list: refused while anyone is confirmed or pending on it,
    /// unless --force; people, their subscriptions and history are never
    /// deleted
    Remove {
        slug: String,
        /// Remove it even though people are on it (they stay, with their
        /// history; only the list is gone)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubscribersCommand {
    /// Subscribe an address to a list; on a double opt-in list this sends
    /// the confirmation email, unless --confirmed
    Add {
        email: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        list: String,
        /// You have the person's consent on record: subscribe them confirmed
        /// at once, with no confirmation email
        #[arg(long)]
        confirmed: bool,
    },
    /// Unsubscribe an address from one list, or from all lists
    Remove {
        email: String,
        #[arg(long)]
        list: Option<String>,
    },
    /// Everything stored about one person, with their history
    Show { email: String },
    /// Import a list: a CSV file with an email column, or an export of
    /// Mailchimp (the zip or its CSV files), listmonk, Keila, Ghost or Substack
    Import {
        file: PathBuf,
        #[arg(long)]
        list: String,
        /// The tool that wrote the file [default: recognised by its header]
        #[arg(long, value_enum, default_value_t = ImportFrom::Auto)]
        from: ImportFrom,
        /// Show the format and what each column becomes, check and count; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Send the list's welcome mail to each person this import confirms
        /// (without it, an import sends no welcome mail)
        #[arg(long)]
        welcome: bool,
    },
    /// Write subscribers to standard output, with statuses and consent records
    Export {
        #[arg(long)]
        list: Option<String>,
        /// Subscription or subscriber status to export, or all [default: those who would receive mail]
        #[arg(long)]
        status: Option<String>,
        /// csv (re-imports into bulletin), json (one object per line, for
        /// tools) or mailchimp (columns Mailchimp's import expects)
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// Start with a byte order mark, so that Excel reads the CSV as UTF-8
        #[arg(long)]
        bom: bool,
    },
    /// Erase a person: delete their data, keep only a hashed suppression entry
    Forget { email: String },
    /// Return a bounced address to active (never undoes an unsubscribe,
    /// complaint or erasure)
    Reactivate { email: String },
}

/// `subscribers import --from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFrom {
    Auto,
    Mailchimp,
    Listmonk,
    Keila,
    Ghost,
    Substack,
    Csv,
}

/// `subscribers export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
    Mailchimp,
}

/// Output format of report commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn build_flags() {
        let cli = Cli::try_parse_from([
            "bulletin", "build", "c.md", "--out", "a", "--out", "b", "--mjml",
        ])
        .unwrap();
        match cli.command {
            Command::Build(b) => {
                assert_eq!(b.out, PathBuf::from("b"), "last value wins");
                assert!(b.mjml);
                assert!(!b.strict);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bounces_parse_takes_files() {
        let cli = Cli::try_parse_from(["bulletin", "bounces", "parse", "a.eml", "b.eml"]).unwrap();
        match cli.command {
            Command::Bounces(BouncesCommand::Parse(a)) => assert_eq!(a.files.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["bulletin", "bounces", "parse"]).is_err());
    }

    #[test]
    fn test_to_repeats_and_splits_on_commas() {
        for args in [
            &[
                "bulletin", "test", "c.md", "--to", "a@x.org", "--to", "b@x.org",
            ][..],
            &["bulletin", "test", "c.md", "--to", "a@x.org,b@x.org"][..],
        ] {
            match Cli::try_parse_from(args).unwrap().command {
                Command::Test(t) => assert_eq!(t.to, ["a@x.org", "b@x.org"], "{args:?}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(Cli::try_parse_from(["bulletin", "test", "c.md"]).is_err());
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = Cli::try_parse_from(["bulletin", "build", "c.md", "--no-config", "--db", "x.db"])
            .unwrap();
        assert!(cli.global.no_config);
        assert_eq!(cli.global.db, Some(PathBuf::from("x.db")));
    }
}

//! `Config`: the resolved settings every command runs with.
//!
//! Precedence, lowest first: built-in defaults < config file (`bulletin.toml`)
//! < `BULLETIN_*` environment variables < command-line flags. Secrets (the
//! link-signing secret, the SMTP password) are read from the environment only;
//! a config file that carries one is refused, so secrets never end up in git.
//!
//! Only `main` and the command functions call [`Config::load`]; every other
//! module receives the pieces it needs as plain values.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{DbPassword, Location};

/// Errors while finding, reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file cannot be read. The io error is shown once, in the
    /// message (not as a source too, which `{:#}` would print twice).
    #[error("{}: {}", set_by_text(path, set_by), io_text(error))]
    Read {
        path: PathBuf,
        /// `--config`, `BULLETIN_CONFIG`, or `bulletin.toml` found here.
        set_by: Source,
        error: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Values that come from flags, handed over by the CLI layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub no_config: bool,
    pub db: Option<PathBuf>,
    pub smtp_url: Option<String>,
    pub outbox: Option<PathBuf>,
}

/// Where a setting's value came from, for error messages and `doctor`:
/// "--db flag", "BULLETIN_DB", "db in /srv/bulletin/bulletin.toml", "default".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The command-line flag `--NAME`.
    Flag(&'static str),
    /// The environment variable.
    Env(&'static str),
    /// A key in the config file.
    File { key: &'static str, path: PathBuf },
    /// A command that always uses it (`quickstart` writes to the outbox).
    Command(&'static str),
    /// Nobody chose it: the built-in default.
    Default,
}

impl Source {
    /// True when the operator chose the value (flag, environment or file).
    pub fn is_explicit(&self) -> bool {
        !matches!(self, Source::Default)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag(name) => write!(f, "--{name} flag"),
            Source::Env(name) => f.write_str(name),
            Source::File { key, path } => write!(f, "{key} in {}", path.display()),
            Source::Command(name) => write!(f, "`bulletin {name}`"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// Picks a setting from the first layer that has it, highest first: flag,
/// environment variable, config file key, default; and says which it was.
fn choose<T>(
    flag: (Option<T>, &'static str),
    env: (Option<T>, &'static str),
    file: (Option<T>, &'static str, Option<&Path>),
    default: T,
) -> (T, Source) {
    if let Some(v) = flag.0 {
        return (v, Source::Flag(flag.1));
    }
    if let Some(v) = env.0 {
        return (v, Source::Env(env.1));
    }
    match (file.0, file.2) {
        (Some(v), Some(path)) => (
            v,
            Source::File {
                key: file.1,
                path: path.to_path_buf(),
            },
        ),
        _ => (default, Source::Default),
    }
}

/// The organisation that sends the bulletin; shown in every footer (CAN-SPAM
/// and GDPR want a postal address) and in the header.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Organisation {
    pub name: String,
    pub address: String,
    pub website: String,
    pub logo_url: String,
    pub tagline: String,
}

impl Default for Organisation {
    fn default() -> Self {
        Organisation {
            name: "Example Alliance".into(),
            address: "1 Example Street, Example City".into(),
            website: "https://example.org".into(),
            logo_url: String::new(),
            tagline: String::new(),
        }
    }
}

/// Who the mail comes from and where bounces and mailto unsubscribes go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Sender {
    /// `Name <address>`; a campaign's `from` overrides it.
    pub from: String,
    pub reply_to: Option<String>,
    /// Domain of the VERP return path `bounces+TOKEN@domain` and of the
    /// `unsubscribe+TOKEN@domain` mailto. Defaults to the From domain.
    pub bounce_domain: Option<String>,
}

impl Default for Sender {
    fn default() -> Self {
        Sender {
            from: "Example Alliance <news@example.org>".into(),
            reply_to: None,
            bounce_domain: None,
        }
    }
}

/// SMTP settings. The URL may name a user but never a password: that comes
/// from `BULLETIN_SMTP_PASSWORD`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Smtp {
    pub url: Option<String>,
    /// Parallel SMTP connections.
    pub connections: usize,
    /// Messages per second across all connections; 0 means as fast as the
    /// server accepts.
    pub rate: f64,
    /// Messages sent on one connection before it is recycled.
    pub messages_per_connection: usize,
    /// Seconds to wait for the server on connect and each command.
    pub timeout_secs: u64,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            url: None,
            connections: 10,
            rate: 0.0,
            messages_per_connection: 1000,
            timeout_secs: 30,
        }
    }
}

/// DKIM signing (see `dkim`): rsa keys as PKCS#1 or PKCS#8 PEM, ed25519 keys
/// as the base64 32-byte seed or PKCS#8 PEM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dkim {
    pub domain: String,
    pub selector: String,
    pub key_file: PathBuf,
    /// `rsa` or `ed25519`.
    #[serde(default = "default_dkim_algorithm")]
    pub algorithm: String,
}

fn default_dkim_algorithm() -> String {
    "rsa".into()
}

/// Dispatcher policy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Dispatch {
    /// A scheduled campaign more than this many hours overdue is held.
    pub hold_after_hours: i64,
    /// Seconds a dispatcher lease lasts before another run may take it over.
    pub lease_secs: i64,
    /// Attempts per recipient before a deferred delivery becomes failed.
    pub max_attempts: i64,
    /// First retry delay in seconds; doubles with each attempt.
    pub retry_base_secs: i64,
    /// Retries due within this many seconds are waited for by the run that
    /// deferred them; later ones are left to the next `dispatch`.
    pub retry_wait_secs: i64,
    /// Deliveries that were in flight when a run died: `unknown` (never
    /// sent again; nobody gets two copies) or `resend` (queued again; a few
    /// may get two copies).
    pub in_flight: crate::store::deliveries::InFlight,
}

impl Default for Dispatch {
    fn default() -> Self {
        Dispatch {
            hold_after_hours: 24,
            lease_secs: 120,
            max_attempts: 5,
            retry_base_secs: 60,
            retry_wait_secs: 300,
            in_flight: crate::store::deliveries::InFlight::Unknown,
        }
    }
}

/// Bounce rules.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Bounces {
    /// The soft-bounce score that makes a subscriber bounced: each soft
    /// bounce from another campaign adds 1 (`bounce::score`).
    pub soft_limit: i64,
    /// Days in which the soft-bounce score halves.
    pub soft_window_days: i64,
    /// `[bounces.imap]`: the mailbox `bulletin bounces imap` reads.
    pub imap: Option<Imap>,
}

/// `[bounces.imap]`: a bounce mailbox read over IMAP. The password comes
/// from `BULLETIN_IMAP_PASSWORD`, never the file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Imap {
    /// `imaps://user@host:993/INBOX` (TLS), `imap://user@host/INBOX`
    /// (STARTTLS; plain only to a loopback address).
    pub url: String,
    /// Folder that processed bounces are moved to (created when missing).
    #[serde(default = "default_processed_folder")]
    pub processed: String,
    /// Seconds between checks when the server does not offer IDLE (and the
    /// longest an IDLE lasts before it is renewed).
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// PEM file of a certificate authority to trust besides the public ones
    /// (a self-hosted server with its own CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_processed_folder() -> String {
    "processed".into()
}

fn default_poll_secs() -> u64 {
    60
}

impl Default for Bounces {
    fn default() -> Self {
        Bounces {
            soft_limit: 3,
            soft_window_days: 30,
            imap: None,
        }
    }
}

/// `[webhooks.*]`: the sending services whose bounce and complaint
/// notifications `bulletin serve` accepts. Each is off unless its section is
/// there; the secrets come from the environment.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Webhooks {
    /// `POST /webhooks/ses`: Amazon SES events through an SNS topic.
    pub ses: Option<SesWebhook>,
    /// `POST /webhooks/postmark`: basic auth, password `BULLETIN_POSTMARK_PASSWORD`.
    pub postmark: Option<PostmarkWebhook>,
    /// `POST /webhooks/mailgun`: signed with `BULLETIN_MAILGUN_SIGNING_KEY`.
    pub mailgun: Option<MailgunWebhook>,
    /// `POST /webhooks/sendgrid`: signed Event Webhook batches.
    pub sendgrid: Option<SendgridWebhook>,
}

/// `[webhooks.ses]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SesWebhook {
    /// The SNS topic the SES events are published to; others are refused.
    pub topic_arn: String,
    /// Folder of SNS signing certificates (`<name>.pem`, as in the
    /// certificate URL): a certificate found here is used as it is, one
    /// missing is fetched from its `sns.<region>.amazonaws.com` URL and kept.
    #[serde(default = "default_sns_certificates")]
    pub certificates: PathBuf,
}

fn default_sns_certificates() -> PathBuf {
    "sns-certificates".into()
}

/// `[webhooks.postmark]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostmarkWebhook {
    /// The basic-auth user name set in the webhook URL at Postmark.
    pub user: String,
}

/// `[webhooks.mailgun]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MailgunWebhook {
    /// Oldest signature timestamp accepted, in seconds.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: i64,
}

/// `[webhooks.sendgrid]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SendgridWebhook {
    /// The verification key SendGrid shows for the signed Event Webhook
    /// (base64, a public key: it may sit in the file).
    pub public_key: String,
    /// Oldest signature timestamp accepted, in seconds.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: i64,
}

fn default_max_age_secs() -> i64 {
    300
}

/// `bulletin serve`'s defences against clients that hold connections.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Serve {
    /// Seconds a client has to send a request's headers, counted from the
    /// connection (or the end of the previous response) on.
    pub header_timeout_secs: u64,
    /// Seconds a connection may move no byte in either direction (a stalled
    /// body or a client that stopped reading) before it is closed.
    pub idle_timeout_secs: u64,
    /// Connections served at once; more are answered 503 with Retry-After.
    pub max_connections: usize,
}

impl Default for Serve {
    fn default() -> Self {
        Serve {
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 512,
        }
    }
}

/// The config file as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct File {
    db: Option<PathBuf>,
    base_url: Option<String>,
    assets_url: Option<String>,
    templates: Option<PathBuf>,
    outbox: Option<PathBuf>,
    listen: Option<String>,
    organisation: Organisation,
    sender: Sender,
    smtp: Smtp,
    dkim: Option<Dkim>,
    dispatch: Dispatch,
    bounces: Bounces,
    serve: Serve,
    webhooks: Webhooks,
}

/// The link-signing secret and the previous ones still accepted.
#[derive(Clone, Default)]
pub struct Secrets {
    pub current: Option<String>,
    pub previous: Vec<String>,
    /// `BULLETIN_DB_PASSWORD`: the PostgreSQL password when a URL has none
    /// (`db` and `db copy --to`).
    pub db_password: Option<String>,
}

/// The shortest link-signing secret accepted, in bytes: a short secret can
/// be recovered from a single signed link in well under a second.
pub const MIN_SECRET_BYTES: usize = 32;

impl Secrets {
    /// Refuses a current or previous secret shorter than
    /// [`MIN_SECRET_BYTES`], saying how to make a good one.
    pub fn check(&self) -> Result<()> {
        let short = |name: String, secret: &str| {
            Error::Invalid(format!(
                "{name} is {} bytes long; a link-signing secret needs at least {MIN_SECRET_BYTES} \
                 (a short one can be guessed from one link): generate one with `openssl rand -hex 32`",
                secret.len()
            ))
        };
        if let Some(current) = &self.current
            && current.len() < MIN_SECRET_BYTES
        {
            return Err(short("BULLETIN_SECRET".into(), current));
        }
        for (i, previous) in self.previous.iter().enumerate() {
            if previous.len() < MIN_SECRET_BYTES {
                return Err(short(
                    format!("secret {} of BULLETIN_PREVIOUS_SECRETS", i + 1),
                    previous,
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("current", &self.current.as_ref().map(|_| "<set>"))
            .field("previous", &self.previous.len())
            .field("db_password", &self.db_password.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    pub db: Location,
    /// How `db` was chosen (flag, BULLETIN_DB, config file, default).
    pub db_source: Source,
    /// Where the PostgreSQL password in `db` came from, if it has one.
    pub db_password_source: DbPassword,
    /// Public base URL of `bulletin serve`, used in every link: an
    /// absolute http(s) URL with a host (checked at load), without the
    /// trailing `/`.
    pub base_url: String,
    /// How `base_url` was chosen; only one the operator set resolves
    /// relative links in campaigns.
    pub base_url_source: Source,
    /// Where the campaigns' images and files are online (ending in `/`):
    /// relative image and link URLs are resolved against it.
    pub assets_url: Option<url::Url>,
    /// `base_url` ending in `/` when the operator set it: relative links
    /// (not images) resolve against it.
    pub pages_url: Option<url::Url>,
    pub templates: PathBuf,
    pub outbox: PathBuf,
    /// How `outbox` was chosen; only an explicit outbox (not the default)
    /// may stand in for an SMTP server.
    pub outbox_source: Source,
    pub listen: String,
    pub organisation: Organisation,
    pub sender: Sender,
    pub smtp: Smtp,
    /// How `smtp.url` was chosen (flag, BULLETIN_SMTP_URL, config file), so a
    /// run can say where its transport came from.
    pub smtp_url_source: Source,
    pub smtp_password: Option<String>,
    /// `BULLETIN_IMAP_PASSWORD`: the `[bounces.imap]` mailbox's password.
    pub imap_password: Option<String>,
    pub dkim: Option<Dkim>,
    pub dispatch: Dispatch,
    pub bounces: Bounces,
    pub serve: Serve,
    pub webhooks: Webhooks,
    /// `BULLETIN_POSTMARK_PASSWORD`: the `[webhooks.postmark]` basic-auth password.
    pub postmark_password: Option<String>,
    /// `BULLETIN_MAILGUN_SIGNING_KEY`: the `[webhooks.mailgun]` signing key.
    pub mailgun_signing_key: Option<String>,
    pub secrets: Secrets,
}

/// Reads an environment variable, treating empty as unset.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Resolves the configuration from the process environment.
    pub fn load(flags: &Overrides) -> Result<Config> {
        Self::load_with(flags, &|name| env(name))
    }

    /// Resolves the configuration, reading environment variables through
    /// `env` (so tests need not touch the process environment).
    pub fn load_with(flags: &Overrides, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let chosen = if flags.no_config {
            None
        } else if let Some(p) = &flags.config {
            Some((p.clone(), Source::Flag("config")))
        } else if let Some(p) = env("BULLETIN_CONFIG") {
            Some((PathBuf::from(p), Source::Env("BULLETIN_CONFIG")))
        } else {
            Some((PathBuf::from("bulletin.toml"), Source::Default)).filter(|(p, _)| p.exists())
        };
        let file = match &chosen {
            Some((p, set_by)) => read_file(p, set_by)?,
            None => File::default(),
        };
        let path = chosen.map(|(p, _)| p);
        // Relative paths in a config file are relative to the file.
        let base_dir = path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base_dir.join(p) };

        // A URL in the file is not joined to the file's folder.
        let rel_db = |p: PathBuf| if Location::is_url(&p) { p } else { rel(p) };
        let (db, db_source) = choose(
            (flags.db.clone(), "db"),
            (env("BULLETIN_DB").map(PathBuf::from), "BULLETIN_DB"),
            (file.db.clone().map(rel_db), "db", path.as_deref()),
            rel("bulletin.db".into()),
        );
        let (db, db_password_source) =
            Location::parse_with_password(&db, env("BULLETIN_DB_PASSWORD").as_deref())
                .map_err(|e| Error::Invalid(format!("database (set by {db_source}): {e}")))?;
        // A password may come from the environment or a flag, never the
        // file, in either form (`user:password@`, `?password=`).
        if matches!(db_source, Source::File { .. }) && db_password_source == DbPassword::Url {
            return Err(Error::Invalid(format!(
                "{}: db carries a password; put it in BULLETIN_DB_PASSWORD instead",
                path.as_deref().unwrap_or(Path::new("config")).display()
            )));
        }
        let (outbox, outbox_source) = choose(
            (flags.outbox.clone(), "outbox"),
            (env("BULLETIN_OUTBOX").map(PathBuf::from), "BULLETIN_OUTBOX"),
            (file.outbox.clone().map(&rel), "outbox", path.as_deref()),
            rel("outbox".into()),
        );
        let templates = env("BULLETIN_TEMPLATES")
            .map(PathBuf::from)
            .unwrap_or_else(|| rel(file.templates.clone().unwrap_or_else(|| "templates".into())));
        let (base_url, base_url_source) = choose(
            (None, "base_url"),
            (env("BULLETIN_BASE_URL"), "BULLETIN_BASE_URL"),
            (file.base_url.clone(), "base_url", path.as_deref()),
            "http://127.0.0.1:8080".into(),
        );
        // Kept as the parser writes it (scheme and host in lower case),
        // without the trailing `/`.
        let base_url = http_url(
            "base_url",
            &base_url,
            &base_url_source,
            "the public address of `bulletin serve` that every link in the emails points at, such as https://news.example.org",
        )?
        .as_str()
        .trim_end_matches('/')
        .to_string();
        let pages_url = base_url_source
            .is_explicit()
            .then(|| url::Url::parse(&format!("{base_url}/")).ok())
            .flatten();
        let assets_url = match choose(
            (None, "assets_url"),
            (env("BULLETIN_ASSETS_URL"), "BULLETIN_ASSETS_URL"),
            (file.assets_url.clone(), "assets_url", path.as_deref()),
            String::new(),
        ) {
            (url, _) if url.is_empty() => None,
            (url, source) => Some(assets_url(&url, &source)?),
        };
        let listen = env("BULLETIN_LISTEN")
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let mut smtp = file.smtp;
        let (url, smtp_url_source) = choose(
            (flags.smtp_url.clone().map(Some), "smtp-url"),
            (env("BULLETIN_SMTP_URL").map(Some), "BULLETIN_SMTP_URL"),
            (smtp.url.clone().map(Some), "[smtp] url", path.as_deref()),
            None,
        );
        smtp.url = url;
        // A password may come from the environment or a flag, never the file.
        if let Some(url) = &smtp.url
            && env("BULLETIN_SMTP_URL").as_ref() != Some(url)
            && flags.smtp_url.as_ref() != Some(url)
            && url_has_password(url)
        {
            return Err(Error::Invalid(format!(
                "{}: smtp.url carries a password; put it in BULLETIN_SMTP_PASSWORD instead",
                path.as_deref().unwrap_or(Path::new("config")).display()
            )));
        }
        let serve = &file.serve;
        if serve.header_timeout_secs == 0 || serve.idle_timeout_secs == 0 {
            return Err(Error::Invalid(
                "serve.header_timeout_secs and serve.idle_timeout_secs must be at least 1".into(),
            ));
        }
        if serve.max_connections == 0 {
            return Err(Error::Invalid(
                "serve.max_connections must be at least 1".into(),
            ));
        }
        if let Some(imap) = &file.bounces.imap
            && url_has_password(&imap.url)
        {
            return Err(Error::Invalid(format!(
                "{}: bounces.imap.url carries a password; put it in BULLETIN_IMAP_PASSWORD instead",
                path.as_deref().unwrap_or(Path::new("config")).display()
            )));
        }
        if smtp.connections == 0 {
            return Err(Error::Invalid("smtp.connections must be at least 1".into()));
        }
        let mut bounces = file.bounces;
        if let Some(imap) = &mut bounces.imap {
            imap.ca_file = imap.ca_file.take().map(&rel);
        }
        let mut webhooks = file.webhooks;
        if let Some(ses) = &mut webhooks.ses {
            ses.certificates = rel(ses.certificates.clone());
        }
        let dkim = file.dkim.map(|mut d| {
            d.key_file = rel(d.key_file);
            d
        });
        let secrets = Secrets {
            current: env("BULLETIN_SECRET"),
            previous: env("BULLETIN_PREVIOUS_SECRETS")
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            db_password: env("BULLETIN_DB_PASSWORD"),
        };
        if let Some(at) = env("BULLETIN_NOW")
            && at.trim().parse::<i64>().is_err()
        {
            return Err(Error::Invalid(format!(
                "BULLETIN_NOW: {at:?} is not a time in unix seconds (it replaces the clock, for tests)"
            )));
        }
        if env("BULLETIN_TRACKING").is_some() {
            return Err(Error::Invalid(format!(
                "BULLETIN_TRACKING: {TRACKING_REMOVED}"
            )));
        }
        let mut sender = file.sender;
        if let Some(from) = env("BULLETIN_FROM") {
            sender.from = from;
        }
        Ok(Config {
            file: path,
            db,
            db_source,
            db_password_source,
            base_url,
            base_url_source,
            assets_url,
            pages_url,
            templates,
            outbox,
            outbox_source,
            listen,
            organisation: file.organisation,
            sender,
            smtp,
            smtp_url_source,
            smtp_password: env("BULLETIN_SMTP_PASSWORD"),
            imap_password: env("BULLETIN_IMAP_PASSWORD"),
            dkim,
            dispatch: file.dispatch,
            bounces,
            serve: file.serve,
            webhooks,
            postmark_password: env("BULLETIN_POSTMARK_PASSWORD"),
            mailgun_signing_key: env("BULLETIN_MAILGUN_SIGNING_KEY"),
            secrets,
        })
    }

    /// Where `db` came from and, for PostgreSQL, where its password did:
    /// "set by BULLETIN_DB, the password from BULLETIN_DB_PASSWORD". For a
    /// refused login, which is fixed in one of those two places.
    pub fn db_login_source(&self) -> String {
        match self.db.file() {
            Some(_) => format!("set by {}", self.db_source),
            None => format!(
                "set by {}, {}",
                self.db_source,
                password_source(self.db_password_source)
            ),
        }
    }

    /// The domain that VERP return paths and mailto unsubscribes use.
    pub fn bounce_domain(&self) -> String {
        if let Some(d) = &self.sender.bounce_domain {
            return d.clone();
        }
        domain_of(&self.sender.from).unwrap_or_else(|| "localhost".into())
    }
}

/// Where a PostgreSQL login's password came from, in words, for an error
/// about a refused login (never the password itself). Without one in the
/// URL or `BULLETIN_DB_PASSWORD`, the driver reads `PGPASSWORD`, then
/// `~/.pgpass`.
pub fn password_source(from: DbPassword) -> &'static str {
    match from {
        DbPassword::Url => "the password in that URL",
        DbPassword::Env => "the password from BULLETIN_DB_PASSWORD",
        DbPassword::Missing if std::env::var_os("PGPASSWORD").is_some() => {
            "the password from PGPASSWORD (none in the URL or BULLETIN_DB_PASSWORD)"
        }
        DbPassword::Missing => {
            "no password in the URL, BULLETIN_DB_PASSWORD or PGPASSWORD (then ~/.pgpass, if set)"
        }
    }
}

/// The domain part of `Name <user@domain>` or `user@domain`.
pub fn domain_of(mailbox: &str) -> Option<String> {
    let addr = mailbox
        .rsplit_once('<')
        .map(|(_, rest)| rest.trim_end_matches('>').trim())
        .unwrap_or(mailbox.trim());
    addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

fn url_has_password(url: &str) -> bool {
    // scheme://user:pass@host
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `tracking` never changed a byte of any message; setting it is refused so
/// nobody believes it does something.
const TRACKING_REMOVED: &str = "the tracking setting was removed (it never changed any message; bulletin does no open or click tracking); delete it";

fn read_file(path: &Path, set_by: &Source) -> Result<File> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Read {
        path: path.to_path_buf(),
        set_by: set_by.clone(),
        error,
    })?;
    toml::from_str(&text).map_err(|e| {
        let span = e.span().filter(|s| s.end > 0);
        let at = span.as_ref().map_or(0, |s| s.start);
        let message = if e.message().starts_with("unknown field `tracking`") {
            TRACKING_REMOVED.to_string()
        } else {
            // An error about the whole file (no span) names no setting.
            let setting = span.and_then(|_| setting_at(&text, at));
            value_error(e.message(), setting.as_deref())
        };
        Error::Parse {
            path: path.to_path_buf(),
            line: line_of(&text, at),
            message,
        }
    })
}

/// A value the settings cannot take, in words for the person who wrote it:
/// which setting, and what it takes ("a number", not "f64").
fn value_error(message: &str, setting: Option<&str>) -> String {
    const TYPES: [(&str, &str); 8] = [
        ("expected path string", "expected a path in quotes"),
        ("expected f64", "expected a number"),
        ("expected i64", "expected a whole number"),
        ("expected u64", "expected a whole number of at least 0"),
        ("expected u32", "expected a whole number of at least 0"),
        ("expected u16", "expected a whole number of at least 0"),
        ("expected usize", "expected a whole number of at least 0"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut words = message.trim_end().to_string();
    for (rust, plain) in TYPES {
        words = words.replace(rust, plain);
    }
    match setting {
        Some(setting) if !words.contains("unknown field") => format!("{setting}: {words}"),
        _ => words,
    }
}

/// The setting written at byte `at` of a TOML file, as `[section] key` (or
/// `key` at the top): the key whose `=` comes last before `at` on its line
/// (inside an inline table, the inner key), under the last table header
/// above that line. `None` when the line sets nothing before `at`.
fn setting_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let (left, _) = before[start..].rsplit_once('=')?;
    let key = left
        .rsplit(['{', ','])
        .next()?
        .trim()
        .trim_matches(['"', '\'']);
    if key.is_empty() || key.starts_with(['[', '#']) {
        return None;
    }
    let header = before[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(|h| {
            let close = if h.starts_with("[[") { "]]" } else { "]" };
            h.find(close).map(|end| &h[..end + close.len()])
        });
    Some(match header {
        Some(header) => format!("{header} {key}"),
        None => key.to_string(),
    })
}

/// `assets_url` checked: an absolute http(s) URL with a host ([`http_url`]),
/// ending in `/` so that `images/a.png` lands inside it, not beside it.
fn assets_url(text: &str, source: &Source) -> Result<url::Url> {
    let mut url = http_url(
        "assets_url",
        text,
        source,
        "the address where your images are online, such as https://example.org/newsletter/images/",
    )?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// The one rule for a setting that is a web address (`base_url`,
/// `assets_url`): an absolute http:// or https:// URL with a host, else an
/// error naming the setting, where it was set, and what to `write` instead.
/// `news.example.org` (no scheme) would make every link in the emails dead.
fn http_url(setting: &str, text: &str, source: &Source, write: &str) -> Result<url::Url> {
    // As written, but never a password.
    let shown = match text.contains('@') {
        true => crate::redact::url(text, crate::redact::Password::Masked),
        false => text.to_string(),
    };
    let bad = |why: &str| {
        Error::Invalid(format!(
            "{setting} {shown:?} (set by {source}) {why}; write {write}"
        ))
    };
    let not_absolute = "is not an absolute http:// or https:// URL";
    let text = text.trim();
    // The parser forgives `https:/host` and `https:host`; a link in an
    // email is read by mail programs, which do not.
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(bad(not_absolute));
    }
    let url = url::Url::parse(text).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !url.has_host() {
        return Err(bad(not_absolute));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "has a user name or password, which every link would show",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "has a query or a fragment (?… or #…), which no link can carry on",
        ));
    }
    Ok(url)
}

/// `PATH (set by SOURCE)`, or just the path for the `bulletin.toml` found
/// in the current folder (nobody set it).
fn set_by_text(path: &Path, set_by: &Source) -> String {
    match set_by {
        Source::Default => path.display().to_string(),
        _ => format!("{} (set by {set_by})", path.display()),
    }
}

/// An io error in words, without the `(os error 2)` noise for the usual ones.
fn io_text(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "is a folder, not a file".into(),
        _ => error.to_string(),
    }
}

/// 1-based line number of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A config file `b.toml` holding `text` in a fresh folder, and the
    /// flags that load it: (folder, file, flags).
    fn config_file(text: &str) -> (tempfile::TempDir, PathBuf, Overrides) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, text).unwrap();
        let flags = Overrides {
            config: Some(path.clone()),
            ..Default::default()
        };
        (dir, path, flags)
    }

    fn load(flags: &Overrides, vars: &[(&str, &str)]) -> Result<Config> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(flags, &|k| vars.get(k).cloned())
    }

    #[test]
    fn assets_url_is_absolute_http_and_says_where_it_came_from() {
        let flags = Overrides {
            no_config: true,
            ..Default::default()
        };
        let c = load(
            &flags,
            &[("BULLETIN_ASSETS_URL", "https://cdn.example.org/news")],
        )
        .unwrap();
        assert_eq!(
            c.assets_url.unwrap().as_str(),
            "https://cdn.example.org/news/"
        );
        assert!(load(&flags, &[]).unwrap().assets_url.is_none());
        for bad in ["images/", "ftp://x.org/", "https://"] {
            let err = load(&flags, &[("BULLETIN_ASSETS_URL", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("assets_url {bad:?} (set by BULLETIN_ASSETS_URL)")),
                "{err}"
            );
        }
        let (_dir, path, file) =
            config_file("base_url = \"https://news.example.org\"\nassets_url = \"logo\"\n");
        let err = load(&file, &[]).unwrap_err().to_string();
        assert!(
            err.contains(&format!("(set by assets_url in {})", path.display())),
            "{err}"
        );
        std::fs::write(&path, "base_url = \"https://news.example.org\"\n").unwrap();
        let c = load(&file, &[]).unwrap();
        assert!(c.base_url_source.is_explicit());
        assert_eq!(c.pages_url.unwrap().as_str(), "https://news.example.org/");
        assert!(load(&flags, &[]).unwrap().pages_url.is_none());
    }

    /// `news.example.org` as base_url once sent a campaign whose every link
    /// (List-Unsubscribe too) was dead: it is refused at load, naming the
    /// setting and where it was set; the default stays valid.
    #[test]
    fn base_url_is_absolute_http_and_says_where_it_came_from() {
        let flags = Overrides {
            no_config: true,
            ..Default::default()
        };
        let c = load(&flags, &[]).unwrap();
        assert_eq!(
            (c.base_url.as_str(), c.base_url_source),
            ("http://127.0.0.1:8080", Source::Default)
        );
        let c = load(
            &flags,
            &[("BULLETIN_BASE_URL", " https://n.example.org/x/ ")],
        )
        .unwrap();
        assert_eq!(c.base_url, "https://n.example.org/x");
        let c = load(
            &flags,
            &[("BULLETIN_BASE_URL", "HTTPS://News.Example.org/")],
        )
        .unwrap();
        assert_eq!(
            c.base_url, "https://news.example.org",
            "as the parser writes it"
        );
        let err = load(
            &flags,
            &[("BULLETIN_BASE_URL", "https://u:s3cret@n.example.org")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("user name or password") && !err.contains("s3cret"),
            "{err}"
        );
        for (bad, why) in [
            (
                "news.example.org",
                "is not an absolute http:// or https:// URL",
            ),
            ("/news", "is not an absolute http:// or https:// URL"),
            (
                "ftp://news.example.org",
                "is not an absolute http:// or https:// URL",
            ),
            (
                "mailto:news@example.org",
                "is not an absolute http:// or https:// URL",
            ),
            ("https://", "is not a URL: empty host"),
            (
                "https:/news.example.org",
                "is not an absolute http:// or https:// URL",
            ),
            (
                "https:news.example.org",
                "is not an absolute http:// or https:// URL",
            ),
            (
                "https://news.example.org/?list=1",
                "has a query or a fragment (?… or #…), which no link can carry on",
            ),
            (
                "https://news.example.org/#top",
                "has a query or a fragment (?… or #…), which no link can carry on",
            ),
        ] {
            let err = load(&flags, &[("BULLETIN_BASE_URL", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!(
                    "base_url {bad:?} (set by BULLETIN_BASE_URL) {why}; write "
                )),
                "{err}"
            );
        }
        let (_dir, path, file) = config_file("base_url = \"news.example.org\"\n");
        let err = load(&file, &[]).unwrap_err().to_string();
        assert!(
            err.contains(&format!("(set by base_url in {})", path.display())),
            "{err}"
        );
    }

    /// A misspelt config path once printed the io error twice and named no
    /// setting: one clean message naming the flag or variable.
    #[test]
    fn a_missing_config_file_names_the_setting_once() {
        let flags = Overrides {
            config: Some("bulletn.toml".into()),
            ..Default::default()
        };
        let err = load(&flags, &[]).unwrap_err();
        assert!(std::error::Error::source(&err).is_none(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "bulletn.toml (set by --config flag): no such file"
        );
        let err = load(
            &Overrides::default(),
            &[("BULLETIN_CONFIG", "bulletn.toml")],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "bulletn.toml (set by BULLETIN_CONFIG): no such file");
        let dir = tempfile::tempdir().unwrap();
        let flags = Overrides {
            config: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let err = load(&flags, &[]).unwrap_err().to_string();
        assert!(
            err.ends_with("(set by --config flag): is a folder, not a file"),
            "{err}"
        );
    }

    #[test]
    fn defaults_without_file() {
        let flags = Overrides {
            no_config: true,
            ..Default::default()
        };
        let c = load(&flags, &[]).unwrap();
        assert_eq!(c.db, Location::File(PathBuf::from("bulletin.db")));
        assert_eq!(c.outbox, PathBuf::from("outbox"));
        assert_eq!(c.outbox_source, Source::Default);
        assert_eq!(c.db_source.to_string(), "default");
        assert!(c.smtp.url.is_none());
    }

    #[test]
    fn sources_say_where_db_and_outbox_came_from() {
        let (dir, path, flags) = config_file("db = \"file.db\"\noutbox = \"out\"\n");
        let c = load(&flags, &[]).unwrap();
        assert_eq!(c.db_source.to_string(), format!("db in {}", path.display()));
        assert_eq!(c.outbox, dir.path().join("out"));
        assert!(c.outbox_source.is_explicit());
        let c = load(&flags, &[("BULLETIN_DB", "e.db"), ("BULLETIN_OUTBOX", "o")]).unwrap();
        assert_eq!(c.db_source.to_string(), "BULLETIN_DB");
        assert_eq!(c.outbox_source.to_string(), "BULLETIN_OUTBOX");
        let flags = Overrides {
            db: Some("f.db".into()),
            outbox: Some("fo".into()),
            ..flags
        };
        let c = load(&flags, &[("BULLETIN_DB", "e.db")]).unwrap();
        assert_eq!(c.db_source.to_string(), "--db flag");
        assert_eq!(c.outbox_source.to_string(), "--outbox flag");
    }

    #[test]
    fn db_is_a_file_or_a_postgres_url_and_other_urls_are_refused() {
        for url in ["mysql://h/db", "sqlite://x.db", "postgres://u@h"] {
            let flags = Overrides {
                no_config: true,
                db: Some(url.into()),
                ..Default::default()
            };
            let err = load(&flags, &[]).unwrap_err().to_string();
            assert!(err.contains("--db flag"), "{err}");
        }
        let flags = Overrides {
            no_config: true,
            ..Default::default()
        };
        let c = load(
            &flags,
            &[
                ("BULLETIN_DB", "postgres://news@db.example/bulletin"),
                ("BULLETIN_DB_PASSWORD", "pw"),
            ],
        )
        .unwrap();
        let Location::Postgres(url) = &c.db else {
            panic!("{:?}", c.db)
        };
        assert_eq!(url.password(), Some("pw"));
        assert_eq!(c.db_source.to_string(), "BULLETIN_DB");
        assert!(
            !c.db.to_string().contains("pw"),
            "shown without the password"
        );
        // In a config file, a URL is not joined to the file's folder.
        let (_dir, path, from_file) = config_file("db = \"postgres://u@h/d\"\n");
        let c = load(&from_file, &[]).unwrap();
        assert_eq!(c.db.to_string(), "postgres://u@h/d");
        std::fs::write(&path, "db = \"postgres://u:pw@h/d\"\n").unwrap();
        let err = load(&from_file, &[]).unwrap_err().to_string();
        assert!(
            err.contains("BULLETIN_DB_PASSWORD") && !err.contains("pw@"),
            "{err}"
        );
        let c = load(&flags, &[("BULLETIN_DB", "data/b:1.db")]).unwrap();
        assert_eq!(c.db, Location::File("data/b:1.db".into()));
    }

    #[test]
    fn the_database_password_source_is_named_never_the_password() {
        let flags = Overrides {
            no_config: true,
            ..Default::default()
        };
        for (db, env_password, expect, said) in [
            (
                "postgres://u@h/d",
                Some("pw-env"),
                DbPassword::Env,
                "set by BULLETIN_DB, the password from BULLETIN_DB_PASSWORD",
            ),
            (
                "postgres://u:pw-url@h/d",
                Some("pw-env"),
                DbPassword::Url,
                "set by BULLETIN_DB, the password in that URL",
            ),
            (
                "postgres://u@h/d?password=pw-query",
                None,
                DbPassword::Url,
                "set by BULLETIN_DB, the password in that URL",
            ),
            (
                "postgres://u@h/d",
                None,
                DbPassword::Missing,
                "set by BULLETIN_DB, no password in the URL, BULLETIN_DB_PASSWORD or PGPASSWORD (then ~/.pgpass, if set)",
            ),
            (
                "b.db",
                Some("pw-env"),
                DbPassword::Missing,
                "set by BULLETIN_DB",
            ),
        ] {
            let mut vars = vec![("BULLETIN_DB", db)];
            vars.extend(env_password.map(|p| ("BULLETIN_DB_PASSWORD", p)));
            let c = load(&flags, &vars).unwrap();
            assert_eq!(c.db_password_source, expect, "{db}");
            let shown = c.db_login_source();
            assert_eq!(shown, said, "{db}");
            assert!(!shown.contains("pw-"), "{shown}");
        }
    }

    #[test]
    fn tracking_is_refused_naming_the_file() {
        let (_dir, _path, flags) = config_file("db = \"x\"\ntracking = false\n");
        let err = load(&flags, &[]).unwrap_err().to_string();
        assert!(
            err.contains("b.toml:2:") && err.contains("tracking"),
            "{err}"
        );
        let flags = Overrides {
            no_config: true,
            ..Default::default()
        };
        let err = load(&flags, &[("BULLETIN_TRACKING", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("BULLETIN_TRACKING"), "{err}");
    }

    #[test]
    fn a_clock_that_is_not_a_number_is_refused() {
        let flags = Overrides {
            no_config: true,
            ..Default::default()
        };
        let err = load(&flags, &[("BULLETIN_NOW", "tomorrow")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("BULLETIN_NOW: \"tomorrow\""), "{err}");
        assert!(load(&flags, &[("BULLETIN_NOW", "1800000000")]).is_ok());
    }

    #[test]
    fn precedence_file_env_flag() {
        let (dir, _path, flags) =
            config_file("db = \"file.db\"\nbase_url = \"https://file.example/\"\n");
        let c = load(&flags, &[]).unwrap();
        assert_eq!(
            c.db,
            Location::File(dir.path().join("file.db")),
            "relative to the file"
        );
        assert_eq!(c.base_url, "https://file.example");
        let c = load(&flags, &[("BULLETIN_DB", "env.db")]).unwrap();
        assert_eq!(c.db, Location::File(PathBuf::from("env.db")));
        let flags = Overrides {
            db: Some("flag.db".into()),
            ..flags
        };
        let c = load(&flags, &[("BULLETIN_DB", "env.db")]).unwrap();
        assert_eq!(c.db, Location::File(PathBuf::from("flag.db")));
    }

    /// The `bulletin.toml` at the top of the repository is the documented
    /// example the README points at (a scratch file once replaced it, and the
    /// quick start then made `b.db`): it loads, keeps the default database
    /// name beside it, and explains its settings.
    #[test]
    fn the_example_config_loads_and_is_documented() {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/bulletin.toml"));
        let flags = Overrides {
            config: Some(path.clone()),
            ..Default::default()
        };
        let c = load(&flags, &[]).unwrap();
        assert_eq!(
            c.db,
            Location::File(path.parent().unwrap().join("bulletin.db"))
        );
        assert!(c.base_url.starts_with("https://"), "{}", c.base_url);
        let text = std::fs::read_to_string(&path).unwrap();
        for section in [
            "[organisation]",
            "[sender]",
            "[smtp]",
            "[dispatch]",
            "[bounces]",
        ] {
            assert!(text.lines().any(|l| l == section), "{section}");
        }
        let comments = text
            .lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count();
        assert!(comments > 30, "{comments} comment lines");
    }

    #[test]
    fn bad_file_names_line() {
        let (_dir, _path, flags) = config_file("db = \"x\"\n\nnope = 3\n");
        let err = load(&flags, &[]).unwrap_err().to_string();
        assert!(err.contains("b.toml:3:"), "{err}");
    }

    /// A value of the wrong kind names the file, the line and the setting,
    /// and says what it takes in words (not "f64").
    #[test]
    fn a_wrong_value_names_its_setting_and_what_it_takes() {
        let cases = [
            (
                "[smtp]\nconnections = 4\nrate = \"fast\"\n",
                "b.toml:3: [smtp] rate: invalid type: string \"fast\", expected a number",
            ),
            (
                "db = \"x\"\n[dispatch] # retries\nmax_attempts = 3\nin_flight = \"resnd\"\n",
                "b.toml:4: [dispatch] in_flight: unknown variant `resnd`, expected `unknown` or `resend`",
            ),
            (
                "db = 3\n",
                "b.toml:1: db: invalid type: integer `3`, expected a path in quotes",
            ),
            (
                "smtp = { connections = 2, 'rate' = \"fast\" }\n",
                "b.toml:1: rate: invalid type: string \"fast\", expected a number",
            ),
        ];
        for (text, said) in cases {
            let (_dir, _path, flags) = config_file(text);
            let err = load(&flags, &[]).unwrap_err().to_string();
            assert!(err.ends_with(said), "{err}");
        }
        let (_dir, _path, flags) = config_file("[dispatch]\nin_flight = \"resend\"\n");
        let c = load(&flags, &[]).unwrap();
        assert_eq!(
            c.dispatch.in_flight,
            crate::store::deliveries::InFlight::Resend
        );
    }

    #[test]
    fn imap_and_webhooks_sections() {
        let (dir, path, flags) = config_file(
            "[bounces.imap]\nurl = \"imaps://b@imap.example.org/INBOX\"\n\
             [webhooks.ses]\ntopic_arn = \"arn:t\"\n[webhooks.mailgun]\n\
             [webhooks.postmark]\nuser = \"pm\"\n",
        );
        let c = load(
            &flags,
            &[
                ("BULLETIN_IMAP_PASSWORD", "pw"),
                ("BULLETIN_MAILGUN_SIGNING_KEY", "key"),
            ],
        )
        .unwrap();
        let imap = c.bounces.imap.unwrap();
        assert_eq!((imap.processed.as_str(), imap.poll_secs), ("processed", 60));
        assert_eq!(c.imap_password.as_deref(), Some("pw"));
        assert_eq!(c.mailgun_signing_key.as_deref(), Some("key"));
        assert_eq!(c.webhooks.mailgun.unwrap().max_age_secs, 300);
        assert_eq!(c.webhooks.postmark.unwrap().user, "pm");
        assert!(c.webhooks.sendgrid.is_none());
        // The certificate folder is relative to the file.
        assert_eq!(
            c.webhooks.ses.unwrap().certificates,
            dir.path().join("sns-certificates")
        );
        // A password in the IMAP URL is refused, naming where it goes.
        std::fs::write(&path, "[bounces.imap]\nurl = \"imaps://b:pw@h/INBOX\"\n").unwrap();
        let err = load(&flags, &[]).unwrap_err().to_string();
        assert!(err.contains("BULLETIN_IMAP_PASSWORD"), "{err}");
        // A misspelt key names the line.
        std::fs::write(&path, "[webhooks.mailgun]\nmax_age = 3\n").unwrap();
        let err = load(&flags, &[]).unwrap_err().to_string();
        assert!(err.contains("b.toml:2"), "{err}");
    }

    #[test]
    fn password_in_file_refused() {
        let (_dir, _path, flags) = config_file("[smtp]\nurl = \"smtp://u:secret@host\"\n");
        let err = load(&flags, &[]).unwrap_err().to_string();
        assert!(err.contains("BULLETIN_SMTP_PASSWORD"), "{err}");
        for db in [
            "postgres://u:secret@h/d",
            "postgres://u@h/d?password=secret",
        ] {
            let (_dir, _path, flags) = config_file(&format!("db = \"{db}\"\n"));
            let err = load(&flags, &[]).unwrap_err().to_string();
            assert!(
                err.contains("db carries a password") && err.contains("BULLETIN_DB_PASSWORD"),
                "{db}: {err}"
            );
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        let flags = Overrides {
            no_config: true,
            ..Default::default()
        };
        let long = "0123456789abcdef0123456789abcdef";
        let c = load(&flags, &[("BULLETIN_SECRET", "a")]).unwrap();
        let err = c.secrets.check().unwrap_err().to_string();
        assert!(
            err.contains("BULLETIN_SECRET") && err.contains("openssl rand -hex 32"),
            "{err}"
        );
        let vars = [
            ("BULLETIN_SECRET", long),
            ("BULLETIN_PREVIOUS_SECRETS", "x, short"),
        ];
        let err = load(&flags, &vars).unwrap().secrets.check().unwrap_err();
        assert!(
            err.to_string()
                .contains("secret 1 of BULLETIN_PREVIOUS_SECRETS"),
            "{err}"
        );
        let vars = [
            ("BULLETIN_SECRET", long),
            ("BULLETIN_PREVIOUS_SECRETS", long),
        ];
        load(&flags, &vars).unwrap().secrets.check().unwrap();
        load(&flags, &[]).unwrap().secrets.check().unwrap();
    }

    #[test]
    fn domain_of_mailbox() {
        assert_eq!(domain_of("A B <x@Ex.org>").as_deref(), Some("ex.org"));
        assert_eq!(domain_of("x@y.z").as_deref(), Some("y.z"));
        assert_eq!(domain_of("nobody"), None);
    }
}

//! Sending a frozen campaign to its audience, each recipient once.
//!
//! A run holds the campaign's lease on SQLite (so overlapping runs never
//! send the same campaign); on PostgreSQL any number of runs (workers, on
//! any hosts) share it, each claiming its own rows (`Sharing`). A run
//! queues one delivery row per recipient, and has N workers, one
//! SMTP connection each, send while a single ledger task group-commits the
//! delivery log: a row is marked `sending` (committed) before its SMTP
//! transaction and its outcome is committed after. The only module that
//! holds a transport.
//!
//! What a failed attempt means is decided in `verdict` (bounce, refused,
//! retry, stop, unknown); the worker here turns the verdict into an
//! outcome, keeps the streak of alike refusals that stops a run, and
//! abandons a send `STOP_GRACE` after SIGINT/SIGTERM.

pub mod transport;
pub mod verdict;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::compose;
use crate::links::{self, Signer, Urls};
use crate::render::{Compiled, Personalised, Recipient};
use crate::store::deliveries::{CampaignRow, CampaignStatus, Claimed, InFlight, Job, Outcome};
use crate::store::now;
use crate::store::{Engine, Store};
use transport::Transport;
pub use verdict::Verdict;

/// How long work in flight may take after SIGINT/SIGTERM before it is
/// abandoned: a run ends within seconds whatever the server does.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The same refusal (not the recipients' fault) for this many recipients
/// in a row stops the run: the server is refusing us, not them.
pub const STREAK_LIMIT: usize = 20;

/// Errors of a run. `verdict` says what a failed attempt means for the
/// recipient (the worker branches on it); `is_transient` / `is_permanent` /
/// `status` classify SMTP replies more coarsely.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reply from the server to one message.
    #[error("{stage}: {code} {message}")]
    Reply {
        stage: &'static str,
        code: u16,
        message: String,
    },
    /// The connection broke before the message was sent; it is retried.
    #[error("connection lost: {0}")]
    Dropped(String),
    /// No answer after the message was sent (timeout, closed connection):
    /// it may have been delivered, so it is not simply retried.
    #[error("no answer after the message was sent ({0}); it may have been delivered")]
    Unanswered(String),
    /// The same refusal for many recipients in a row: the run stops.
    #[error(
        "{count} recipients in a row refused with \"{reply}\": the server refuses our mail, not them; nobody was marked bounced and they stay queued"
    )]
    Refusing { count: usize, reply: String },
    /// Cannot talk to the server at all (down, TLS, auth): the run stops.
    #[error("{0}")]
    Fatal(String),
    #[error("{0}")]
    Config(String),
    /// A task of the run stopped without a result (it panicked): a fault
    /// in bulletin, not in the server, the database or the settings.
    #[error("{0} (a fault in bulletin itself; please report it)")]
    Internal(String),
    /// The SMTP URL does not parse: `url` as shown (its password removed)
    /// and why. The command adds where the URL was set.
    #[error("SMTP URL {url}: {why}")]
    BadUrl { url: String, why: String },
    #[error("outbox: {0}")]
    Outbox(String),
    /// The composer's words as they are (they name what failed).
    #[error(transparent)]
    Compose(#[from] compose::Error),
    /// Shown with its source (`{:#}`, as `main` prints errors): the store's
    /// words follow once.
    #[error("database")]
    Store(#[from] crate::store::Error),
    #[error("another run took over the campaign's lease")]
    LeaseLost,
    /// Another worker found this one's heartbeat too old and settled its
    /// rows: it must not send on.
    #[error("this worker was taken for dead (no heartbeat within lease_secs) and its rows settled")]
    WorkerLost,
    /// The address (a UTF-8 local part) needs SMTPUTF8 and the server does
    /// not offer it. Permanent for this delivery, but not the recipient's
    /// fault: never a hard bounce, the subscriber stays active.
    #[error("the SMTP server does not support SMTPUTF8, which {0} needs")]
    NoSmtpUtf8(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The SMTP reply code, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Reply { code, .. } => Some(*code),
            _ => None,
        }
    }
    /// Worth retrying later: 4xx replies and lost connections.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Dropped(_)) || self.status().is_some_and(|c| (400..500).contains(&c))
    }
    /// Refused for good: 5xx replies, and an address the server cannot
    /// take (`NoSmtpUtf8`, which is not a bounce).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::NoSmtpUtf8(_))
            || self.status().is_some_and(|c| (500..600).contains(&c))
    }
    /// What this failure means for the recipient (see `verdict`).
    pub fn verdict(&self) -> Verdict {
        match self {
            Error::Reply {
                stage,
                code,
                message,
            } => verdict::judge(stage, *code, message),
            Error::Dropped(_) => Verdict::Retry,
            Error::Unanswered(_) => Verdict::Unknown,
            // Not a reply, yet permanent for this delivery alone (an address
            // this server cannot take): refused, the subscriber untouched.
            other if other.is_permanent() => Verdict::Refused,
            // Server down, TLS, AUTH, the outbox, the database: stop.
            _ => Verdict::Stop,
        }
    }
    /// What makes two refusals "the same": stage, code and enhanced code.
    fn refusal_key(&self) -> String {
        match self {
            Error::Reply {
                stage,
                code,
                message,
            } => format!(
                "{stage}: {code} {}",
                verdict::enhanced_code(message).unwrap_or("")
            )
            .trim_end()
            .to_string(),
            other => other.to_string(),
        }
    }

    fn from_smtp(e: lettre::transport::smtp::Error, stage: &'static str) -> Error {
        match e.status() {
            Some(code) => Error::Reply {
                stage,
                code: u16::from(code),
                message: reply_text(&e),
            },
            None if e.is_timeout() => Error::Dropped(format!("{stage}: timed out")),
            None => Error::Dropped(format!("{stage}: {e}")),
        }
    }

    fn connect(e: lettre::transport::smtp::Error, addr: &str) -> Error {
        match e.status() {
            Some(code) if (400..500).contains(&u16::from(code)) => Error::Reply {
                stage: "connect",
                code: u16::from(code),
                message: format!("{} (from {addr})", reply_text(&e)),
            },
            _ => Error::Fatal(format!("{addr}: {e}")),
        }
    }
}

/// The server's reply text of a lettre error: "permanent error (550):
/// 5.1.1 user unknown" -> "5.1.1 user unknown".
fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    let text = e.to_string();
    text.split_once("): ")
        .map_or(text.as_str(), |(_, m)| m)
        .trim()
        .to_string()
}

/// The campaign as frozen in the database when it is queued: later edits to
/// the file change nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frozen {
    pub compiled: Compiled,
    pub from: String,
    pub reply_to: Option<String>,
    /// The first list (`campaigns.list_id`).
    pub list_slug: String,
    pub list_name: String,
    /// Every list the campaign goes to, in front matter order, the first
    /// included. Empty in campaigns frozen before campaigns had several
    /// lists: their one list is `list_slug`.
    #[serde(default)]
    pub lists: Vec<FrozenList>,
    /// The front matter's `archive` (campaigns frozen before it existed:
    /// true). `store::archive` reads it from the row.
    #[serde(default = "archive_by_default")]
    pub archive: bool,
    /// Front matter `resend_to_new`/`resend_until` (unix seconds): until
    /// then `dispatch` reopens the sent campaign for people who joined
    /// since (`Store::reopen_for_new`, which reads it from the row).
    #[serde(default)]
    pub resend_until: Option<i64>,
}

/// One list of a frozen campaign, as its List-Id header names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FrozenList {
    pub id: i64,
    pub slug: String,
    pub name: String,
}

impl Frozen {
    /// The List-Id header value of each of the campaign's lists, by list
    /// id; `first_list` is `campaigns.list_id`, the one list of campaigns
    /// frozen before several.
    fn list_headers(&self, first_list: i64, domain: &str) -> HashMap<i64, String> {
        let mut headers: HashMap<i64, String> = self
            .lists
            .iter()
            .map(|l| (l.id, compose::list_id(&l.name, &l.slug, domain)))
            .collect();
        headers
            .entry(first_list)
            .or_insert_with(|| compose::list_id(&self.list_name, &self.list_slug, domain));
        headers
    }
}

fn archive_by_default() -> bool {
    true
}

/// Everything a run needs besides the database.
#[derive(Clone)]
pub struct Settings {
    pub transport: Transport,
    pub connections: usize,
    /// Messages per second across all connections; 0 = unlimited.
    pub rate: f64,
    pub messages_per_connection: usize,
    pub signer: Signer,
    pub urls: Urls,
    pub bounce_domain: String,
    pub lease_secs: i64,
    pub max_attempts: i64,
    pub retry_base_secs: i64,
    /// Retries due within this many seconds are waited for in the run;
    /// later ones are left to the next `dispatch`.
    pub retry_wait_secs: i64,
    pub in_flight: InFlight,
    pub dkim: Option<Arc<crate::dkim::DkimSigner>>,
    /// Identifies this run's lease: `host:pid:random`.
    pub owner: String,
    /// Where `transport` was chosen, for errors: "BULLETIN_SMTP_URL",
    /// "outbox in /srv/bulletin/bulletin.toml".
    pub transport_source: String,
}

/// Sends single transactional messages (the double opt-in email) through
/// the configured transport, one connection per message.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    /// Domain of the Message-ID.
    domain: String,
    dkim: Option<Arc<crate::dkim::DkimSigner>>,
}

impl Mailer {
    pub fn new(transport: Transport, domain: &str) -> Mailer {
        Mailer {
            transport,
            domain: domain.to_string(),
            dkim: None,
        }
    }

    /// Signs every message with this key, as campaigns are.
    pub fn with_dkim(mut self, dkim: Option<Arc<crate::dkim::DkimSigner>>) -> Mailer {
        self.dkim = dkim;
        self
    }

    /// Sends a plain-text message; returns the server's reply.
    pub async fn send_text(
        &self,
        from: &str,
        to: &str,
        subject: &str,
        text: &str,
    ) -> Result<String> {
        use lettre::message::{Mailbox, header::ContentType};
        let parse = |a: &str| -> Result<Mailbox> {
            a.parse()
                .map_err(|e| Error::Config(format!("address {a:?}: {e}")))
        };
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let message = lettre::Message::builder()
            .from(parse(from)?)
            .to(parse(to)?)
            .subject(subject)
            .date(SystemTime::now())
            .message_id(Some(format!("<confirm.{nonce:x}@{}>", self.domain)))
            .header(ContentType::TEXT_PLAIN)
            .body(text.to_string())
            .map_err(|e| Error::Compose(compose::Error::Message(e)))?;
        let bytes = compose::wire_bytes(&message, self.dkim.as_deref())?;
        let mut sender = self.transport.sender();
        let name = format!("confirm-{nonce:x}");
        let reply = sender.send(message.envelope(), &bytes, &name, 1).await;
        sender.close().await;
        reply
    }
}

/// Live counts for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicU64,
    pub sent: AtomicU64,
    pub deferred: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
    /// While the run waits for in-run retries: how many people wait, and
    /// when the first retry is due (unix seconds); 0 otherwise.
    pub waiting: AtomicU64,
    pub next_retry_at: std::sync::atomic::AtomicI64,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub sent: u64,
    /// People whose delivery waits for a retry when the run ends (not
    /// attempts: what `status` calls deferred).
    pub deferred: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Sent without an answer (timeout, closed): maybe delivered, not resent.
    pub unknown: u64,
    /// Rows left in flight by an earlier run and settled by policy.
    pub in_flight_resolved: u64,
    /// The campaign has nothing left to send.
    pub finished: bool,
    /// This run moved the campaign to finished (not another worker, whose
    /// last rows this run found settled: cron hears of it once).
    pub finished_here: bool,
    /// Stopped by a signal before the end.
    pub interrupted: bool,
    /// `bulletin cancel` stopped the campaign (before or during this run).
    pub cancelled: bool,
    /// Workers sharing the campaign (PostgreSQL) hold or will claim the
    /// rows still open: the campaign goes on without this run.
    pub left_to_others: bool,
}

/// The lease owner name of this process: `host:pid:nonce:space`, where
/// `space` names this boot of this machine and its process-id namespace, so
/// that a process id is only ever looked up where it means the same process
/// (two containers may share a host name and not their process ids).
pub fn owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let nonce: u64 = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    format!("{host}:{}:{nonce:x}:{}", std::process::id(), pid_space())
}

/// This boot of this machine and this process-id namespace, as a short
/// hash ("unknown" when /proc does not say: then no id is looked up).
fn pid_space() -> String {
    use sha2::Digest as _;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let namespace = std::fs::read_link("/proc/self/ns/pid");
    match (boot, namespace) {
        (Ok(boot), Ok(namespace)) => {
            let digest = sha2::Sha256::digest(format!("{}|{}", boot.trim(), namespace.display()));
            digest[..6].iter().map(|b| format!("{b:02x}")).collect()
        }
        _ => "unknown".into(),
    }
}

/// A lease (or worker id) held by a process that no longer runs, known
/// without waiting for its lease or heartbeat to expire: only a process of
/// this machine's boot and process-id namespace, looked up in /proc.
fn dead_owner(owner: Option<&str>) -> Option<String> {
    let owner = owner?;
    let mut parts = owner.split(':');
    let _host = parts.next()?;
    let pid: u32 = parts.next()?.parse().ok()?;
    let _nonce = parts.next()?;
    let space = parts.next()?;
    (space != "unknown"
        && space == pid_space()
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists())
    .then(|| owner.to_string())
}

/// Worker `id` was a process of this machine that no longer runs: dead
/// now, whatever its last heartbeat says.
pub fn is_gone(id: &str) -> bool {
    dead_owner(Some(id)).is_some()
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn only_a_process_of_this_machine_and_namespace_is_dead_at_once() {
        let me = owner_name();
        let parts: Vec<&str> = me.split(':').collect();
        assert_eq!(parts.len(), 4, "{me}");
        assert_eq!(parts[1], std::process::id().to_string());
        // A process id that is not running, here: dead at once.
        let gone = format!("{}:999999999:1:{}", parts[0], parts[3]);
        assert_eq!(dead_owner(Some(&gone)), Some(gone.clone()));
        // The same host name in another namespace (a container), or a name
        // from before the namespace was recorded: left to its heartbeat.
        let elsewhere = format!("{}:999999999:1:0123456789ab", parts[0]);
        assert_eq!(dead_owner(Some(&elsewhere)), None);
        assert_eq!(dead_owner(Some(&format!("{}:999999999:1", parts[0]))), None);
        // This process is alive.
        assert_eq!(dead_owner(Some(&me)), None);
    }
}

/// Why a run did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// Another live run holds the lease.
    Busy(String),
}

/// How a run holds its place in a campaign. SQLite: the campaign's lease,
/// one run per campaign (as before several workers). PostgreSQL: no lease;
/// any number of workers share the campaign, each claiming its own rows
/// (`FOR UPDATE SKIP LOCKED`) and beating its heartbeat in `workers`. Both
/// register the worker, so `status` shows who is sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    Lease,
    Workers,
}

impl Sharing {
    fn of(store: &Store) -> Sharing {
        match store.engine() {
            Engine::Sqlite => Sharing::Lease,
            Engine::Postgres => Sharing::Workers,
        }
    }

    /// Settles the rows a dead run left `sending`: on SQLite every such
    /// row (the lease says no other run is alive); with workers only the
    /// rows of workers whose heartbeat is older than the lease.
    async fn settle_in_flight(self, store: &Store, campaign_id: i64, s: &Settings) -> Result<u64> {
        let now = now();
        Ok(match self {
            Sharing::Lease => {
                store
                    .resolve_in_flight(campaign_id, s.in_flight, now)
                    .await?
            }
            Sharing::Workers => {
                // A worker of this host whose process is gone is dead at
                // once, as a lease is on SQLite; others after `lease_secs`.
                let alive_since = now - s.lease_secs;
                for w in store.live_workers(alive_since).await? {
                    if dead_owner(Some(&w.id)).is_some() {
                        store.unregister_worker(&w.id).await?;
                    }
                }
                match store
                    .settle_dead_workers(campaign_id, s.in_flight, alive_since, now)
                    .await
                {
                    Ok(settled) => settled,
                    // A round of a worker taken for dead but still running
                    // holds the rows (and a deadlock may pick this side):
                    // the next heartbeat tries again.
                    Err(e) if e.is_transient() => 0,
                    Err(e) => return Err(e.into()),
                }
            }
        })
    }

    /// Says this run is still alive (the lease, the heartbeat); with
    /// workers, also settles the rows of any worker found dead meanwhile
    /// and returns how many. An error when another run took the lease or
    /// found this worker dead.
    async fn renew(self, store: &Store, campaign_id: i64, s: &Settings) -> Result<u64> {
        let now = now();
        match self {
            Sharing::Lease => {
                if !store
                    .renew_lease(campaign_id, &s.owner, now + s.lease_secs)
                    .await?
                {
                    return Err(Error::LeaseLost);
                }
                store.heartbeat(&s.owner, now).await?;
            }
            Sharing::Workers => {
                if !store.heartbeat(&s.owner, now).await? {
                    return Err(Error::WorkerLost);
                }
                return self.settle_in_flight(store, campaign_id, s).await;
            }
        }
        Ok(0)
    }
}

/// The host of a worker id (`host:pid:random`).
fn worker_host(owner: &str) -> &str {
    owner.split(':').next().unwrap_or(owner)
}

/// Sends what is due of one campaign. Returns `Ok(Err(NotStarted))` when
/// another run holds it (SQLite only: on PostgreSQL runs share campaigns).
pub async fn run(
    store: &Store,
    campaign: &CampaignRow,
    settings: &Settings,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<std::result::Result<Summary, NotStarted>> {
    let now = now();
    let sharing = Sharing::of(store);
    if sharing == Sharing::Lease {
        let dead = dead_owner(campaign.lease_owner.as_deref());
        if !store
            .try_lease(
                campaign.id,
                &settings.owner,
                now,
                now + settings.lease_secs,
                dead.as_deref(),
            )
            .await?
        {
            let holder = store
                .campaign_by_id(campaign.id)
                .await?
                .and_then(|c| c.lease_owner)
                .unwrap_or_default();
            return Ok(Err(NotStarted::Busy(holder)));
        }
    }
    let (owner, pid) = (&settings.owner, i64::from(std::process::id()));
    store
        .register_worker(owner, worker_host(owner), pid, campaign.id, now)
        .await?;
    if sharing == Sharing::Lease {
        // Housekeeping only: a failure here must not stop the run.
        let _ = store.forget_other_workers(campaign.id, owner).await;
    }
    let beat = tokio::spawn(beat(store.clone(), settings.clone()));
    let mut result = run_leased(store, campaign, settings, sharing, progress, &mut stop).await;
    beat.abort();
    if let Ok(summary) = &mut result {
        summary.deferred = waiting_for_retry(store, campaign.id).await?;
    }
    let _ = store.unregister_worker(owner).await;
    if sharing == Sharing::Lease {
        let _ = store.release_lease(campaign.id, owner).await;
    }
    result.map(Ok)
}

/// Keeps the worker's heartbeat fresh every `lease_secs / 3` while its
/// connections all wait on a slow server and the ledger has nothing to do
/// (the ledger's `Sharing::renew` also beats, and acts when this worker
/// was taken for dead). Ends when the worker's row is gone.
async fn beat(store: Store, s: Settings) {
    let every = Duration::from_secs((s.lease_secs / 3).max(1) as u64);
    loop {
        tokio::time::sleep(every).await;
        if let Ok(false) = store.heartbeat(&s.owner, now()).await {
            return;
        }
    }
}

/// Recipients of `campaign_id` whose delivery waits for a retry: people,
/// not attempts (one person deferred four times is one).
async fn waiting_for_retry(store: &Store, campaign_id: i64) -> Result<u64> {
    Ok(store
        .delivery_counts(campaign_id)
        .await?
        .into_iter()
        .find(|(status, _)| status == "deferred")
        .map_or(0, |(_, n)| n as u64))
}

async fn run_leased(
    store: &Store,
    campaign: &CampaignRow,
    settings: &Settings,
    sharing: Sharing,
    progress: Arc<Progress>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Summary> {
    let frozen: Frozen = serde_json::from_str(&campaign.compiled).map_err(|e| {
        Error::Config(format!(
            "campaign {}: frozen content unreadable: {e}",
            campaign.slug
        ))
    })?;
    let mut summary = Summary {
        in_flight_resolved: sharing
            .settle_in_flight(store, campaign.id, settings)
            .await?,
        ..Summary::default()
    };
    // A campaign cancelled since it was picked up is not started: the
    // transition fails and nothing is queued (`materialise` also checks).
    // Another worker may have started it meanwhile: this one joins it.
    if campaign.status != CampaignStatus::Sending
        && !store
            .set_campaign_status(campaign.id, CampaignStatus::Sending, now())
            .await?
    {
        match store.campaign_by_id(campaign.id).await?.map(|c| c.status) {
            Some(CampaignStatus::Sending) => {}
            Some(CampaignStatus::Cancelled) => {
                summary.cancelled = true;
                return Ok(summary);
            }
            _ => return Ok(summary),
        }
    }
    // A welcome campaign's rows come from confirmations (`queue_welcome`),
    // never from its lists.
    if !campaign.welcome {
        store.materialise(campaign.id, now()).await?;
    }
    let total: i64 = store
        .delivery_counts(campaign.id)
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum();
    progress.total.store(total as u64, Ordering::Relaxed);
    for (status, n) in store.delivery_counts(campaign.id).await? {
        let n = n as u64;
        match status.as_str() {
            "sent" => progress.sent.store(n, Ordering::Relaxed),
            "failed" | "unknown" => {
                progress.failed.fetch_add(n, Ordering::Relaxed);
            }
            "skipped" => progress.skipped.store(n, Ordering::Relaxed),
            _ => {}
        }
    }
    let shared = Arc::new(Shared {
        frozen,
        settings: settings.clone(),
        campaign: campaign.clone(),
        progress,
        pacer: match sharing {
            Sharing::Lease => Pacer::new(settings.rate),
            Sharing::Workers => Pacer::shared(settings.rate, store, campaign.id),
        },
        sharing,
        streak: Default::default(),
    });

    loop {
        let pass = pass(store, &shared, stop.clone()).await?;
        summary.sent += pass.sent;
        summary.deferred += pass.deferred;
        summary.failed += pass.failed;
        summary.skipped += pass.skipped;
        summary.unknown += pass.unknown;
        summary.in_flight_resolved += pass.in_flight_resolved;
        if pass.interrupted || *stop.borrow() {
            summary.interrupted = true;
            break;
        }
        // Retries due soon are waited for; later ones are left to dispatch.
        match store.next_retry(campaign.id).await? {
            Some(at) if at - now() <= settings.retry_wait_secs => {
                let waiting = waiting_for_retry(store, campaign.id).await?;
                shared.progress.waiting.store(waiting, Ordering::Relaxed);
                shared.progress.next_retry_at.store(at, Ordering::Relaxed);
                let wait = Duration::from_secs((at - now()).max(0) as u64 + 1);
                let renew_every = Duration::from_secs((settings.lease_secs / 3).max(1) as u64);
                let deadline = tokio::time::Instant::now() + wait;
                while tokio::time::Instant::now() < deadline {
                    summary.in_flight_resolved +=
                        sharing.renew(store, campaign.id, settings).await?;
                    let step = renew_every.min(deadline - tokio::time::Instant::now());
                    tokio::select! {
                        _ = tokio::time::sleep(step) => {}
                        _ = stop.changed() => { summary.interrupted = true; return Ok(summary); }
                    }
                }
                shared.progress.waiting.store(0, Ordering::Relaxed);
            }
            _ => break,
        }
    }
    // `cancel` skips every open row in its own transaction, so a run
    // cancelled midway ends here with nothing open but must not finish it.
    // A welcome campaign never finishes: people confirmed later get it.
    if campaign.welcome {
        summary.cancelled = store
            .campaign_by_id(campaign.id)
            .await?
            .is_some_and(|c| c.status == CampaignStatus::Cancelled);
    } else {
        // One statement, so one view of the rows: an open count and a
        // look at who holds them, read apart, can straddle another
        // worker's last rows and end the line "retries pending" on a
        // campaign that is finished.
        let counts = store.delivery_counts(campaign.id).await?;
        match end_of_run(&counts, sharing) {
            End::Finished => {
                // Decided once: of workers finding nothing open at the same
                // time, one moves the campaign; the others read what it became.
                if store
                    .set_campaign_status(campaign.id, CampaignStatus::Finished, now())
                    .await?
                {
                    summary.finished = true;
                    summary.finished_here = true;
                } else {
                    let status = store.campaign_by_id(campaign.id).await?.map(|c| c.status);
                    summary.finished = status == Some(CampaignStatus::Finished);
                    summary.cancelled = status == Some(CampaignStatus::Cancelled);
                }
            }
            End::LeftToOthers => summary.left_to_others = true,
            End::RetriesPending => {}
        }
    }
    Ok(summary)
}

/// How a run that was not stopped leaves a (non-welcome) campaign, as
/// its summary line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Nothing queued, in flight or deferred: the campaign is finished,
    /// by this run or by another worker.
    Finished,
    /// Rows queued or in flight, and workers share the campaign
    /// (PostgreSQL): theirs to finish.
    LeftToOthers,
    /// Deferred rows wait for a later `dispatch` (on SQLite also rows a
    /// run left queued: the next run takes them).
    RetriesPending,
}

/// The end of a run from one reading of the campaign's delivery counts by
/// status (`Store::delivery_counts`).
fn end_of_run(counts: &[(String, i64)], sharing: Sharing) -> End {
    let count = |state: &str| -> i64 {
        counts
            .iter()
            .filter(|(status, _)| status == state)
            .map(|(_, n)| n)
            .sum()
    };
    let held = count("queued") + count("sending");
    if held + count("deferred") == 0 {
        End::Finished
    } else if held > 0 && sharing == Sharing::Workers {
        End::LeftToOthers
    } else {
        End::RetriesPending
    }
}

struct Shared {
    frozen: Frozen,
    settings: Settings,
    campaign: CampaignRow,
    progress: Arc<Progress>,
    pacer: Pacer,
    sharing: Sharing,
    streak: tokio::sync::Mutex<Streak>,
}

/// Refusals that were not the recipients' fault, in a row across workers.
#[derive(Default)]
struct Streak {
    /// `Error::refusal_key` of the refusals in the streak.
    key: String,
    /// Their (delivery, subscriber), already recorded as failed.
    members: Vec<(i64, i64)>,
    /// Reached `STREAK_LIMIT`: every later refusal is queued again too.
    tripped: bool,
}

impl Streak {
    /// Adds a refusal; once the streak trips, returns the deliveries to
    /// queue again (the earlier members and this one).
    fn refused(&mut self, key: String, job: (i64, i64)) -> Option<Vec<(i64, i64)>> {
        if self.tripped {
            return Some(vec![job]);
        }
        if key != self.key {
            self.key = key;
            self.members.clear();
        }
        self.members.push(job);
        if self.members.len() < STREAK_LIMIT {
            return None;
        }
        self.tripped = true;
        Some(std::mem::take(&mut self.members))
    }

    /// Any other outcome ends the streak (a tripped one stays tripped).
    fn broken(&mut self) {
        self.members.clear();
    }
}

/// Spaces sends to a rate across all of a run's connections; with
/// workers sharing a campaign (PostgreSQL), across every worker: each slot
/// comes from the campaign's row in `campaign_pace`
/// (`Store::next_send_slot`), so the rate is the campaign's, not the
/// process's.
struct Pacer {
    interval: Option<Duration>,
    next: tokio::sync::Mutex<tokio::time::Instant>,
    /// The store and campaign whose shared pace to follow.
    shared: Option<(Store, i64)>,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            shared: None,
        }
    }

    /// The same rate, shared by every worker on `campaign_id`.
    fn shared(rate: f64, store: &Store, campaign_id: i64) -> Pacer {
        Pacer {
            shared: Some((store.clone(), campaign_id)),
            ..Pacer::new(rate)
        }
    }

    /// Whether there is a rate to keep.
    fn paces(&self) -> bool {
        self.interval.is_some()
    }

    async fn wait(&self) -> Result<()> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        if let Some((store, campaign_id)) = &self.shared {
            let interval_us = (interval.as_micros() as i64).max(1);
            let now_us = unix_micros();
            let at_us = store
                .next_send_slot(*campaign_id, interval_us, now_us)
                .await?;
            tokio::time::sleep(Duration::from_micros((at_us - now_us).max(0) as u64)).await;
            return Ok(());
        }
        let at = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
        Ok(())
    }
}

/// The wall clock in microseconds (the shared pace is kept in them).
fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// One outcome for the ledger to record: (delivery, subscriber, outcome).
type Done = (i64, i64, Outcome);

/// A worker's wait for its next recipient (none: nothing more is due).
type Reply = oneshot::Sender<Option<Job>>;

enum Request {
    /// The next recipient, and the worker's last outcome if it comes along:
    /// both go in one round, so the row is handed out after the outcome is
    /// committed. (Once nothing more is due, or after a failed round, the
    /// answer "none" comes at once and the outcome is recorded after it.)
    Claim(Option<Done>, Reply),
    Done(Done),
}

/// One pass over what is due now: the ledger and the workers.
async fn pass(store: &Store, shared: &Arc<Shared>, stop: watch::Receiver<bool>) -> Result<Summary> {
    let (tx, rx) = mpsc::unbounded_channel::<Request>();
    let fatal = Arc::new(std::sync::Mutex::new(None::<Error>));
    let halt = Arc::new(AtomicBool::new(false));
    let ledger = tokio::spawn(ledger(store.clone(), shared.clone(), rx));
    let workers = shared.settings.connections.max(1);
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let tx = tx.clone();
        let shared = shared.clone();
        let stop = stop.clone();
        let fatal = fatal.clone();
        let halt = halt.clone();
        handles.push(tokio::spawn(async move {
            let sending = std::panic::AssertUnwindSafe(worker(shared, tx, stop, halt.clone()));
            let e = match futures_util::FutureExt::catch_unwind(sending).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                // Its recipient's outcome never came, and the row stays
                // `sending` for the in-flight policy. The others stop at
                // once, and the run ends here, so no later pass of this
                // process takes the row for one a lost round claimed
                // (`Store::give_back_unhanded`).
                Err(panic) => Error::Internal(format!(
                    "a sending task stopped: {}",
                    panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "it panicked".into())
                )),
            };
            halt.store(true, Ordering::SeqCst);
            fatal.lock().expect("fatal lock").get_or_insert(e);
        }));
    }
    drop(tx);
    for h in handles {
        if let Err(e) = h.await {
            // Cancelled (a panic is caught in the task, above).
            let stopped = Error::Internal(format!("a sending task stopped: {e}"));
            fatal.lock().expect("fatal lock").get_or_insert(stopped);
        }
    }
    let summary = ledger
        .await
        .map_err(|e| Error::Internal(format!("the ledger task stopped: {e}")))??;
    if let Some(e) = fatal.lock().expect("fatal lock").take() {
        return Err(e);
    }
    Ok(Summary {
        interrupted: *stop.borrow(),
        ..summary
    })
}

/// Owns the delivery log writes: each batch of requests becomes one round
/// (`Ledger::record_and_claim`, on the connection the ledger holds for the
/// pass) that records the outcomes and claims exactly
/// one row per waiting worker, re-checking in the claim statement that each
/// person may still be mailed and reading their data in the same
/// transaction. Rows are handed out only after the commit, and nothing is
/// read ahead, so a row is never handed out twice and nobody who left
/// reaches a worker. The bookkeeping is [`Book`]'s.
async fn ledger(
    store: Store,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Request>,
) -> Result<Summary> {
    let s = &shared.settings;
    let mut book = Book::default();
    let mut last_renew = tokio::time::Instant::now();
    let renew_every = Duration::from_secs((s.lease_secs / 3).max(1) as u64);
    let mut held = match store.ledger().await {
        Ok(held) => Some(held),
        Err(e) => {
            book.fail(e.into());
            None
        }
    };
    while let Some(first) = rx.recv().await {
        book.take(first);
        while let Ok(request) = rx.try_recv() {
            book.take(request);
        }
        if let (Some((outcomes, replies)), Some(ledger)) = (book.next_round(), held.as_mut()) {
            let claimed = ledger
                .record_and_claim(&shared.campaign, &s.owner, replies.len(), &outcomes, now())
                .await;
            let skipped = book.close_round(outcomes, replies, claimed.map_err(Into::into));
            shared
                .progress
                .skipped
                .fetch_add(skipped, Ordering::Relaxed);
            if book.failed.is_some() {
                // Given back now, not when the workers are done: on
                // PostgreSQL the failed round's rollback (and the locks it
                // holds until then) waits for the connection's next use.
                held = None;
            }
        }
        if book.failed.is_none() && last_renew.elapsed() >= renew_every {
            match shared.sharing.renew(&store, shared.campaign.id, s).await {
                Ok(settled) => book.summary.in_flight_resolved += settled,
                Err(e) => book.fail(e),
            }
            last_renew = tokio::time::Instant::now();
        }
    }
    // The workers are gone: what is left to record (the last outcomes,
    // rows given back) is, and after a failure that is a last try on a
    // connection of its own (the database, or the ledger's connection, may
    // be what failed). Not when the run lost its lease or was
    // taken for dead: its rows are another run's to settle now.
    let lost = matches!(book.failed, Some(Error::LeaseLost | Error::WorkerLost));
    drop(held);
    let mut recorded_all = true;
    if !book.outcomes.is_empty() && !lost {
        let recorded = store
            .record_and_claim(&shared.campaign, &s.owner, 0, &book.outcomes, now())
            .await;
        recorded_all = recorded.is_ok();
        if book.failed.is_none() {
            recorded?;
        }
    }
    if book.failed.is_some() && !lost && recorded_all {
        // The failed round may have been committed all the same, its answer
        // lost with the connection: its rows reached no worker. Best
        // effort: the database may be what failed.
        let handed: Vec<i64> = book.handed.iter().copied().collect();
        let _ = store
            .give_back_unhanded(shared.campaign.id, &s.owner, &handed, now())
            .await;
    }
    match book.failed {
        Some(e) => Err(e),
        None => Ok(book.summary),
    }
}

/// The ledger's bookkeeping, apart from the database: what waits for the
/// next round, and what comes of each round's result.
#[derive(Default)]
struct Book {
    /// Workers waiting for a recipient, for the next round to claim.
    waiting: Vec<Reply>,
    /// Outcomes for the next round to record.
    outcomes: Vec<Done>,
    /// A round came up short: nothing more is due in this pass.
    exhausted: bool,
    /// A round failed: no more rounds; the run ends with this error.
    failed: Option<Error>,
    /// Rows handed to a worker whose outcome has not come yet.
    handed: std::collections::HashSet<i64>,
    summary: Summary,
}

impl Book {
    fn take(&mut self, request: Request) {
        let done = match request {
            Request::Done(done) => Some(done),
            Request::Claim(done, reply) => {
                self.waiting.push(reply);
                done
            }
        };
        if let Some(done) = done {
            count(&mut self.summary, &done.2);
            self.handed.remove(&done.0);
            self.outcomes.push(done);
        }
    }

    /// The next round's outcomes and claims, if there is anything to do.
    /// Once nothing more is due, or a round failed, claims are answered
    /// "none" here (the workers stop), and after a failure there are no
    /// more rounds.
    fn next_round(&mut self) -> Option<(Vec<Done>, Vec<Reply>)> {
        if self.exhausted || self.failed.is_some() {
            for reply in self.waiting.drain(..) {
                let _ = reply.send(None);
            }
        }
        if self.failed.is_some() || (self.waiting.is_empty() && self.outcomes.is_empty()) {
            return None;
        }
        Some((
            std::mem::take(&mut self.outcomes),
            std::mem::take(&mut self.waiting),
        ))
    }

    fn fail(&mut self, e: Error) {
        self.failed.get_or_insert(e);
    }

    /// Hands out what a round claimed, one row per waiting worker, and
    /// returns how many rows it skipped. A row whose worker went away goes
    /// back to the queue with the next round (or the ledger's last try).
    /// A round that failed recorded nothing: its `outcomes` wait for the
    /// last try, before anything reported since.
    fn close_round(
        &mut self,
        outcomes: Vec<Done>,
        replies: Vec<Reply>,
        claimed: Result<Claimed>,
    ) -> u64 {
        let claimed = claimed.unwrap_or_else(|e| {
            self.fail(e);
            self.outcomes.splice(0..0, outcomes);
            Claimed::default()
        });
        self.exhausted |= claimed.exhausted;
        self.summary.skipped += claimed.skipped;
        let mut jobs = claimed.jobs.into_iter();
        for reply in replies {
            let job = jobs.next();
            let id = job.as_ref().map(|j| j.delivery_id);
            match reply.send(job) {
                Ok(()) => self.handed.extend(id),
                Err(Some(job)) => self.unclaim(&job),
                Err(None) => {}
            }
        }
        claimed.skipped
    }

    fn unclaim(&mut self, job: &Job) {
        let row = (job.delivery_id, job.subscriber_id, Outcome::Unclaimed);
        self.outcomes.push(row);
    }
}

/// Adds a reported outcome to the run's summary.
fn count(summary: &mut Summary, outcome: &Outcome) {
    match outcome {
        Outcome::Sent { .. } => summary.sent += 1,
        Outcome::Deferred { .. } => summary.deferred += 1,
        Outcome::Failed { .. } => summary.failed += 1,
        Outcome::Unknown { .. } => summary.unknown += 1,
        Outcome::Skipped { .. } => summary.skipped += 1,
        Outcome::Unclaimed => {}
    }
}

/// Asks the ledger for the next recipient, once the rate allows another
/// message: pacing comes before the claim, so the eligibility check in the
/// claim is at most one composition away from the SMTP transaction. The
/// worker's last outcome (`done`) comes along, so that recording it and
/// claiming the next row are one round; with a rate to keep it goes first,
/// on its own, rather than wait for the worker's turn unrecorded.
async fn claim(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Request>,
    mut stop: watch::Receiver<bool>,
    mut done: Option<Done>,
) -> Result<Option<Job>> {
    if shared.pacer.paces() {
        if let Some(done) = done.take() {
            let _ = tx.send(Request::Done(done));
        }
        // A slow `rate` must not hold up a stop: the wait ends with the signal.
        tokio::select! {
            paced = shared.pacer.wait() => paced?,
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
    }
    let (reply, rx) = oneshot::channel();
    if tx.send(Request::Claim(done, reply)).is_err() {
        return Ok(None);
    }
    Ok(rx.await.ok().flatten())
}

/// One connection's loop: claim, personalise, compose, send, report.
async fn worker(
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Request>,
    stop: watch::Receiver<bool>,
    halt: Arc<AtomicBool>,
) -> Result<()> {
    let s = &shared.settings;
    let mut sender = s.transport.sender();
    let mut body = Personalised::default();
    let domain = &s.bounce_domain;
    let list_headers = shared.frozen.list_headers(shared.campaign.list_id, domain);
    let archive = s.urls.archive(&shared.campaign.slug);
    let mut consecutive_transient = 0u32;
    // The last attempt's outcome, recorded with the next claim.
    let mut done: Option<Done> = None;
    loop {
        if *stop.borrow() || halt.load(Ordering::SeqCst) {
            if let Some(done) = done.take() {
                let _ = tx.send(Request::Done(done));
            }
            break;
        }
        let Some(job) = claim(&shared, &tx, stop.clone(), done.take()).await? else {
            break;
        };
        if *stop.borrow() || halt.load(Ordering::SeqCst) {
            // Handed back unsent: it is queued again.
            report(&tx, &job, Outcome::Unclaimed);
            break;
        }
        let token = s.signer.sign(&links::Bounce {
            delivery: job.delivery_id,
        });
        let message_id = links::message_id(&token, domain);
        // Everything that names a list names the one this person gets it
        // through (the claim set it: the row's list or the one it switched to).
        // (Every row's list is one of the campaign's; the first list is the
        // fallback rather than a panic in a worker.)
        let list_id = list_headers
            .get(&job.list_id)
            .unwrap_or(&list_headers[&shared.campaign.list_id]);
        // The unsubscribe links name the campaign, so that leaving is
        // recorded against the email it came from.
        let leave = links::Unsubscribe {
            subscriber: job.subscriber_id,
            list: job.list_id,
            campaign: Some(shared.campaign.id),
        };
        let unsubscribe = s.urls.unsubscribe(&s.signer, &leave);
        let preferences = s.urls.preferences(
            &s.signer,
            &links::Preferences {
                subscriber: job.subscriber_id,
                via_list: Some(job.list_id),
            },
        );
        let mailto = links::unsubscribe_address(&s.signer.sign(&leave), domain);
        let return_path = links::verp_address(&token, domain);
        let attributes: Option<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_str(&job.attributes).ok();
        shared.frozen.compiled.personalise_into(
            &Recipient {
                email: &job.email,
                name: &job.name,
                attributes: attributes.as_ref(),
                unsubscribe_url: &unsubscribe,
                preferences_url: &preferences,
                archive_url: &archive,
            },
            &mut body,
        );
        let headers = compose::Headers {
            from: &shared.frozen.from,
            reply_to: shared.frozen.reply_to.as_deref(),
            to_email: &job.email,
            to_name: &job.name,
            date: SystemTime::now(),
            message_id: &message_id,
            list_id: Some(list_id),
            unsubscribe_url: Some(&unsubscribe),
            unsubscribe_mailto: Some(&mailto),
            return_path: Some(&return_path),
            test: false,
            feedback_id: None,
        };
        let composed = compose::message(&headers, &body)
            .and_then(|m| Ok((compose::wire_bytes(&m, s.dkim.as_deref())?, m)));
        let (bytes, message) = match composed {
            Ok(composed) => composed,
            Err(e) => {
                // Not the recipient's fault; the same failure for every
                // recipient (a DKIM key, a From that does not parse) stops
                // the run through the refusal streak instead of failing all.
                if let Err(e) = refused(&shared, &tx, &job, Error::Compose(e)).await {
                    sender.close().await;
                    return Err(e);
                }
                continue;
            }
        };
        let name = job.delivery_id.to_string();
        let attempt = sender.send(message.envelope(), &bytes, &name, s.messages_per_connection);
        let result = tokio::select! {
            result = attempt => result,
            () = stopped(stop.clone(), STOP_GRACE) => {
                // Stopped, and the server did not finish in time.
                // The in-flight policy, as for rows a killed run left.
                let o = if sender.message_sent() && s.in_flight == InFlight::Unknown {
                    Outcome::Unknown {
                        reply: "stopped by a signal while waiting for the server's answer; it may have been delivered".into(),
                    }
                } else {
                    Outcome::Unclaimed
                };
                sender.discard();
                report(&tx, &job, o);
                return Ok(());
            }
        };
        let transient = matches!(&result, Err(e) if e.verdict() == Verdict::Retry);
        match settle(&shared, &tx, &job, result, message_id).await {
            Ok(outcome) => done = outcome.map(|o| (job.delivery_id, job.subscriber_id, o)),
            Err(e) => {
                sender.close().await;
                return Err(e);
            }
        }
        consecutive_transient = if transient {
            consecutive_transient + 1
        } else {
            0
        };
        if consecutive_transient >= 3 {
            // Recorded now, not after the pause.
            if let Some(done) = done.take() {
                let _ = tx.send(Request::Done(done));
            }
            // The server is throttling this connection: back off a little.
            tokio::time::sleep(Duration::from_millis(
                200 * u64::from(consecutive_transient.min(25)),
            ))
            .await;
        }
    }
    sender.close().await;
    Ok(())
}

/// Resolves `grace` after the stop signal; never when no signal can come.
async fn stopped(mut stop: watch::Receiver<bool>, grace: Duration) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}

/// Hands an outcome to the ledger now.
fn report(tx: &mpsc::UnboundedSender<Request>, job: &Job, outcome: Outcome) {
    let _ = tx.send(Request::Done((job.delivery_id, job.subscriber_id, outcome)));
}

/// What one attempt came to, as its `Verdict` says: the outcome to record
/// with the worker's next claim, or none when it was reported already (a
/// refusal, under the streak's lock). An error stops the run; the job was
/// queued again first.
async fn settle(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Request>,
    job: &Job,
    result: Result<String>,
    message_id: String,
) -> Result<Option<Outcome>> {
    let (s, progress) = (&shared.settings, &shared.progress);
    let verdict = result.as_ref().err().map(Error::verdict);
    if verdict != Some(Verdict::Refused) {
        shared.streak.lock().await.broken();
    }
    let outcome = match (result, verdict) {
        (Ok(reply), _) => {
            progress.sent.fetch_add(1, Ordering::Relaxed);
            Outcome::Sent { reply, message_id }
        }
        (Err(e), Some(Verdict::Bounce)) => {
            progress.failed.fetch_add(1, Ordering::Relaxed);
            Outcome::Failed {
                reply: e.to_string(),
                hard_bounce: true,
            }
        }
        (Err(e), Some(Verdict::Refused)) => {
            return refused(shared, tx, job, e).await.map(|()| None);
        }
        (Err(e), Some(Verdict::Retry)) => {
            let reply = format!("gave up after {} attempts: {e}", job.attempts);
            let last = Outcome::Failed {
                reply,
                hard_bounce: false,
            };
            deferred_or(s, progress, job, &e, last)
        }
        // Unknown after the dot is sent again only when the policy says so.
        (Err(e), Some(Verdict::Unknown)) if s.in_flight == InFlight::Resend => {
            let reply = format!("gave up after {} attempts: {e}", job.attempts);
            deferred_or(s, progress, job, &e, Outcome::Unknown { reply })
        }
        (Err(e), Some(Verdict::Unknown)) => {
            progress.failed.fetch_add(1, Ordering::Relaxed);
            Outcome::Unknown {
                reply: e.to_string(),
            }
        }
        // Server down, a 421, TLS or auth: not this recipient's fault.
        (Err(e), _) => {
            report(tx, job, Outcome::Unclaimed);
            return Err(e);
        }
    };
    Ok(Some(outcome))
}

/// Deferred with exponential backoff, or `last` once the attempts are used.
fn deferred_or(s: &Settings, progress: &Progress, job: &Job, e: &Error, last: Outcome) -> Outcome {
    if job.attempts >= s.max_attempts {
        progress.failed.fetch_add(1, Ordering::Relaxed);
        return last;
    }
    progress.deferred.fetch_add(1, Ordering::Relaxed);
    let delay = s.retry_base_secs.max(1) * (1i64 << (job.attempts - 1).clamp(0, 20));
    Outcome::Deferred {
        reply: e.to_string(),
        retry_at: now() + delay,
    }
}

/// A refusal that is not the recipient's fault: the delivery fails, unless
/// it makes `STREAK_LIMIT` alike in a row; then the streak is queued again
/// and the run stops. Reported under the streak's lock, so a failure is
/// always recorded before it is queued again.
async fn refused(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Request>,
    job: &Job,
    e: Error,
) -> Result<()> {
    let mut streak = shared.streak.lock().await;
    let Some(again) = streak.refused(e.refusal_key(), (job.delivery_id, job.subscriber_id)) else {
        shared.progress.failed.fetch_add(1, Ordering::Relaxed);
        let o = Outcome::Failed {
            reply: e.to_string(),
            hard_bounce: false,
        };
        report(tx, job, o);
        return Ok(());
    };
    let counted = again.len().saturating_sub(1) as u64;
    shared.progress.failed.fetch_sub(counted, Ordering::Relaxed);
    for (delivery, subscriber) in again {
        let _ = tx.send(Request::Done((delivery, subscriber, Outcome::Unclaimed)));
    }
    Err(Error::Refusing {
        count: STREAK_LIMIT,
        reply: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_ends_as_one_reading_of_the_rows_says() {
        let counts = |rows: &[(&str, i64)]| -> Vec<(String, i64)> {
            rows.iter().map(|(s, n)| (s.to_string(), *n)).collect()
        };
        use End::*;
        use Sharing::*;
        /// Delivery counts by status, how the campaign is shared, the end.
        type Case = (&'static [(&'static str, i64)], Sharing, End);
        let cases: &[Case] = &[
            // Everything settled, whoever sent it: finished.
            (&[("sent", 301)], Workers, Finished),
            (
                &[("failed", 1), ("sent", 2), ("skipped", 1), ("unknown", 1)],
                Lease,
                Finished,
            ),
            (&[], Workers, Finished),
            // Another worker holds rows, or rows wait to be claimed.
            (&[("sending", 3), ("sent", 297)], Workers, LeftToOthers),
            (&[("queued", 1), ("sent", 2)], Workers, LeftToOthers),
            // Others hold rows beside deferred ones: they go on with both.
            (&[("deferred", 2), ("sending", 1)], Workers, LeftToOthers),
            // Only deferred rows: retries pending.
            (&[("deferred", 1), ("sent", 2)], Workers, RetriesPending),
            (&[("deferred", 1), ("sent", 2)], Lease, RetriesPending),
            // One run at a time (SQLite): nobody else is sending.
            (&[("queued", 1), ("sent", 2)], Lease, RetriesPending),
            // A count of zero is no row.
            (
                &[("deferred", 0), ("sending", 0), ("sent", 5)],
                Workers,
                Finished,
            ),
        ];
        for (rows, sharing, end) in cases {
            assert_eq!(
                end_of_run(&counts(rows), *sharing),
                *end,
                "{rows:?} {sharing:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_spaces_sends_to_the_rate() {
        let pacer = Pacer::new(10.0);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pacer.wait().await.unwrap();
        }
        // The first goes at once, then one every 100 ms (virtual time).
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        let unlimited = Pacer::new(0.0);
        let start = tokio::time::Instant::now();
        unlimited.wait().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn a_database_error_reads_once_in_the_chain() {
        let e = anyhow::Error::new(Error::from(crate::store::Error::Unreachable(
            "connection refused".into(),
        )));
        assert_eq!(
            format!("{e:#}"),
            "database: the database server cannot be reached: connection refused"
        );
    }

    #[test]
    fn a_message_that_cannot_be_built_reads_once_in_the_chain() {
        let bad = crate::compose::Headers {
            from: "not an address",
            reply_to: None,
            to_email: "ann@example.net",
            to_name: "Ann",
            date: SystemTime::UNIX_EPOCH,
            message_id: "m@example.org",
            list_id: None,
            unsubscribe_url: None,
            unsubscribe_mailto: None,
            return_path: None,
            test: false,
            feedback_id: None,
        };
        let e = compose::message(&bad, &Personalised::default()).unwrap_err();
        let recorded = Error::Compose(e).to_string();
        assert!(
            recorded.starts_with("invalid address \"not an address\": "),
            "{recorded}"
        );
        let shown = format!(
            "{:#}",
            anyhow::Error::new(Error::Compose(
                compose::message(&bad, &Personalised::default()).unwrap_err(),
            ))
        );
        assert_eq!(shown, recorded, "the chain adds nothing to the words");
    }

    #[test]
    fn smtp_errors_classify() {
        let e = Error::Reply {
            stage: "RCPT",
            code: 550,
            message: "5.1.1 unknown".into(),
        };
        assert!(e.is_permanent() && !e.is_transient());
        let e = Error::Reply {
            stage: "RCPT",
            code: 451,
            message: "later".into(),
        };
        assert!(e.is_transient() && !e.is_permanent());
        assert!(Error::Dropped("eof".into()).is_transient());
        assert!(!Error::Fatal("down".into()).is_transient());
        assert_eq!(Error::Fatal("down".into()).status(), None);
        // Not the recipient's fault, and not worth retrying on this server.
        let utf8 = Error::NoSmtpUtf8("ines.garcía@example.org".into());
        assert!(utf8.is_permanent() && !utf8.is_transient());
        assert!(
            utf8.to_string()
                .contains("the SMTP server does not support SMTPUTF8")
        );
    }

    #[test]
    fn errors_without_a_reply_have_verdicts() {
        assert_eq!(Error::Dropped("eof".into()).verdict(), Verdict::Retry);
        assert_eq!(
            Error::Unanswered("no answer within 30 s".into()).verdict(),
            Verdict::Unknown
        );
        assert_eq!(Error::Fatal("refused".into()).verdict(), Verdict::Stop);
        let e = Error::Reply {
            stage: verdict::RCPT,
            code: 550,
            message: "5.1.1 unknown".into(),
        };
        assert_eq!(e.verdict(), Verdict::Bounce);
        assert_eq!(e.refusal_key(), "RCPT: 550 5.1.1");
    }

    #[test]
    fn a_streak_trips_on_alike_refusals_in_a_row_only() {
        let mut streak = Streak::default();
        for i in 0..(STREAK_LIMIT as i64 - 1) {
            assert_eq!(streak.refused("DATA: 554 5.7.1".into(), (i, i)), None);
        }
        // Another refusal, or any other outcome, starts it again.
        assert_eq!(streak.refused("MAIL: 554".into(), (100, 100)), None);
        streak.broken();
        for i in 0..(STREAK_LIMIT as i64 - 1) {
            assert_eq!(streak.refused("DATA: 554 5.7.1".into(), (i, i)), None);
        }
        let again = streak.refused("DATA: 554 5.7.1".into(), (99, 99)).unwrap();
        assert_eq!(again.len(), STREAK_LIMIT);
        assert_eq!(again.last(), Some(&(99, 99)));
        // Tripped: every later refusal is queued again too.
        assert_eq!(
            streak.refused("MAIL: 554".into(), (7, 7)),
            Some(vec![(7, 7)])
        );
    }

    fn job(delivery_id: i64) -> Job {
        Job {
            delivery_id,
            subscriber_id: delivery_id + 100,
            list_id: 1,
            email: format!("p{delivery_id}@example.net"),
            name: String::new(),
            attributes: "{}".into(),
            attempts: 1,
        }
    }

    fn sent(delivery_id: i64) -> Done {
        let o = Outcome::Sent {
            reply: "250 ok".into(),
            message_id: format!("<{delivery_id}@x>"),
        };
        (delivery_id, delivery_id + 100, o)
    }

    /// A worker's claim, bringing `done` along; and where its answer comes.
    fn claim_with(done: Option<Done>) -> (Request, oneshot::Receiver<Option<Job>>) {
        let (reply, answer) = oneshot::channel();
        (Request::Claim(done, reply), answer)
    }

    #[test]
    fn an_outcome_and_the_next_claim_go_in_one_round_and_each_row_to_its_worker() {
        let mut book = Book::default();
        let (first, mut first_answer) = claim_with(Some(sent(1)));
        let (second, mut second_answer) = claim_with(None);
        book.take(first);
        book.take(second);
        let (outcomes, replies) = book.next_round().expect("a round");
        assert_eq!(outcomes, vec![sent(1)], "recorded with the claim");
        assert_eq!(replies.len(), 2);
        assert_eq!(book.summary.sent, 1);
        assert!(
            book.next_round().is_none(),
            "nothing left for a second round"
        );
        let claimed = Claimed {
            jobs: vec![job(7), job(8)],
            skipped: 2,
            exhausted: false,
        };
        assert_eq!(book.close_round(outcomes, replies, Ok(claimed)), 2);
        assert_eq!(first_answer.try_recv().unwrap().unwrap().delivery_id, 7);
        assert_eq!(second_answer.try_recv().unwrap().unwrap().delivery_id, 8);
        assert_eq!(book.summary.skipped, 2);
        assert!(book.outcomes.is_empty(), "nothing left to record");
    }

    #[test]
    fn the_book_knows_which_rows_a_worker_holds_until_their_outcome_comes() {
        let mut book = Book::default();
        let (gone, gone_answer) = claim_with(None);
        let (stays, _stays_answer) = claim_with(None);
        let (also, _also_answer) = claim_with(None);
        drop(gone_answer);
        for request in [gone, stays, also] {
            book.take(request);
        }
        let (outcomes, replies) = book.next_round().expect("a round");
        let claimed = Claimed {
            jobs: vec![job(7), job(8), job(9)],
            skipped: 0,
            exhausted: false,
        };
        book.close_round(outcomes, replies, Ok(claimed));
        // 7's worker went away (7 goes back unsent); 8 and 9 are out.
        assert_eq!(book.handed, [8, 9].into());
        let (done, _answer) = claim_with(Some(sent(8)));
        book.take(done);
        assert_eq!(book.handed, [9].into(), "8 reported with a claim");
        book.take(Request::Done(sent(9)));
        assert!(book.handed.is_empty(), "9 reported alone");
    }

    #[test]
    fn a_row_whose_worker_went_away_goes_back_and_a_short_claim_stops_the_rest() {
        let mut book = Book::default();
        let (gone, gone_answer) = claim_with(None);
        let (stays, mut stays_answer) = claim_with(None);
        let (last, mut last_answer) = claim_with(None);
        for request in [gone, stays, last] {
            book.take(request);
        }
        drop(gone_answer);
        let (outcomes, replies) = book.next_round().unwrap();
        let claimed = Claimed {
            jobs: vec![job(1), job(2)],
            skipped: 0,
            exhausted: true,
        };
        book.close_round(outcomes, replies, Ok(claimed));
        assert_eq!(stays_answer.try_recv().unwrap().unwrap().delivery_id, 2);
        assert!(
            last_answer.try_recv().unwrap().is_none(),
            "nothing more due"
        );
        let (outcomes, replies) = book.next_round().expect("the row given back");
        assert_eq!(outcomes, vec![(1, 101, Outcome::Unclaimed)]);
        assert!(replies.is_empty());
        // Once exhausted, a claim is answered without waiting for a round,
        // and the outcome it brought is still recorded.
        let (later, mut later_answer) = claim_with(Some(sent(9)));
        book.take(later);
        let (outcomes, replies) = book.next_round().expect("the outcome's round");
        assert!(later_answer.try_recv().unwrap().is_none());
        assert_eq!(outcomes, vec![sent(9)]);
        assert!(replies.is_empty(), "nothing claimed");
    }

    #[test]
    fn after_a_failed_round_claims_get_none_and_every_outcome_waits_for_the_last_try() {
        let mut book = Book::default();
        let (a, mut a_answer) = claim_with(Some(sent(1)));
        book.take(a);
        let (outcomes, replies) = book.next_round().unwrap();
        let failed = Err(Error::Fatal("connection reset".into()));
        book.close_round(outcomes, replies, failed);
        assert!(a_answer.try_recv().unwrap().is_none(), "the worker stops");
        // No more rounds; what workers report meanwhile is kept for the
        // ledger's last try.
        book.take(Request::Done(sent(2)));
        let (b, mut b_answer) = claim_with(Some(sent(3)));
        book.take(b);
        assert!(book.next_round().is_none());
        assert!(b_answer.try_recv().unwrap().is_none());
        // The failed round's own outcome first: it was not recorded.
        assert_eq!(book.outcomes, vec![sent(1), sent(2), sent(3)]);
        assert!(matches!(book.failed, Some(Error::Fatal(_))));
    }

    #[test]
    fn each_list_of_a_frozen_campaign_has_its_list_id_and_old_campaigns_their_one() {
        let text = "+++\nsubject = \"s\"\npreheader = \"p\"\nlist = [\"a\", \"b\"]\n+++\n# S\n\n## A\n\nText.\n";
        let c = crate::campaign::parse("c.md", text).unwrap();
        let org = crate::config::Organisation::default();
        let compiled = crate::render::Renderer::new(&crate::assets::Templates::builtin())
            .unwrap()
            .compile(
                &c,
                &crate::render::Context {
                    organisation: &org,
                    bases: Default::default(),
                },
            )
            .unwrap();
        let list = |id: i64, slug: &str, name: &str| FrozenList {
            id,
            slug: slug.into(),
            name: name.into(),
        };
        let frozen = Frozen {
            compiled,
            from: "N <n@example.org>".into(),
            reply_to: None,
            list_slug: "a".into(),
            list_name: "Alpha".into(),
            lists: vec![list(7, "a", "Alpha"), list(9, "b", "Beta")],
            archive: true,
            resend_until: None,
        };
        let headers = frozen.list_headers(7, "example.org");
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[&7], compose::list_id("Alpha", "a", "example.org"));
        assert_eq!(headers[&9], compose::list_id("Beta", "b", "example.org"));
        // Frozen before several lists: no `lists` in the stored JSON.
        let mut old = serde_json::to_value(&frozen).unwrap();
        old.as_object_mut().unwrap().remove("lists");
        let old: Frozen = serde_json::from_value(old).unwrap();
        assert!(old.lists.is_empty());
        let headers = old.list_headers(7, "example.org");
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[&7], compose::list_id("Alpha", "a", "example.org"));
    }
}

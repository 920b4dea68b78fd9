//! Shared setup for the commands that send or verify: the transport, the
//! link signer and verifier, the DKIM signer, dispatcher `Settings`, the
//! SIGINT/SIGTERM stop signal, the time format and finding a frozen
//! campaign by name. Commands import this
//! module, never each other.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use chrono::{DateTime, Local, SecondsFormat, Utc};
use tokio::sync::watch;

use crate::config::Config;
use crate::dispatch::transport::{SmtpUrl, Transport};
use crate::dispatch::{self, Settings};
use crate::dkim::DkimSigner;
use crate::links::{Signer, Urls};
use crate::store::Store;
use crate::store::deliveries::CampaignRow;

/// The transport the config names: SMTP when a URL is set, else the outbox
/// when one was named (flag, environment, config file, `quickstart`). With
/// neither, nothing is sent: a cron job that lost its environment must fail
/// loudly, not write the campaign to a folder nobody reads.
pub(crate) fn transport(config: &Config) -> Result<Transport> {
    if config.smtp.url.is_none() && !config.outbox_source.is_explicit() {
        let file = config
            .file
            .as_ref()
            .map_or("bulletin.toml".into(), |f| f.display().to_string());
        bail!(
            "no SMTP server and no outbox: set BULLETIN_SMTP_URL (or --smtp-url, or [smtp] url in {file}) to send, \
             or BULLETIN_OUTBOX (or --outbox DIR, or outbox in {file}) to write the messages to a folder instead"
        );
    }
    Ok(match smtp_url(config)? {
        Some(url) => Transport::Smtp {
            url,
            timeout: Duration::from_secs(config.smtp.timeout_secs.max(1)),
            hello: crate::config::domain_of(&config.sender.from)
                .unwrap_or_else(|| "localhost".into()),
        },
        None => {
            std::fs::create_dir_all(&config.outbox)
                .with_context(|| config.outbox.display().to_string())?;
            Transport::Outbox(config.outbox.clone())
        }
    })
}

/// The SMTP URL the config names, parsed (the password from
/// `BULLETIN_SMTP_PASSWORD` when it has none); `None` without one. A URL
/// that does not parse is an error naming where it was set, never its
/// password: for every command that sends, and for `dispatch` even with
/// nothing due.
pub(crate) fn smtp_url(config: &Config) -> Result<Option<SmtpUrl>> {
    let Some(url) = &config.smtp.url else {
        return Ok(None);
    };
    match SmtpUrl::parse(url, config.smtp_password.as_deref()) {
        Ok(url) => Ok(Some(url)),
        Err(dispatch::Error::BadUrl { url, why }) => Err(anyhow!(
            "SMTP URL {url} (set by {}): {why}",
            config.smtp_url_source
        )),
        Err(other) => Err(other.into()),
    }
}

/// Where the transport [`transport`] picks was chosen: the SMTP URL's
/// source when one is set, else the outbox's.
pub(crate) fn transport_source(config: &Config) -> &crate::config::Source {
    if config.smtp.url.is_some() {
        &config.smtp_url_source
    } else {
        &config.outbox_source
    }
}

/// `smtp` or `outbox`, and the server (`host:port`) or folder: what
/// `campaign_runs` records for a run.
pub(crate) fn transport_kind(transport: &Transport) -> (&'static str, String) {
    match transport {
        Transport::Smtp { url, .. } => ("smtp", format!("{}:{}", url.host, url.port)),
        Transport::Outbox(dir) => ("outbox", dir.display().to_string()),
    }
}

/// A failure of the transport as a command says it: a server that cannot
/// be talked to names where its URL was set.
pub(crate) fn transport_failure(
    e: dispatch::Error,
    transport: &Transport,
    source: &str,
) -> anyhow::Error {
    match e {
        // The SMTP server could not be talked to (down, TLS, AUTH): the
        // operator fixes the server or the URL, so the line says where the
        // URL was set.
        dispatch::Error::Fatal(why) if matches!(transport, Transport::Smtp { .. }) => {
            anyhow!("{why} (SMTP URL set by {source})")
        }
        e => anyhow!(e),
    }
}

/// An outbox folder as reports name it, `outbox/`: the folder, so that
/// "written to outbox/" never reads as a word said twice.
pub(crate) fn folder(dir: impl AsRef<std::path::Path>) -> String {
    let dir = dir.as_ref().display().to_string();
    match dir.ends_with('/') {
        true => dir,
        false => format!("{dir}/"),
    }
}

/// A campaign keeps the transport kind it started with: one started over
/// SMTP is never finished into the outbox folder (nobody would get those
/// messages) and one written to the outbox never goes on over SMTP. Checked
/// before a run claims anything; the error names both and where this run's
/// transport came from.
pub(crate) async fn check_transport_kind(
    store: &Store,
    campaign: &CampaignRow,
    settings: &Settings,
) -> Result<()> {
    let (kind, target) = transport_kind(&settings.transport);
    let Some(first) = store.run_transports(campaign.id).await?.into_iter().next() else {
        return Ok(());
    };
    if first.transport == kind {
        return Ok(());
    }
    let how = |kind: &str, target: &str| match kind {
        "smtp" => format!("over SMTP via {target}"),
        _ => format!("to the outbox folder {target}"),
    };
    let fix = match first.transport.as_str() {
        "smtp" => {
            "set BULLETIN_SMTP_URL as when it started (in cron: `set -a; . ./.env`)".to_string()
        }
        _ => format!(
            "to mail it over SMTP, send its file as a new campaign with --again \
             (after `bulletin cancel {}` if it is not finished)",
            campaign.slug
        ),
    };
    bail!(
        "{}: started {}, but this run would send {} ({}); a campaign keeps the transport it started with: {fix}",
        campaign.slug,
        how(&first.transport, &first.target),
        how(kind, &target),
        settings.transport_source
    )
}

/// The secret links were signed with, to verify tokens that come back
/// (bounces, mailto unsubscribes): `BULLETIN_SECRET`, else the development
/// secret in the database, else none.
pub(crate) async fn verifier(config: &Config, store: &Store) -> Result<Option<Signer>> {
    let previous: Vec<&[u8]> = config
        .secrets
        .previous
        .iter()
        .map(|s| s.as_bytes())
        .collect();
    Ok(match &config.secrets.current {
        Some(secret) => Some(Signer::new(secret.as_bytes(), &previous)),
        None => store
            .setting("dev_secret")
            .await?
            .map(|s| Signer::new(s.as_bytes(), &previous)),
    })
}

/// Real mail needs the real secret: every command that sends over SMTP
/// (`send`, `dispatch`, `test`, `doctor --send-test`, `serve` and `subscribers
/// add` mailing confirmations) refuses to run without `BULLETIN_SECRET`, or
/// its unsubscribe links and bounce tokens would be dead. The outbox and
/// `quickstart` keep the development secret. Called with SMTP configured.
pub(crate) fn require_secret(config: &Config) -> Result<()> {
    if config.secrets.current.is_none() {
        bail!(
            "BULLETIN_SECRET is not set, and mail over SMTP needs it: every link in the emails is signed \
             with it, and `bulletin serve` must know the same secret; generate one with \
             `openssl rand -hex 32` into .env, and load it in cron with `set -a; . ./.env`"
        );
    }
    Ok(())
}

/// The link-signing secret: `BULLETIN_SECRET`; with the local outbox and no
/// secret, one generated once and kept in the database (development only).
pub(crate) async fn signer(
    config: &Config,
    store: &Store,
    transport: &Transport,
) -> Result<Signer> {
    if matches!(transport, Transport::Smtp { .. }) {
        require_secret(config)?;
    }
    if let Some(signer) = verifier(config, store).await? {
        return Ok(signer);
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .context("read /dev/urandom")?;
    let fresh: String = random.iter().map(|b| format!("{b:02x}")).collect();
    store.setting_or_insert("dev_secret", &fresh).await?;
    eprintln!(
        "bulletin: note: BULLETIN_SECRET is not set; links are signed with a development secret kept in {}",
        config.db
    );
    Ok(verifier(config, store).await?.expect("just stored"))
}

/// The DKIM signer the config names, with its key loaded; `None` without a
/// `[dkim]` section. Errors name the key file and the setting.
pub(crate) fn dkim(config: &Config) -> Result<Option<Arc<DkimSigner>>> {
    let Some(d) = &config.dkim else {
        return Ok(None);
    };
    let key = std::fs::read_to_string(&d.key_file)
        .with_context(|| format!("dkim.key_file {}", d.key_file.display()))?;
    let signer =
        DkimSigner::new(&d.selector, &d.domain, &d.algorithm, &key).with_context(|| {
            format!(
                "dkim.key_file {} ([dkim] in the config)",
                d.key_file.display()
            )
        })?;
    Ok(Some(Arc::new(signer)))
}

pub(crate) async fn settings(config: &Config, store: &Store) -> Result<Settings> {
    let transport = transport(config)?;
    let signer = signer(config, store, &transport).await?;
    let connections = match transport {
        Transport::Smtp { .. } => config.smtp.connections,
        Transport::Outbox(_) => 2,
    };
    Ok(Settings {
        transport,
        connections,
        rate: config.smtp.rate,
        messages_per_connection: config.smtp.messages_per_connection.max(1),
        signer,
        urls: Urls::new(&config.base_url),
        bounce_domain: config.bounce_domain(),
        lease_secs: config.dispatch.lease_secs.max(5),
        max_attempts: config.dispatch.max_attempts.max(1),
        retry_base_secs: config.dispatch.retry_base_secs.max(1),
        retry_wait_secs: config.dispatch.retry_wait_secs.max(0),
        in_flight: config.dispatch.in_flight,
        dkim: dkim(config)?,
        owner: dispatch::owner_name(),
        transport_source: transport_source(config).to_string(),
    })
}

/// A stop signal that flips on SIGINT or SIGTERM: take no new work.
pub(crate) fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let signal = shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        let _ = tx.send(true);
    });
    rx
}

pub(crate) fn fmt_time(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map(|d| {
            d.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .unwrap_or_else(|| t.to_string())
}

/// Unix seconds as the local time of day ("10:45:12"), for waits within a
/// run.
pub(crate) fn fmt_clock(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map(|d| d.with_timezone(&Local).format("%H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Unix seconds as ISO 8601 in UTC, for machines.
pub(crate) fn iso_time(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that comes right
/// after a server printed its address must not kill the process.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    }
}

/// The config file's name for messages ("bulletin.toml" when none was read).
pub(crate) fn config_file_name(config: &Config) -> String {
    config
        .file
        .as_ref()
        .map_or("bulletin.toml".into(), |f| f.display().to_string())
}

/// How long connecting and logging in to the IMAP mailbox may take.
pub(crate) const IMAP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What reaching the `[bounces.imap]` mailbox takes (`bounces imap`, `doctor`).
pub(crate) struct ImapAccess {
    pub url: crate::imap::ImapUrl,
    pub password: String,
    pub processed: String,
    pub roots: crate::imap::Roots,
    pub poll: Duration,
}

/// `[bounces.imap]` resolved: the URL parsed, the password from
/// `BULLETIN_IMAP_PASSWORD`, the `ca_file` read; `None` when the section is
/// not there. Each error names the setting and the file.
pub(crate) fn imap_access(config: &Config) -> Result<Option<ImapAccess>> {
    let Some(settings) = &config.bounces.imap else {
        return Ok(None);
    };
    let file = config_file_name(config);
    let url = crate::imap::ImapUrl::parse(&settings.url).map_err(|e| anyhow!("{file}: {e}"))?;
    let password = config.imap_password.clone().ok_or_else(|| {
        anyhow!(
            "BULLETIN_IMAP_PASSWORD is not set (the password of {} at {}, [bounces.imap] in {file})",
            url.user,
            url.server()
        )
    })?;
    let roots = match &settings.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow!("{} (bounces.imap.ca_file in {file}): {e}", path.display()))?;
            let roots = crate::imap::pem_certificates(&pem);
            if roots.is_empty() {
                bail!(
                    "{} (bounces.imap.ca_file in {file}): no PEM certificate in it",
                    path.display()
                );
            }
            roots
        }
        None => Vec::new(),
    };
    Ok(Some(ImapAccess {
        url,
        password,
        processed: settings.processed.clone(),
        roots,
        poll: Duration::from_secs(settings.poll_secs.max(1)),
    }))
}

/// The campaign's file stem, or the name itself: what `status`, `cancel`
/// and `report` accept.
pub(crate) fn campaign_name(name: &str) -> String {
    std::path::Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name)
        .to_string()
}

/// The frozen campaign by name or file, or a one-line error.
pub(crate) async fn find_campaign(store: &Store, name: &str) -> Result<CampaignRow> {
    if let Some(c) = store.campaign_by_slug(name).await? {
        return Ok(c);
    }
    match store.campaign_by_slug(&campaign_name(name)).await? {
        Some(c) => Ok(c),
        None => Err(no_campaign(store, name).await?),
    }
}

/// The error for a campaign name nobody has: with the closest existing
/// name when one is near ("did you mean", as a misspelt list gets it).
pub(crate) async fn no_campaign(store: &Store, name: &str) -> Result<anyhow::Error> {
    let campaigns = store.campaigns().await?;
    let near = crate::suggest::closest(
        &campaign_name(name),
        campaigns.iter().map(|c| c.slug.as_str()),
    );
    Ok(match near {
        Some(near) => anyhow!(
            "no campaign named {name:?}; did you mean {near:?}? (`bulletin status` lists them all)"
        ),
        None => anyhow!("no campaign named {name:?}; `bulletin status` lists them all"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that cannot be talked to is the SMTP URL's business; a task
    /// of bulletin's own that stopped is not.
    #[test]
    fn only_the_smtp_servers_failures_name_where_its_url_was_set() {
        let smtp = Transport::Smtp {
            url: crate::dispatch::transport::SmtpUrl::parse("smtp://127.0.0.1:2525", None).unwrap(),
            timeout: Duration::from_secs(1),
            hello: "localhost".into(),
        };
        let source = "BULLETIN_SMTP_URL";
        let down = dispatch::Error::Fatal("127.0.0.1:2525: refused".into());
        let down = format!("{:#}", transport_failure(down, &smtp, source));
        assert!(
            down.ends_with("(SMTP URL set by BULLETIN_SMTP_URL)"),
            "{down}"
        );
        let panic = dispatch::Error::Internal("the ledger task stopped: panicked".into());
        let panic = format!("{:#}", transport_failure(panic, &smtp, source));
        assert!(!panic.contains("SMTP URL"), "{panic}");
        assert!(panic.contains("a fault in bulletin itself"), "{panic}");
    }
}

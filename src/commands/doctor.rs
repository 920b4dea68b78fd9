//! `bulletin doctor`: the preflight a team runs before the first real send
//! and after any change. One line per check (`ok`, `warn`, `FAIL`), then a
//! verdict; exit 0 when all is ok, 1 with warnings only, 2 with a failure.
//! Talks to no host but the configured SMTP server, the `[bounces.imap]`
//! mailbox when there is one (a login, nothing read or moved), and
//! `base_url` with `--web`; sends a message only with `--send-test`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};

use super::compile::{
    Built, SAMPLE_EMAIL, SAMPLE_NAME, SAMPLE_PREFERENCES, SAMPLE_UNSUBSCRIBE, compile,
};
use super::setup;
use crate::cli::{DoctorArgs, Global};
use crate::compose;
use crate::config::Config;
use crate::config::MIN_SECRET_BYTES;
use crate::dispatch::transport::{self, SmtpUrl, Transport};
use crate::links::{Signer, Urls};
use crate::render::{self, Recipient};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    Warn,
    Fail,
}

/// The printed checks and the worst level seen.
struct Report {
    worst: Level,
    counts: [usize; 3],
}

impl Report {
    fn line(&mut self, level: Level, topic: &str, text: impl AsRef<str>) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {topic}: {}", text.as_ref());
        self.worst = self.worst.max(level);
        self.counts[level as usize] += 1;
    }

    /// A detail under the previous line (not a check).
    fn note(&self, text: impl AsRef<str>) {
        println!("      {}", text.as_ref());
    }
}

pub(crate) fn run(config: &Config, global: &Global, args: &DoctorArgs) -> Result<ExitCode> {
    let mut r = Report {
        worst: Level::Ok,
        counts: [0; 3],
    };
    sources(&mut r, config, global);
    let runtime = super::runtime()?;
    runtime.block_on(database(&mut r, config));
    clock(&mut r);
    secret(&mut r, config);
    base_url(&mut r, config);
    addresses(&mut r, config);
    let dkim = dkim(&mut r, config);
    let message_size = args
        .campaign
        .as_deref()
        .and_then(|file| campaign_size(&mut r, config, dkim.as_deref(), file));
    runtime.block_on(async {
        smtp(&mut r, config, message_size).await;
        imap(&mut r, config).await;
        if args.web {
            web(&mut r, config).await;
        }
        if let Some(to) = &args.send_test {
            send_test(&mut r, config, dkim.as_deref(), to).await;
        }
    });
    let [ok, warn, fail] = r.counts;
    let code = match r.worst {
        Level::Ok => {
            println!("verdict: ready to send ({ok} checks ok)");
            0
        }
        Level::Warn => {
            println!(
                "verdict: {warn} warning(s), no failure; sending works, but read the warnings"
            );
            1
        }
        Level::Fail => {
            println!(
                "verdict: {fail} failure(s), {warn} warning(s); fix the FAIL lines before sending"
            );
            2
        }
    };
    Ok(ExitCode::from(code))
}

/// Where the config file and database come from, and why.
fn sources(r: &mut Report, config: &Config, global: &Global) {
    let config_why = match &config.file {
        None if global.no_config => "none (--no-config)".to_string(),
        None => "none (no ./bulletin.toml; defaults and BULLETIN_* variables)".to_string(),
        Some(file) if global.config.is_some() => format!("{} (--config flag)", file.display()),
        Some(file) if std::env::var_os("BULLETIN_CONFIG").is_some() => {
            format!("{} (BULLETIN_CONFIG)", file.display())
        }
        Some(file) => format!("{} (found in the current folder)", file.display()),
    };
    r.line(Level::Ok, "config", config_why);
}

/// The database: which engine, where (and why), and for PostgreSQL whether
/// the server answers and which schema step it holds. Changes nothing.
async fn database(r: &mut Report, config: &Config) {
    let Some(path) = config.db.file() else {
        let db = format!("PostgreSQL {} ({})", config.db, config.db_source);
        r.line(Level::Ok, "database", db);
        return postgres_server(r, config).await;
    };
    let db = format!("SQLite {} ({})", config.db, config.db_source);
    if path.exists() {
        r.line(Level::Ok, "database", db);
    } else {
        r.line(
            Level::Warn,
            "database",
            format!("{db} does not exist yet; create it with `bulletin init` or an import"),
        );
    }
}

/// The PostgreSQL server: reachable, and its schema step against ours.
async fn postgres_server(r: &mut Report, config: &Config) {
    let topic = "database server";
    let found = match crate::store::probe(&config.db).await {
        Ok(found) => found,
        Err(e @ crate::store::Error::Unreachable(_)) => {
            let fix = format!("start it, or fix the host and port ({})", config.db_source);
            return r.line(Level::Fail, topic, format!("{e}; {fix}"));
        }
        Err(e @ crate::store::Error::LoginRefused(_)) => {
            return r.line(
                Level::Fail,
                topic,
                format!("{e} ({})", config.db_login_source()),
            );
        }
        Err(e) => return r.line(Level::Fail, topic, format!("{e} ({})", config.db_source)),
    };
    let server = format!("PostgreSQL {} answers", found.version);
    let (step, latest) = (found.step, found.latest);
    match step {
        0 => r.line(
            Level::Warn,
            topic,
            format!("{server}; no bulletin schema in it yet: `bulletin init` creates it"),
        ),
        _ if step > latest => r.line(
            Level::Fail,
            topic,
            format!("{server}; schema step {step} is newer than this program's (step {latest}): upgrade bulletin"),
        ),
        _ if step < latest => r.line(
            Level::Warn,
            topic,
            format!("{server}; schema step {step} of {latest}: the next command brings it up to date"),
        ),
        _ => r.line(Level::Ok, topic, format!("{server}; schema step {step} of {latest}")),
    }
}

/// A fixed clock (`BULLETIN_NOW`) is for tests only.
fn clock(r: &mut Report) {
    if let Some(at) = std::env::var_os("BULLETIN_NOW") {
        r.line(
            Level::Fail,
            "clock",
            format!(
                "BULLETIN_NOW={} fixes the clock (for tests): schedules, retries and leases stop moving; unset it",
                at.to_string_lossy()
            ),
        );
    }
}

fn secret(r: &mut Report, config: &Config) {
    match &config.secrets.current {
        None => r.line(
            Level::Fail,
            "secret",
            "BULLETIN_SECRET is not set: every link is signed with it; generate one with `openssl rand -hex 32`",
        ),
        Some(s) if s.len() < MIN_SECRET_BYTES => r.line(
            Level::Fail,
            "secret",
            format!(
                "BULLETIN_SECRET is {} bytes; use at least {MIN_SECRET_BYTES} (`openssl rand -hex 32`)",
                s.len()
            ),
        ),
        Some(s) => r.line(
            Level::Ok,
            "secret",
            format!("BULLETIN_SECRET is set ({} bytes)", s.len()),
        ),
    }
}

fn base_url(r: &mut Report, config: &Config) {
    let url = &config.base_url;
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', ':']).next().unwrap_or(""))
        .unwrap_or("");
    if url.starts_with("https://") {
        r.line(Level::Ok, "base_url", format!("{url} is https"));
    } else if is_loopback(host) {
        r.line(
            Level::Warn,
            "base_url",
            format!("{url} is local: fine for testing, but links in real mail must be https"),
        );
    } else {
        r.line(
            Level::Fail,
            "base_url",
            format!("{url} is not https: one-click unsubscribe (RFC 8058) requires https links"),
        );
    }
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "[::1]" | "::1") || host.starts_with("127.")
}

/// The From address and the bounce (VERP) domain.
fn addresses(r: &mut Report, config: &Config) {
    let from = &config.sender.from;
    let Some(from_domain) = crate::config::domain_of(from).filter(|d| d.contains('.')) else {
        r.line(
            Level::Fail,
            "from",
            format!("sender.from = {from:?} has no address with a domain"),
        );
        return;
    };
    r.line(Level::Ok, "from", format!("{from} (domain {from_domain})"));
    let bounce = config.bounce_domain();
    if aligned(&bounce, &from_domain) {
        r.line(
            Level::Ok,
            "bounce domain",
            format!("{bounce}: returned mail comes to bounces+TOKEN@{bounce}"),
        );
    } else {
        r.line(
            Level::Warn,
            "bounce domain",
            format!("{bounce} is not {from_domain} or under it: DMARC (SPF) will not align"),
        );
    }
}

/// `a` and `b` are the same domain, or one is under the other.
fn aligned(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
}

/// Loads the key and prints the DNS record to publish.
fn dkim(r: &mut Report, config: &Config) -> Option<std::sync::Arc<crate::dkim::DkimSigner>> {
    match setup::dkim(config) {
        Ok(None) => {
            r.line(
                Level::Warn,
                "dkim",
                "no [dkim] section: mail goes out unsigned, and Gmail and Yahoo file unsigned bulk mail as spam",
            );
            None
        }
        Ok(Some(signer)) => {
            let d = config.dkim.as_ref().expect("configured");
            r.line(
                Level::Ok,
                "dkim",
                format!(
                    "{} key {} loads (selector {}, domain {}); publish this DNS record:",
                    d.algorithm,
                    d.key_file.display(),
                    d.selector,
                    d.domain
                ),
            );
            r.note(signer.dns_line());
            let from_domain = crate::config::domain_of(&config.sender.from).unwrap_or_default();
            if !aligned(&d.domain, &from_domain) {
                r.line(
                    Level::Warn,
                    "dkim",
                    format!(
                        "dkim.domain {} is not the From domain {from_domain} or under it: DMARC will not align",
                        d.domain
                    ),
                );
            }
            Some(signer)
        }
        Err(e) => {
            r.line(Level::Fail, "dkim", format!("{e:#}"));
            None
        }
    }
}

/// The size of the campaign's message for one recipient, signed as it
/// would go out; `None` (with a FAIL line) when it does not compile.
fn campaign_size(
    r: &mut Report,
    config: &Config,
    dkim: Option<&crate::dkim::DkimSigner>,
    file: &Path,
) -> Option<usize> {
    match sample_message(config, dkim, file) {
        Ok(bytes) => Some(bytes.len()),
        Err(e) => {
            r.line(
                Level::Fail,
                "campaign",
                format!("{}: {e:#}", file.display()),
            );
            None
        }
    }
}

/// The campaign compiled and composed for a sample recipient, with links
/// and tokens as long as real ones.
fn sample_message(
    config: &Config,
    dkim: Option<&crate::dkim::DkimSigner>,
    file: &Path,
) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(file)?;
    let Built { campaign, compiled } = compile(config, &file.display().to_string(), &text)?;
    let signer = Signer::new(b"doctor: length only", &[]);
    let urls = Urls::new(&config.base_url);
    let unsubscribe = urls.unsubscribe(&signer, &SAMPLE_UNSUBSCRIBE);
    let body = compiled.personalise(&Recipient {
        email: SAMPLE_EMAIL,
        name: SAMPLE_NAME,
        attributes: None,
        unsubscribe_url: &unsubscribe,
        preferences_url: &urls.preferences(&signer, &SAMPLE_PREFERENCES),
        archive_url: &urls.archive(&campaign.slug),
    });
    let domain = config.bounce_domain();
    let token = signer.sign(&crate::links::Bounce { delivery: 0 });
    let list_id = compose::list_id(&campaign.lists[0], &campaign.lists[0], &domain);
    let headers = compose::Headers {
        from: campaign.from.as_deref().unwrap_or(&config.sender.from),
        reply_to: config.sender.reply_to.as_deref(),
        to_email: SAMPLE_EMAIL,
        to_name: SAMPLE_NAME,
        date: SystemTime::now(),
        message_id: &format!("{token}@{domain}"),
        list_id: Some(&list_id),
        unsubscribe_url: Some(&unsubscribe),
        unsubscribe_mailto: Some(&format!("unsubscribe+{token}@{domain}")),
        return_path: Some(&format!("bounces+{token}@{domain}")),
        test: false,
        feedback_id: None,
    };
    Ok(compose::wire_bytes(
        &compose::message(&headers, &body)?,
        dkim,
    )?)
}

/// Which transport sending uses and why; a warning when an outbox is
/// configured too (it is ignored while an SMTP URL is set) or when the
/// outbox is all there is (nothing reaches anyone).
fn transport_line(r: &mut Report, config: &Config, transport: &Transport) {
    let source = setup::transport_source(config);
    match transport {
        Transport::Smtp { url, .. } if config.outbox_source.is_explicit() => r.line(
            Level::Warn,
            "transport",
            format!(
                "SMTP via {} ({source}); the outbox {} ({}) is ignored while an SMTP URL is set; \
                 a campaign keeps the transport it started with, so remove one of the two",
                url.addr(),
                config.outbox.display(),
                config.outbox_source
            ),
        ),
        Transport::Smtp { url, .. } => r.line(
            Level::Ok,
            "transport",
            format!("SMTP via {} ({source})", url.addr()),
        ),
        Transport::Outbox(dir) => r.line(
            Level::Warn,
            "transport",
            format!(
                "the outbox folder {} ({source}): messages are written there, not sent; \
                 set BULLETIN_SMTP_URL to send",
                dir.display()
            ),
        ),
    }
}

/// The SMTP server: answers, TLS, credentials, what it advertises.
async fn smtp(r: &mut Report, config: &Config, message_size: Option<usize>) {
    let transport = match setup::transport(config) {
        Ok(t) => t,
        Err(e) => return r.line(Level::Fail, "smtp", format!("{e:#}")),
    };
    transport_line(r, config, &transport);
    let Transport::Smtp {
        url,
        timeout,
        hello,
    } = &transport
    else {
        return;
    };
    let addr = url.addr();
    let probe = transport::probe(url, *timeout, hello).await;
    match &probe.greeting {
        Some(Ok(name)) => r.line(Level::Ok, "smtp", format!("{addr} answers ({name})")),
        Some(Err(e)) => return r.line(Level::Fail, "smtp", e),
        None => return r.line(Level::Fail, "smtp", format!("{addr}: no answer")),
    }
    tls_line(r, url, &probe);
    match &probe.auth {
        None => {}
        Some(Ok(())) => r.line(
            Level::Ok,
            "smtp auth",
            format!(
                "credentials for {} accepted",
                url.user.as_deref().unwrap_or("")
            ),
        ),
        // Refused before sending anything: the TLS line says why.
        Some(Err(_)) if probe.tls.as_ref().is_some_and(|t| t.is_err()) => {
            r.note("smtp auth: not tried, the password would go in clear")
        }
        Some(Err(e)) => r.line(Level::Fail, "smtp auth", e),
    }
    if probe.tls.as_ref().is_some_and(|t| t.is_err()) && probe.keywords.is_empty() {
        return;
    }
    advertised(r, &probe, message_size);
}

/// Logs in to the `[bounces.imap]` mailbox, when configured, and out again.
async fn imap(r: &mut Report, config: &Config) {
    let access = match setup::imap_access(config) {
        Ok(Some(access)) => access,
        Ok(None) => return,
        Err(e) => return r.line(Level::Fail, "imap", format!("{e:#}")),
    };
    let opened = crate::imap::Mailbox::open(
        &access.url,
        &access.password,
        &access.processed,
        &access.roots,
        setup::IMAP_CONNECT_TIMEOUT,
    )
    .await;
    match opened {
        Ok(mailbox) => {
            mailbox.close().await;
            r.line(
                Level::Ok,
                "imap",
                format!(
                    "logged in to {} as {}; {} and {} are there",
                    access.url.server(),
                    access.url.user,
                    access.url.mailbox,
                    access.processed
                ),
            );
        }
        Err(e) => r.line(Level::Fail, "imap", e.to_string()),
    }
}

fn tls_line(r: &mut Report, url: &SmtpUrl, probe: &transport::Probe) {
    match &probe.tls {
        Some(Ok(how)) => r.line(Level::Ok, "smtp tls", *how),
        Some(Err(e)) if probe.starttls_offered && url.tls != transport::Tls::None => r.line(
            Level::Fail,
            "smtp tls",
            format!(
                "STARTTLS offered, but the TLS handshake failed (is the certificate valid for {}?): {e}",
                url.host
            ),
        ),
        Some(Err(e)) if url.tls == transport::Tls::None && is_loopback(&url.host) => r.line(
            Level::Ok,
            "smtp tls",
            format!("{e}; the server is on this machine"),
        ),
        Some(Err(e)) if url.tls == transport::Tls::None => r.line(
            Level::Warn,
            "smtp tls",
            format!(
                "{e}, to a server on another machine: use tls=none for loopback test servers only"
            ),
        ),
        Some(Err(e)) if url.user.is_some() => r.line(
            Level::Fail,
            "smtp tls",
            format!(
                "{e}; with user {} the password would go in clear, so bulletin will not log in",
                url.user.as_deref().unwrap_or("")
            ),
        ),
        Some(Err(e)) if url.tls == transport::Tls::Required => r.line(
            Level::Fail,
            "smtp tls",
            format!("{e}; the URL requires TLS"),
        ),
        Some(Err(e)) => r.line(
            Level::Warn,
            "smtp tls",
            format!("{e}: mail goes to the server unencrypted"),
        ),
        None => {}
    }
}

/// SIZE (against the campaign), SMTPUTF8, PIPELINING.
fn advertised(r: &mut Report, probe: &transport::Probe, message_size: Option<usize>) {
    r.line(
        Level::Ok,
        "smtp advertises",
        if probe.keywords.is_empty() {
            "no extensions".to_string()
        } else {
            probe.keywords.join(", ")
        },
    );
    match (probe.size_limit(), message_size) {
        (Some(limit), Some(size)) if size as u64 > limit => r.line(
            Level::Fail,
            "smtp size",
            format!("the campaign's message is {size} bytes; the server takes at most {limit}"),
        ),
        (Some(limit), Some(size)) => r.line(
            Level::Ok,
            "smtp size",
            format!("the campaign's message is {size} bytes; the server takes up to {limit}"),
        ),
        (None, Some(size)) => r.line(
            Level::Ok,
            "smtp size",
            format!("the campaign's message is {size} bytes; the server states no SIZE limit"),
        ),
        _ => {}
    }
    if probe.offers("SMTPUTF8") {
        r.line(
            Level::Ok,
            "smtp utf8",
            "SMTPUTF8 offered: addresses like ines.garcía@example.org can be mailed",
        );
    } else {
        r.line(
            Level::Warn,
            "smtp utf8",
            "no SMTPUTF8: subscribers whose address has non-ASCII letters before the @ cannot be mailed (their deliveries fail; they stay subscribed)",
        );
    }
    if probe.offers("PIPELINING") {
        r.line(Level::Ok, "smtp pipelining", "PIPELINING offered");
    } else {
        r.line(
            Level::Warn,
            "smtp pipelining",
            "no PIPELINING: each command waits for its reply, so sending is slower",
        );
    }
}

/// `GET base_url/healthz` answers 200.
async fn web(r: &mut Report, config: &Config) {
    let url = format!("{}/healthz", config.base_url);
    match tokio::time::timeout(Duration::from_secs(10), http_get(&url)).await {
        Ok(Ok((200, _))) => r.line(Level::Ok, "web", format!("{url} answers 200")),
        Ok(Ok((status, body))) => r.line(
            Level::Fail,
            "web",
            format!(
                "{url} answers {status}: {}",
                body.lines().next().unwrap_or("")
            ),
        ),
        Ok(Err(e)) => r.line(
            Level::Fail,
            "web",
            format!("{url}: {e} (is `bulletin serve` running?)"),
        ),
        Err(_) => r.line(Level::Fail, "web", format!("{url}: no answer within 10 s")),
    }
}

/// A one-shot HTTP/1.1 GET (https with the web PKI roots): (status, body).
async fn http_get(url: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
    trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

    let (https, rest) = match url.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => anyhow::bail!("base_url must start with http:// or https://"),
    };
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, p.parse()?),
        _ => (hostport, if https { 443 } else { 80 }),
    };
    let host = host.trim_matches(['[', ']']);
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let mut stream: Box<dyn Stream> = if https {
        use tokio_rustls::rustls;
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
        Box::new(
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
                .connect(name, tcp)
                .await?,
        )
    } else {
        Box::new(tcp)
    };
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut reply = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut reply).await?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP reply"))?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// Sends one plain test message (DKIM-signed when configured) to `to`.
async fn send_test(
    r: &mut Report,
    config: &Config,
    dkim: Option<&crate::dkim::DkimSigner>,
    to: &str,
) {
    let sent = async {
        let transport = setup::transport(config)?;
        if matches!(transport, Transport::Smtp { .. }) {
            setup::require_secret(config).context("not sent")?;
        }
        let domain = config.bounce_domain();
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let message_id = format!("doctor.{nonce:x}@{domain}");
        let headers = compose::Headers {
            from: &config.sender.from,
            reply_to: config.sender.reply_to.as_deref(),
            to_email: to,
            to_name: "",
            date: SystemTime::now(),
            message_id: &message_id,
            list_id: None,
            unsubscribe_url: None,
            unsubscribe_mailto: None,
            return_path: None,
            test: true,
            feedback_id: None,
        };
        let body = render::Personalised {
            subject: "bulletin doctor test message".into(),
            text: "This message was sent by `bulletin doctor --send-test`.\n".into(),
            html: "<p>This message was sent by <code>bulletin doctor --send-test</code>.</p>"
                .into(),
        };
        let message = compose::message(&headers, &body)?;
        let bytes = compose::wire_bytes(&message, dkim)?;
        let mut sender = transport.sender();
        let reply = sender
            .send(message.envelope(), &bytes, &format!("doctor-{nonce:x}"), 1)
            .await;
        sender.close().await;
        anyhow::Ok(reply?)
    };
    match sent.await {
        Ok(reply) => r.line(Level::Ok, "send test", format!("sent to {to}: {reply}")),
        Err(e) => r.line(Level::Fail, "send test", format!("to {to}: {e:#}")),
    }
}

//! Where messages go: an SMTP server (our own small pool of lettre
//! `AsyncSmtpConnection`s over sockets with TCP_NODELAY, see below) or a
//! local outbox folder of `.eml` files.
//!
//! lettre 0.11.23 never sets TCP_NODELAY, so each command waits ~40 ms for
//! the server's delayed ACK. We open the socket ourselves, set nodelay, and
//! hand it to `AsyncSmtpConnection::connect_with_transport`; STARTTLS and
//! implicit TLS still work on it. We also run MAIL/RCPT/DATA ourselves
//! instead of `send()`, which drops the connection on any negative reply:
//! a rejected recipient is answered with RSET and the connection is kept.
//!
//! Every wait is bounded: connecting, each TLS and AUTH step and the answer
//! to the message text by the configured timeout, a whole transaction by
//! four times it, QUIT by `QUIT_WAIT`. A connection that timed out or broke
//! is dropped without QUIT. The sender remembers whether the current
//! message's text was sent (`Sender::message_sent`): a missing answer from
//! then on is an unknown outcome (`Error::Unanswered`), not a failure to
//! retry; a server that stops answering before that stops the run
//! (`Error::Fatal`), since every recipient would wait the same.

use std::path::PathBuf;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

use super::Error;
use super::verdict::END_OF_DATA;
use crate::redact::{self, Password};

/// The longest wait for the reply to QUIT: the messages are settled by
/// then, so the reply does not matter.
const QUIT_WAIT: Duration = Duration::from_secs(2);

/// How far one message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, or MAIL/RCPT/DATA: nothing was delivered yet.
    Envelope,
    /// The message text is being sent or its answer awaited: from here a
    /// lost answer leaves the outcome unknown.
    Message,
}

/// TLS mode of an SMTP URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// STARTTLS when the server offers it, plain otherwise (`smtp://`).
    Opportunistic,
    /// STARTTLS or fail (`smtp://...?tls=required`).
    Required,
    /// Implicit TLS (`smtps://`).
    Wrapper,
    /// Never (`smtp://...?tls=none`), for loopback test servers.
    None,
}

/// A parsed SMTP URL: `smtp[s]://[user[:password]@]host[:port][?tls=...]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl SmtpUrl {
    /// Parses the URL; `password` (from the environment) fills in a missing one.
    pub fn parse(url: &str, password: Option<&str>) -> Result<SmtpUrl, Error> {
        let bad = |why: &str| Error::BadUrl {
            url: redact::url(url, Password::Removed),
            why: why.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected smtp://host:port or smtps://host:port"))?;
        let (mut tls, default_port) = match scheme {
            "smtp" => (Tls::Opportunistic, 587),
            "smtps" => (Tls::Wrapper, 465),
            _ => return Err(bad("the scheme must be smtp or smtps")),
        };
        // User information first, up to the last '@': a password may hold
        // a '?' or a '/' (no option value holds an '@').
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse().map_err(|_| bad("the port is not a number"))?,
            ),
            _ => (hostport.to_string(), default_port),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let (user, url_password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(percent_decode(user)), Some(percent_decode(pass))),
                None => (Some(percent_decode(u)), None),
            },
            None => (None, None),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("tls", "required")) if scheme == "smtp" => tls = Tls::Required,
                Some(("tls", "opportunistic")) if scheme == "smtp" => tls = Tls::Opportunistic,
                Some(("tls", "none")) if scheme == "smtp" => tls = Tls::None,
                _ => {
                    // The name only: the value may be a password.
                    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                    return Err(bad(&format!(
                        "unknown option {name:?}; use tls=required, tls=opportunistic or tls=none"
                    )));
                }
            }
        }
        Ok(SmtpUrl {
            host,
            port,
            tls,
            user,
            password: url_password.or(password.map(String::from)),
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a run sends.
#[derive(Debug, Clone)]
pub enum Transport {
    Smtp {
        url: SmtpUrl,
        timeout: Duration,
        /// EHLO name.
        hello: String,
    },
    Outbox(PathBuf),
}

/// One worker's channel to the transport.
pub enum Sender {
    Smtp {
        url: SmtpUrl,
        timeout: Duration,
        hello: ClientId,
        conn: Option<Box<Conn>>,
        sent_on_conn: usize,
        phase: Phase,
    },
    Outbox(PathBuf),
}

impl Transport {
    pub fn sender(&self) -> Sender {
        match self {
            Transport::Smtp {
                url,
                timeout,
                hello,
            } => Sender::Smtp {
                url: url.clone(),
                timeout: *timeout,
                hello: ClientId::Domain(hello.clone()),
                conn: None,
                sent_on_conn: 0,
                phase: Phase::Envelope,
            },
            Transport::Outbox(dir) => Sender::Outbox(dir.clone()),
        }
    }

    /// What to call it in messages.
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp { url, .. } => format!("smtp {}:{}", url.host, url.port),
            Transport::Outbox(dir) => format!("outbox {}", dir.display()),
        }
    }
}

impl Sender {
    /// Sends one message. `name` names the outbox file.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        bytes: &[u8],
        name: &str,
        max_per_conn: usize,
    ) -> Result<String, Error> {
        match self {
            Sender::Outbox(dir) => {
                let path = dir.join(format!("{name}.eml"));
                let tmp = dir.join(format!(".{name}.eml.tmp"));
                tokio::fs::write(&tmp, bytes)
                    .await
                    .map_err(|e| Error::Outbox(format!("{}: {e}", tmp.display())))?;
                tokio::fs::rename(&tmp, &path)
                    .await
                    .map_err(|e| Error::Outbox(format!("{}: {e}", path.display())))?;
                Ok(format!("written to {}", path.display()))
            }
            Sender::Smtp {
                url,
                timeout,
                hello,
                conn,
                sent_on_conn,
                phase,
            } => {
                *phase = Phase::Envelope;
                if (conn.as_ref().is_some_and(|c| c.has_broken()) || *sent_on_conn >= max_per_conn)
                    && let Some(c) = conn.take()
                {
                    quit(c, *timeout).await;
                }
                let fresh = conn.is_none();
                if fresh {
                    *conn = Some(Box::new(connect(url, *timeout, hello).await?));
                    *sent_on_conn = 0;
                }
                let pipelining = conn.as_ref().is_some_and(|c| c.pipelining);
                let c = &mut conn.as_mut().expect("connected").inner;
                if let Some(address) = needs_smtputf8(envelope)
                    && !c.server_info().supports_feature(Extension::SmtpUtfEight)
                {
                    // Nothing was sent for this message: the connection stays.
                    return Err(Error::NoSmtpUtf8(address));
                }
                // A backstop: each stage inside has its own bound too.
                let result = tokio::time::timeout(
                    *timeout * 4,
                    transaction(c, pipelining, envelope, bytes, *timeout, phase),
                )
                .await;
                let result = match result {
                    Ok(r) => r,
                    Err(_) if *phase == Phase::Message => Err(Error::Unanswered(format!(
                        "no answer within {} s",
                        timeout.as_secs()
                    ))),
                    Err(_) => Err(Error::Fatal(format!(
                        "{}:{}: the server stopped answering (no reply within {} s before the message was sent)",
                        url.host,
                        url.port,
                        (*timeout * 4).as_secs()
                    ))),
                };
                match &result {
                    Ok(_) => *sent_on_conn += 1,
                    Err(Error::Reply { code, .. }) if *code != 421 => {
                        // A rejected message: reset and keep the connection.
                        if tokio::time::timeout(*timeout, c.command(Rset))
                            .await
                            .is_ok_and(|r| r.is_ok())
                        {
                            return result;
                        }
                        *conn = None;
                    }
                    // Timed out, broken, or a 421 (the server is closing):
                    // drop the connection without waiting for anything.
                    Err(_) => *conn = None,
                }
                match result {
                    // A connection that breaks before the first message on
                    // it went out is the server's trouble, not the
                    // recipient's: stop the run without charging anyone.
                    Err(Error::Dropped(e)) if fresh && *phase != Phase::Message => {
                        Err(Error::Fatal(format!(
                            "{}:{}: the server closed a new connection before the first message was sent ({e})",
                            url.host, url.port
                        )))
                    }
                    other => other,
                }
            }
        }
    }

    /// Closes the connection politely: QUIT, waiting a bounded time.
    pub async fn close(&mut self) {
        if let Sender::Smtp { conn, timeout, .. } = self
            && let Some(c) = conn.take()
        {
            quit(c, *timeout).await;
        }
    }

    /// Drops the connection at once, without QUIT: after a send was
    /// abandoned half-way the conversation is in no known state.
    pub fn discard(&mut self) {
        if let Sender::Smtp { conn, .. } = self {
            *conn = None;
        }
    }

    /// Whether the last message's text had started to go out: a send
    /// abandoned after that may have been delivered.
    pub fn message_sent(&self) -> bool {
        match self {
            Sender::Smtp { phase, .. } => *phase == Phase::Message,
            // A file is written whole or not at all.
            Sender::Outbox(_) => false,
        }
    }
}

/// QUIT, waiting at most `QUIT_WAIT` (or `timeout` when shorter) for the
/// answer; the socket closes when `c` is dropped either way.
async fn quit(mut c: Box<Conn>, timeout: Duration) {
    let _ = tokio::time::timeout(QUIT_WAIT.min(timeout), c.quit()).await;
}

/// A connection and whether its server pipelines (RFC 2920).
pub struct Conn {
    inner: AsyncSmtpConnection,
    pipelining: bool,
}

impl std::ops::Deref for Conn {
    type Target = AsyncSmtpConnection;
    fn deref(&self) -> &AsyncSmtpConnection {
        &self.inner
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AsyncSmtpConnection {
        &mut self.inner
    }
}

/// Several commands written at once (PIPELINING); `command` reads the
/// first reply, `read_response` the others.
struct Batch(String);

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// MAIL, RCPT, DATA (in one write when the server pipelines), then the
/// message; the reply to the message text on success.
async fn transaction(
    c: &mut AsyncSmtpConnection,
    pipelining: bool,
    envelope: &Envelope,
    bytes: &[u8],
    timeout: Duration,
    phase: &mut Phase,
) -> Result<String, Error> {
    let mut params = Vec::new();
    if !bytes.is_ascii() && c.server_info().supports_feature(Extension::EightBitMime) {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    if needs_smtputf8(envelope).is_some() {
        params.push(MailParameter::SmtpUtfEight);
    }
    let mail = Mail::new(envelope.from().cloned(), params);
    if pipelining {
        let mut batch = mail.to_string();
        for to in envelope.to() {
            batch.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
        }
        batch.push_str(&Data.to_string());
        // Every reply must be read, whatever the first ones said.
        let mail_reply = c.command(Batch(batch)).await;
        if let Err(e) = &mail_reply
            && e.status().is_none()
        {
            return Err(Error::from_smtp(mail_reply.unwrap_err(), "MAIL"));
        }
        let mut first_error = mail_reply.err().map(|e| Error::from_smtp(e, "MAIL"));
        for _ in envelope.to() {
            match c.read_response().await {
                Ok(_) => {}
                Err(e) if e.status().is_none() => return Err(Error::from_smtp(e, "RCPT")),
                Err(e) => {
                    first_error.get_or_insert(Error::from_smtp(e, "RCPT"));
                }
            }
        }
        match c.read_response().await {
            Ok(_) if first_error.is_some() => {
                // A server that said 354 anyway: end the empty message.
                let _ = c.message(b"").await;
            }
            Ok(_) => {}
            Err(e) if e.status().is_none() => return Err(Error::from_smtp(e, "DATA")),
            Err(e) => {
                first_error.get_or_insert(Error::from_smtp(e, "DATA"));
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    } else {
        c.command(mail)
            .await
            .map_err(|e| Error::from_smtp(e, "MAIL"))?;
        for to in envelope.to() {
            c.command(Rcpt::new(to.clone(), vec![]))
                .await
                .map_err(|e| Error::from_smtp(e, "RCPT"))?;
        }
        c.command(Data)
            .await
            .map_err(|e| Error::from_smtp(e, "DATA"))?;
    }
    // From here a lost answer may mean the message was delivered.
    *phase = Phase::Message;
    let reply = match tokio::time::timeout(timeout, c.message(bytes)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) if e.status().is_some() => return Err(Error::from_smtp(e, END_OF_DATA)),
        Ok(Err(e)) => return Err(Error::Unanswered(e.to_string())),
        Err(_) => {
            return Err(Error::Unanswered(format!(
                "no answer within {} s",
                timeout.as_secs()
            )));
        }
    };
    Ok(format!(
        "{} {}",
        reply.code(),
        reply.message().collect::<Vec<_>>().join(" ")
    ))
}

/// The first envelope address that is not ASCII (an internationalised
/// local part; domains are punycode by then): the transaction needs
/// SMTPUTF8 (RFC 6531).
fn needs_smtputf8(envelope: &Envelope) -> Option<String> {
    envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .find(|a| !AsRef::<str>::as_ref(a).is_ascii())
        .map(|a| a.to_string())
}

/// Opens a connection: TCP with nodelay, EHLO, TLS as configured, AUTH.
/// AUTH is only ever sent inside TLS, unless the URL says `tls=none`.
/// lettre keeps only the EHLO keywords it knows, so the EHLO is repeated
/// (before AUTH) to learn whether the server pipelines.
async fn connect(url: &SmtpUrl, timeout: Duration, hello: &ClientId) -> Result<Conn, Error> {
    let mut conn = greet(url, timeout, hello).await?;
    let encrypted = match url.tls {
        Tls::Wrapper => true,
        Tls::Required | Tls::Opportunistic if conn.can_starttls() => {
            start_tls(&mut conn, url, timeout, hello).await?;
            true
        }
        Tls::Required => {
            return Err(Error::Fatal(format!(
                "{}: the server does not offer STARTTLS and the URL requires TLS",
                url.addr()
            )));
        }
        _ => false,
    };
    let pipelining = ehlo_keywords(&mut conn, timeout, hello)
        .await
        .iter()
        .any(|k| k.eq_ignore_ascii_case("PIPELINING"));
    authenticate(&mut conn, url, encrypted, timeout).await?;
    Ok(Conn {
        inner: conn,
        pipelining,
    })
}

impl SmtpUrl {
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// TCP (with nodelay), the server's greeting and EHLO; implicit TLS first
/// for `smtps://`.
async fn greet(
    url: &SmtpUrl,
    timeout: Duration,
    hello: &ClientId,
) -> Result<AsyncSmtpConnection, Error> {
    let addr = url.addr();
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| Error::Fatal(format!("cannot connect to {addr}: timed out")))?
        .map_err(|e| Error::Fatal(format!("cannot connect to {addr}: {e}")))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Error::Fatal(format!("{addr}: {e}")))?;
    let conn = match url.tls {
        Tls::Wrapper => {
            // Implicit TLS: lettre does the handshake on its own socket, so
            // this path goes without TCP_NODELAY (slower, still correct).
            drop(stream);
            tokio::time::timeout(
                timeout,
                AsyncSmtpConnection::connect_tokio1(
                    (url.host.as_str(), url.port),
                    Some(timeout),
                    hello,
                    Some(tls_parameters(url)?),
                    None,
                ),
            )
            .await
        }
        _ => {
            tokio::time::timeout(
                timeout,
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), hello),
            )
            .await
        }
    };
    conn.map_err(|_| Error::Fatal(format!("{addr}: no greeting from the server")))?
        .map_err(|e| Error::connect(e, &addr))
}

fn tls_parameters(url: &SmtpUrl) -> Result<TlsParameters, Error> {
    TlsParameters::new(url.host.clone())
        .map_err(|e| Error::Fatal(format!("TLS setup for {}: {e}", url.host)))
}

/// STARTTLS and the TLS handshake (the certificate must be valid for the host).
async fn start_tls(
    conn: &mut AsyncSmtpConnection,
    url: &SmtpUrl,
    timeout: Duration,
    hello: &ClientId,
) -> Result<(), Error> {
    let addr = url.addr();
    tokio::time::timeout(timeout, conn.starttls(tls_parameters(url)?, hello))
        .await
        .map_err(|_| Error::Fatal(format!("{addr}: STARTTLS timed out")))?
        .map_err(|e| Error::Fatal(format!("{addr}: STARTTLS failed: {e}")))
}

/// The EHLO keywords with their parameters (`SIZE 10240000`), as the server
/// lists them now; empty if it does not answer.
async fn ehlo_keywords(
    conn: &mut AsyncSmtpConnection,
    timeout: Duration,
    hello: &ClientId,
) -> Vec<String> {
    match tokio::time::timeout(timeout, conn.command(Ehlo::new(hello.clone()))).await {
        // The first line is the server's name, the others its extensions.
        Ok(Ok(reply)) => reply
            .message()
            .skip(1)
            .map(|l| l.trim().to_string())
            .collect(),
        _ => Vec::new(),
    }
}

/// AUTH with the URL's user, if any. The one rule for credentials: never
/// outside TLS unless the URL says `tls=none`; refused before anything is sent.
async fn authenticate(
    conn: &mut AsyncSmtpConnection,
    url: &SmtpUrl,
    encrypted: bool,
    timeout: Duration,
) -> Result<(), Error> {
    let Some(user) = &url.user else {
        return Ok(());
    };
    let addr = url.addr();
    if !encrypted && url.tls != Tls::None {
        return Err(Error::Fatal(format!(
            "{addr}: the server does not offer STARTTLS, so the password for {user} \
             would go in clear; nothing was sent (use a server with STARTTLS or smtps://, \
             or tls=none in the SMTP URL for a loopback test server)"
        )));
    }
    let creds = Credentials::new(user.clone(), url.password.clone().unwrap_or_default());
    tokio::time::timeout(
        timeout,
        conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds),
    )
    .await
    .map_err(|_| Error::Fatal(format!("{addr}: AUTH timed out")))?
    .map_err(|e| Error::Fatal(format!("{addr}: authentication failed for {user}: {e}")))?;
    Ok(())
}

/// What `bulletin doctor` learns from the server, step by step; sends no
/// message. A step that could not run is `None`.
#[derive(Debug, Default)]
pub struct Probe {
    /// The server's name from its EHLO reply, or why it did not answer.
    pub greeting: Option<Result<String, String>>,
    /// Whether TLS is up: `Ok(how)`, or why not.
    pub tls: Option<Result<&'static str, String>>,
    /// The server offered STARTTLS (so a TLS failure is the handshake's).
    pub starttls_offered: bool,
    /// EHLO keywords after TLS, with parameters (`SIZE 10240000`).
    pub keywords: Vec<String>,
    /// `None` without a user in the URL.
    pub auth: Option<Result<(), String>>,
}

impl Probe {
    /// The SIZE limit the server advertised (RFC 1870), if any.
    pub fn size_limit(&self) -> Option<u64> {
        self.keywords.iter().find_map(|k| {
            let (name, value) = k.split_once(' ')?;
            name.eq_ignore_ascii_case("SIZE")
                .then(|| value.trim().parse().ok())
                .flatten()
                .filter(|&n| n > 0)
        })
    }

    /// Whether the server advertised `keyword` (case-insensitive).
    pub fn offers(&self, keyword: &str) -> bool {
        self.keywords.iter().any(|k| {
            k.split_whitespace()
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(keyword))
        })
    }
}

/// Connects as `connect` does, but records each step instead of stopping
/// at the first failure where the next step can still tell something.
pub async fn probe(url: &SmtpUrl, timeout: Duration, hello: &str) -> Probe {
    let hello = ClientId::Domain(hello.to_string());
    let mut probe = Probe::default();
    let mut conn = match greet(url, timeout, &hello).await {
        Ok(conn) => conn,
        Err(e) => {
            probe.greeting = Some(Err(e.to_string()));
            return probe;
        }
    };
    probe.greeting = Some(Ok(conn.server_info().name().to_string()));
    probe.starttls_offered = conn.can_starttls();
    let (encrypted, tls) = match url.tls {
        Tls::Wrapper => (true, Ok("implicit TLS (smtps://)")),
        Tls::None => (false, Err("tls=none in the SMTP URL: no TLS".to_string())),
        _ if conn.can_starttls() => match start_tls(&mut conn, url, timeout, &hello).await {
            Ok(()) => (true, Ok("STARTTLS offered, TLS handshake ok")),
            Err(e) => {
                probe.tls = Some(Err(e.to_string()));
                return probe;
            }
        },
        _ => (false, Err("the server does not offer STARTTLS".to_string())),
    };
    probe.tls = Some(tls);
    probe.keywords = ehlo_keywords(&mut conn, timeout, &hello).await;
    if url.user.is_some() {
        probe.auth = Some(
            authenticate(&mut conn, url, encrypted, timeout)
                .await
                .map_err(|e| e.to_string()),
        );
    }
    let _ = tokio::time::timeout(timeout, conn.quit()).await;
    probe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = SmtpUrl::parse(
            "smtp://mailer@smtp.example.org:2525?tls=required",
            Some("pw"),
        )
        .unwrap();
        assert_eq!(u.host, "smtp.example.org");
        assert_eq!(u.port, 2525);
        assert_eq!(u.tls, Tls::Required);
        assert_eq!(u.user.as_deref(), Some("mailer"));
        assert_eq!(u.password.as_deref(), Some("pw"));
        let u = SmtpUrl::parse("smtp://127.0.0.1:25", None).unwrap();
        assert_eq!((u.tls, u.port, u.user), (Tls::Opportunistic, 25, None));
        let u = SmtpUrl::parse("smtps://a%40b:p%3As@h", None).unwrap();
        assert_eq!((u.tls, u.port), (Tls::Wrapper, 465));
        assert_eq!(u.user.as_deref(), Some("a@b"));
        assert_eq!(u.password.as_deref(), Some("p:s"));
        assert!(SmtpUrl::parse("http://x", None).is_err());
        let e = SmtpUrl::parse("smtp://u:secret@h?x=1", None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        // A password given as an option is not shown.
        let e = SmtpUrl::parse("smtp://mailer@h:587?password=s3cret", None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret") && e.contains("unknown option"), "{e}");
        // A password holding a '?' or a '/' is the password, not an option.
        let u = SmtpUrl::parse("smtp://mailer:8412?T/q@h:2525?tls=none", None).unwrap();
        assert_eq!(u.password.as_deref(), Some("8412?T/q"));
        assert_eq!((u.host.as_str(), u.port, u.tls), ("h", 2525, Tls::None));
        let e = SmtpUrl::parse("smtp://mailer:8412?Tq@h:x", None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("8412") && !e.contains("Tq"), "{e}");
    }
}

//! The IMAP mailbox that `bulletin bounces imap` reads: the `imaps://` /
//! `imap://` URL, connecting (implicit TLS; STARTTLS; plain only to a
//! loopback address that offers no STARTTLS; an extra CA when configured), listing the unseen messages not looked at before,
//! fetching one without marking it, then filing it (seen, moved to the
//! processed folder) or marking it checked where it is, and waiting for new
//! mail (IDLE where offered). Nothing here deletes a message or knows what a
//! bounce is: the caller decides what each message is.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::redact::{self, Password};

/// The keyword set on a message that was read and is not ours to file (a
/// reply from a person, say): it stays in the inbox, unseen, and is not read
/// again.
pub const CHECKED: &str = "$BulletinChecked";

/// Errors while reaching or using the mailbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bounces.imap.url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("{server}: {source}")]
    Io {
        server: String,
        source: std::io::Error,
    },
    #[error("{server}: login as {user} refused: {message} (password from BULLETIN_IMAP_PASSWORD)")]
    Login {
        server: String,
        user: String,
        message: String,
    },
    #[error(
        "{server}: the server offers no STARTTLS; use imaps:// (the password is never sent in clear but to a loopback address)"
    )]
    NoTls { server: String },
    #[error("{server}: {context}: {source}")]
    Imap {
        server: String,
        context: String,
        source: async_imap::error::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Worth trying again later: the network or the server, not the settings.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::Imap { .. })
    }

    /// Will fail the same way until someone changes the settings.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `imaps://`: TLS from the first byte (port 993 by default).
    Tls,
    /// `imap://` to a host that is not loopback: STARTTLS, required.
    StartTls,
    /// `imap://` to 127.0.0.1, ::1 or localhost: STARTTLS when the server
    /// offers it, else plain.
    Plain,
}

/// A parsed `bounces.imap.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapUrl {
    pub security: Security,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub mailbox: String,
}

impl ImapUrl {
    /// Parses `imaps://user@host:993/INBOX`; the user may be percent-encoded
    /// (`bounces%40example.org`), the mailbox defaults to INBOX.
    pub fn parse(url: &str) -> Result<ImapUrl> {
        let bad = |message: &str| Error::Url {
            url: redact::url(url, Password::Masked),
            message: message.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected imaps://user@host:993/INBOX"))?;
        let tls = match scheme {
            "imaps" => true,
            "imap" => false,
            _ => return Err(bad("the scheme must be imaps:// or imap://")),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| bad("no user: write imaps://USER@host/INBOX"))?;
        if user.contains(':') {
            return Err(bad(
                "carries a password; put it in BULLETIN_IMAP_PASSWORD instead",
            ));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            _ => (hostport, if tls { 993 } else { 143 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || user.is_empty() {
            return Err(bad("expected imaps://user@host:993/INBOX"));
        }
        let security = match (tls, is_loopback(host)) {
            (true, _) => Security::Tls,
            (false, true) => Security::Plain,
            (false, false) => Security::StartTls,
        };
        let mailbox = percent_decode(path.trim_end_matches('/'));
        Ok(ImapUrl {
            security,
            host: host.to_string(),
            port,
            user: percent_decode(user),
            mailbox: if mailbox.is_empty() {
                "INBOX".into()
            } else {
                mailbox
            },
        })
    }

    /// `host:port`, the name errors carry.
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Anything the session can run over: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug> Io for T {}

type Session = async_imap::Session<Box<dyn Io>>;

/// A logged-in session with the bounce mailbox selected.
pub struct Mailbox {
    /// `None` only after a failed IDLE: the connection is gone then.
    session: Option<Session>,
    url: ImapUrl,
    processed: String,
    can_move: bool,
    can_idle: bool,
}

impl Mailbox {
    /// Connects, logs in, selects the mailbox and creates the processed
    /// folder when it is missing.
    pub async fn open(
        url: &ImapUrl,
        password: &str,
        processed: &str,
        roots: &Roots,
        timeout: Duration,
    ) -> Result<Mailbox> {
        let server = url.server();
        let stream = tokio::time::timeout(timeout, connect(url, roots))
            .await
            .map_err(|_| Error::Io {
                server: server.clone(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
            })??;
        let client = async_imap::Client::new(stream);
        let mut session = client
            .login(&url.user, password)
            .await
            .map_err(|(e, _)| match e {
                async_imap::error::Error::No(message) | async_imap::error::Error::Bad(message) => {
                    Error::Login {
                        server: server.clone(),
                        user: url.user.clone(),
                        message,
                    }
                }
                other => imap_error(&server, "login", other),
            })?;
        let ctx = |what: &str| {
            let server = server.clone();
            let what = what.to_string();
            move |e| imap_error(&server, &what, e)
        };
        let caps = session.capabilities().await.map_err(ctx("CAPABILITY"))?;
        let (can_move, can_idle) = (caps.has_str("MOVE"), caps.has_str("IDLE"));
        let exists = {
            let list = session
                .list(None, Some(processed))
                .await
                .map_err(ctx("LIST"))?;
            let names: Vec<_> = list.try_collect().await.map_err(ctx("LIST"))?;
            !names.is_empty()
        };
        if !exists {
            session
                .create(processed)
                .await
                .map_err(ctx(&format!("creating folder {processed}")))?;
        }
        session
            .select(&url.mailbox)
            .await
            .map_err(ctx(&format!("selecting {}", url.mailbox)))?;
        Ok(Mailbox {
            session: Some(session),
            url: url.clone(),
            processed: processed.to_string(),
            can_move,
            can_idle,
        })
    }

    /// UIDs of the unseen messages not checked before, oldest first.
    pub async fn unread(&mut self) -> Result<Vec<u32>> {
        let query = format!("UNSEEN UNKEYWORD {CHECKED}");
        let session = self.session()?;
        // Nobody reads EXISTS/EXPUNGE notices; keep the channel from filling.
        while session.unsolicited_responses.try_recv().is_ok() {}
        let uids = session
            .uid_search(&query)
            .await
            .map_err(|e| imap_error(&self.url.server(), "UID SEARCH", e))?;
        let mut uids: Vec<u32> = uids.into_iter().collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// The whole message, fetched without setting \Seen; `None` when it is
    /// gone (moved or expunged by someone else meanwhile).
    pub async fn fetch(&mut self, uid: u32) -> Result<Option<Vec<u8>>> {
        let server = self.url.server();
        let fetches = self
            .session()?
            .uid_fetch(uid.to_string(), "BODY.PEEK[]")
            .await
            .map_err(|e| imap_error(&server, "UID FETCH", e))?;
        let fetches: Vec<_> = fetches
            .try_collect()
            .await
            .map_err(|e| imap_error(&server, "UID FETCH", e))?;
        Ok(fetches
            .iter()
            .find(|f| f.uid == Some(uid))
            .and_then(|f| f.body())
            .map(<[u8]>::to_vec))
    }

    /// Marks the message seen and moves it to the processed folder (with
    /// MOVE; a server without it gets a copy there and the original marked
    /// checked, so it is not read again and nothing is deleted).
    pub async fn file(&mut self, uid: u32) -> Result<()> {
        self.add_flags(uid, "\\Seen").await?;
        let server = self.url.server();
        let processed = self.processed.clone();
        if self.can_move {
            self.session()?
                .uid_mv(uid.to_string(), &processed)
                .await
                .map_err(|e| imap_error(&server, "UID MOVE", e))?;
        } else {
            self.session()?
                .uid_copy(uid.to_string(), &processed)
                .await
                .map_err(|e| imap_error(&server, "UID COPY", e))?;
            self.add_flags(uid, CHECKED).await?;
        }
        Ok(())
    }

    /// Leaves the message where it is, unseen, marked so it is not read again.
    pub async fn keep(&mut self, uid: u32) -> Result<()> {
        self.add_flags(uid, CHECKED).await
    }

    async fn add_flags(&mut self, uid: u32, flags: &str) -> Result<()> {
        let server = self.url.server();
        let updates = self
            .session()?
            .uid_store(uid.to_string(), format!("+FLAGS.SILENT ({flags})"))
            .await
            .map_err(|e| imap_error(&server, "UID STORE", e))?;
        let _: Vec<_> = updates
            .try_collect()
            .await
            .map_err(|e| imap_error(&server, "UID STORE", e))?;
        Ok(())
    }

    /// Waits up to `most` for the mailbox to change (IDLE), or sleeps that
    /// long on a server without IDLE; returns early when `stop` resolves.
    pub async fn wait(&mut self, most: Duration, stop: impl Future<Output = ()>) -> Result<()> {
        let server = self.url.server();
        let mut session = self.session.take().ok_or_else(|| lost(&server))?;
        if self.can_idle {
            let mut idle = session.idle();
            idle.init()
                .await
                .map_err(|e| imap_error(&server, "IDLE", e))?;
            {
                let (changed, interrupt) = idle.wait_with_timeout(most);
                tokio::select! {
                    result = changed => { result.map_err(|e| imap_error(&server, "IDLE", e))?; }
                    () = stop => drop(interrupt),
                }
            }
            session = idle
                .done()
                .await
                .map_err(|e| imap_error(&server, "IDLE DONE", e))?;
        } else {
            tokio::select! {
                () = tokio::time::sleep(most) => {}
                () = stop => {}
            }
            session
                .noop()
                .await
                .map_err(|e| imap_error(&server, "NOOP", e))?;
        }
        self.session = Some(session);
        Ok(())
    }

    fn session(&mut self) -> Result<&mut Session> {
        let server = self.url.server();
        self.session.as_mut().ok_or_else(|| lost(&server))
    }

    /// Logs out; errors are of no interest any more.
    pub async fn close(mut self) {
        if let Some(session) = self.session.as_mut() {
            let _ = session.logout().await;
        }
    }
}

fn lost(server: &str) -> Error {
    Error::Io {
        server: server.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotConnected, "connection lost"),
    }
}

fn imap_error(server: &str, context: &str, source: async_imap::error::Error) -> Error {
    Error::Imap {
        server: server.to_string(),
        context: context.to_string(),
        source,
    }
}

/// TCP, then TLS as the URL says, with the server's greeting read.
async fn connect(url: &ImapUrl, roots: &Roots) -> Result<Box<dyn Io>> {
    let server = url.server();
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|source| Error::Io {
            server: server.clone(),
            source,
        })?;
    if url.security == Security::Tls {
        let mut client = async_imap::Client::new(tls(url, tcp, roots).await?);
        greeting(&mut client, &server).await?;
        return Ok(Box::new(client.into_inner()));
    }
    let mut client = async_imap::Client::new(tcp);
    greeting(&mut client, &server).await?;
    // The greeting was read before STARTTLS; none comes after it.
    match client.run_command_and_check_ok("STARTTLS", None).await {
        Ok(()) => Ok(Box::new(tls(url, client.into_inner(), roots).await?)),
        Err(_) if url.security == Security::Plain => Ok(Box::new(client.into_inner())),
        Err(_) => Err(Error::NoTls { server }),
    }
}

/// Certificate authorities trusted besides the usual public ones (a
/// self-hosted server's own CA, from `[bounces.imap] ca_file`).
pub type Roots = Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>;

/// The certificates in a PEM file.
pub fn pem_certificates(pem: &[u8]) -> Roots {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(pem);
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|rest| rest.split("-----END CERTIFICATE-----").next())
        .filter_map(|b64| {
            let b64: String = b64.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD.decode(b64).ok()
        })
        .map(tokio_rustls::rustls::pki_types::CertificateDer::from)
        .collect()
}

async fn greeting<T: Io>(client: &mut async_imap::Client<T>, server: &str) -> Result<()> {
    match client.read_response().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::Io {
            server: server.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before its greeting",
            ),
        }),
        Err(source) => Err(Error::Io {
            server: server.to_string(),
            source,
        }),
    }
}

async fn tls(
    url: &ImapUrl,
    tcp: TcpStream,
    extra: &Roots,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| Error::Io {
            server: url.server(),
            source: std::io::Error::other(format!("bounces.imap.ca_file: {e}")),
        })?;
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Io {
        server: url.server(),
        source: std::io::Error::other(e),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        tokio_rustls::rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|_| {
            Error::Url {
                url: url.server(),
                message: "not a valid host name for TLS".into(),
            }
        })?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| Error::Io {
            server: url.server(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ImapUrl::parse("imaps://bounces%40example.org@mail.example.org/INBOX").unwrap();
        assert_eq!(u.security, Security::Tls);
        assert_eq!(u.user, "bounces@example.org");
        assert_eq!((u.host.as_str(), u.port), ("mail.example.org", 993));
        assert_eq!(u.mailbox, "INBOX");
        let u = ImapUrl::parse("imap://bob@mail.example.org:1143").unwrap();
        assert_eq!((u.security, u.port), (Security::StartTls, 1143));
        assert_eq!(u.mailbox, "INBOX");
        let u = ImapUrl::parse("imap://bob@127.0.0.1:14143/Bounces").unwrap();
        assert_eq!(
            (u.security, u.mailbox.as_str()),
            (Security::Plain, "Bounces")
        );
        for bad in [
            "pop3://bob@host",
            "imaps://host/INBOX",
            "imaps://bob:pw@host/INBOX",
            "imaps://bob@host:x/INBOX",
        ] {
            let err = ImapUrl::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("bounces.imap.url"), "{err}");
        }
    }
}

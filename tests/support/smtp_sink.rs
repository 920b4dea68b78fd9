//! An in-process SMTP server on loopback that records what it accepts and
//! misbehaves on cue, for the dispatcher's tests and benchmarks.
//!
//! The file is self-contained so that examples and benches can include it
//! without it shipping in the `bulletin` binary:
//!
//! ```ignore
//! #[path = "../tests/support/smtp_sink.rs"]
//! mod smtp_sink;
//! ```
//!
//! It depends on tokio (net, io-util, sync, time, rt) and base64 only.
//!
//! The server speaks enough ESMTP for lettre and Postfix's `smtp-source`:
//! EHLO/HELO, MAIL (with parameters), RCPT, DATA, RSET, NOOP, QUIT and, when
//! credentials are configured, AUTH PLAIN/LOGIN. Commands are read line by
//! line from a buffered reader and replies are flushed only once the client
//! has nothing more buffered, so pipelined command groups are handled the way
//! a real server handles them.
//!
//! Misbehaviour is scripted with [`Behaviour`]: rules keyed by a substring of
//! the recipient address (the empty pattern matches every address). A message
//! is recorded only when its DATA is answered with 250, and it is recorded
//! *before* that reply is written, so a client that saw 250 will find the
//! message in [`SmtpSink::messages`].
//!
//! ```ignore
//! let sink = SmtpSink::start(
//!     Behaviour::new()
//!         .rcpt_reply("reject", "550 5.1.1 user unknown")
//!         .defer_first("flaky", 2),
//! );
//! // ... send to 127.0.0.1:sink.port() ...
//! assert_eq!(sink.wait_for(3, Duration::from_secs(5)).await, 3);
//! sink.shutdown().await;
//! ```

#![allow(dead_code)] // each user of this file needs a different part of it

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The largest message the sink accepts, advertised with SIZE.
pub const MAX_SIZE: usize = 32 * 1024 * 1024;

/// One accepted mail transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The reverse path without angle brackets (`""` for the null sender).
    pub mail_from: String,
    /// The accepted recipients, without angle brackets, in RCPT order.
    pub rcpt_to: Vec<String>,
    /// The message as sent after DATA: dot-unstuffed, CRLF line ends kept,
    /// without the terminating `.\r\n`.
    pub data: Vec<u8>,
    /// Which connection carried it: 1 for the first accepted by the sink.
    pub connection: usize,
    /// When the sink accepted it (after the message text), for rates.
    pub at: std::time::Instant,
}

/// What the sink does differently from "accept everything".
///
/// Patterns are substrings of the recipient address; `""` matches every
/// address. For each kind of rule the first matching rule wins. A reply whose
/// code is 421 closes the connection after it is sent, as RFC 5321 says.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    rcpt_replies: Vec<(String, String)>,
    defer_first: Vec<(String, usize)>,
    data_replies: Vec<(String, String)>,
    drop_after_data: Vec<String>,
    data_delays: Vec<(String, Duration)>,
    refuse_connections: usize,
    credentials: Option<(String, String)>,
    discard_data: bool,
}

impl Behaviour {
    /// Accept every command, every recipient and every message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer RCPT for addresses containing `pattern` with `reply`, e.g.
    /// `"550 5.1.1 user unknown"` or `"451 4.3.0 try again later"`.
    pub fn rcpt_reply(mut self, pattern: &str, reply: &str) -> Self {
        self.rcpt_replies.push((pattern.into(), reply.into()));
        self
    }

    /// Answer the first `attempts` RCPTs for each address containing
    /// `pattern` with `451 4.3.0 try again later`, counted per address across
    /// all connections, then accept it. See [`SmtpSink::rcpt_attempts`].
    pub fn defer_first(mut self, pattern: &str, attempts: usize) -> Self {
        self.defer_first.push((pattern.into(), attempts));
        self
    }

    /// Answer the end of DATA with `reply` (instead of 250) when an accepted
    /// recipient contains `pattern`, e.g. `"552 5.2.2 mailbox full"`, or
    /// `"421 4.3.2 shutting down"` to also close the connection.
    pub fn data_reply(mut self, pattern: &str, reply: &str) -> Self {
        self.data_replies.push((pattern.into(), reply.into()));
        self
    }

    /// Read the whole message, then close the connection without any reply
    /// when an accepted recipient contains `pattern`: a server crash in the
    /// middle of a transaction. The message is not recorded.
    pub fn drop_after_data(mut self, pattern: &str) -> Self {
        self.drop_after_data.push(pattern.into());
        self
    }

    /// Wait `delay` between reading a message and answering its DATA when an
    /// accepted recipient contains `pattern`. While it waits the message
    /// counts in [`SmtpSink::in_flight`].
    pub fn delay_data_reply(mut self, pattern: &str, delay: Duration) -> Self {
        self.data_delays.push((pattern.into(), delay));
        self
    }

    /// Greet the first `n` connections with `421 4.3.2 service not available`
    /// and close them: a server that is down or throttling.
    pub fn refuse_first_connections(mut self, n: usize) -> Self {
        self.refuse_connections = n;
        self
    }

    /// Advertise AUTH PLAIN LOGIN, accept only these credentials (235, else
    /// 535) and refuse MAIL before a successful AUTH (530).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Record envelopes only, with empty `data`: for benchmarks that send
    /// more than they want to keep in memory.
    pub fn discard_data(mut self) -> Self {
        self.discard_data = true;
        self
    }

    fn rcpt_reply_for(&self, addr: &str) -> Option<&str> {
        first_match(&self.rcpt_replies, std::slice::from_ref(&addr.to_string())).map(String::as_str)
    }

    fn defer_for(&self, addr: &str) -> Option<usize> {
        self.defer_first
            .iter()
            .find(|(p, _)| addr.contains(p.as_str()))
            .map(|(_, n)| *n)
    }
}

fn first_match<'a, T>(rules: &'a [(String, T)], rcpts: &[String]) -> Option<&'a T> {
    rules
        .iter()
        .find(|(p, _)| rcpts.iter().any(|r| r.contains(p.as_str())))
        .map(|(_, v)| v)
}

/// A running sink. Dropping it stops the server and closes every connection.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    behaviour: Behaviour,
    messages: Mutex<Vec<Received>>,
    accepted: watch::Sender<usize>,
    in_flight: watch::Sender<usize>,
    connections: AtomicUsize,
    rcpt_attempts: Mutex<HashMap<String, usize>>,
}

impl SmtpSink {
    /// Binds `127.0.0.1:0` and serves in the background.
    ///
    /// # Panics
    /// Outside a tokio runtime, or when the bind fails.
    pub fn start(behaviour: Behaviour) -> SmtpSink {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour)
    }

    /// Like [`SmtpSink::start`] on a given address, e.g. a fixed port for a
    /// benchmark run by hand.
    pub fn start_on(addr: SocketAddr, behaviour: Behaviour) -> SmtpSink {
        let std_listener =
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        std_listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = std_listener.local_addr().expect("local_addr");
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        let shared = Arc::new(Shared {
            behaviour,
            messages: Mutex::new(Vec::new()),
            accepted: watch::Sender::new(0),
            in_flight: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            rcpt_attempts: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, shared.clone(), stopped));
        SmtpSink {
            addr,
            shared,
            stop,
            task: Some(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The messages accepted so far, in the order their DATA was accepted.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages were accepted or `timeout` passed,
    /// and returns how many were accepted.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        wait_until(&self.shared.accepted, n, timeout).await
    }

    /// Messages read in full whose DATA reply is not sent yet (see
    /// [`Behaviour::delay_data_reply`]).
    pub fn in_flight(&self) -> usize {
        *self.shared.in_flight.borrow()
    }

    /// Waits until at least `n` messages are in flight or `timeout` passed,
    /// and returns how many are.
    pub async fn wait_for_in_flight(&self, n: usize, timeout: Duration) -> usize {
        wait_until(&self.shared.in_flight, n, timeout).await
    }

    /// TCP connections accepted so far, refused ones included.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many RCPT commands named exactly `addr`, whatever the reply.
    pub fn rcpt_attempts(&self, addr: &str) -> usize {
        let attempts = self.shared.rcpt_attempts.lock().unwrap();
        attempts.get(addr).copied().unwrap_or(0)
    }

    /// Stops accepting, closes every connection and waits for the server.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn wait_until(counter: &watch::Sender<usize>, n: usize, timeout: Duration) -> usize {
    let mut rx = counter.subscribe();
    let _ = tokio::time::timeout(timeout, rx.wait_for(|&v| v >= n)).await;
    *counter.borrow()
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    // Dropping the set (when this task ends or is aborted) aborts every
    // connection task with it.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|&s| s) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                conns.spawn(session(stream, shared.clone(), id));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Why a session ended early.
enum End {
    /// Client went away or the connection broke.
    Io,
    /// The sink closes the connection on purpose.
    Close,
}

impl From<std::io::Error> for End {
    fn from(_: std::io::Error) -> Self {
        End::Io
    }
}

struct Session {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    shared: Arc<Shared>,
    id: usize,
    greeted: bool,
    authenticated: bool,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

async fn session(stream: TcpStream, shared: Arc<Shared>, id: usize) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut s = Session {
        reader: BufReader::with_capacity(64 * 1024, r),
        writer: BufWriter::with_capacity(64 * 1024, w),
        authenticated: shared.behaviour.credentials.is_none(),
        shared,
        id,
        greeted: false,
        mail_from: None,
        rcpt_to: Vec::new(),
    };
    let _ = s.run().await;
    let _ = s.writer.shutdown().await;
}

impl Session {
    async fn run(&mut self) -> Result<(), End> {
        if self.id <= self.shared.behaviour.refuse_connections {
            self.reply("421 4.3.2 service not available").await?;
            return Err(End::Close);
        }
        self.reply("220 sink.test ESMTP bulletin test sink").await?;
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.reader.read_until(b'\n', &mut line).await? == 0 {
                return Err(End::Io);
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let (verb, arg) = match text.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
                None => (text.to_ascii_uppercase(), ""),
            };
            let arg = arg.to_string();
            match verb.as_str() {
                "EHLO" => self.ehlo().await?,
                "HELO" => {
                    self.reset();
                    self.greeted = true;
                    self.reply("250 sink.test").await?;
                }
                "MAIL" => self.mail(&arg).await?,
                "RCPT" => self.rcpt(&arg).await?,
                "DATA" => self.data().await?,
                "AUTH" if self.shared.behaviour.credentials.is_some() => self.auth(&arg).await?,
                "RSET" => {
                    self.reset();
                    self.reply("250 2.0.0 ok").await?;
                }
                "NOOP" => self.reply("250 2.0.0 ok").await?,
                "QUIT" => {
                    self.reply("221 2.0.0 bye").await?;
                    return Err(End::Close);
                }
                _ => self.reply("502 5.5.2 command not recognized").await?,
            }
        }
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }

    /// Queues `reply` and flushes unless more pipelined commands are already
    /// buffered; closes the session after a 421.
    async fn reply(&mut self, reply: &str) -> Result<(), End> {
        self.writer.write_all(reply.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await?;
        if self.reader.buffer().is_empty() || reply.starts_with("421") {
            self.writer.flush().await?;
        }
        if reply.starts_with("421") {
            return Err(End::Close);
        }
        Ok(())
    }

    async fn ehlo(&mut self) -> Result<(), End> {
        self.reset();
        self.greeted = true;
        let mut lines = vec![
            "sink.test".to_string(),
            "PIPELINING".into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            format!("SIZE {MAX_SIZE}"),
        ];
        if self.shared.behaviour.credentials.is_some() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        let mut text = String::new();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            text.push_str(&format!("250{sep}{l}"));
            if i != last {
                text.push_str("\r\n");
            }
        }
        self.reply(&text).await
    }

    async fn mail(&mut self, arg: &str) -> Result<(), End> {
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.reply("501 5.5.4 syntax: MAIL FROM:<address>").await;
        };
        if !self.greeted {
            return self.reply("503 5.5.1 EHLO or HELO first").await;
        }
        if !self.authenticated {
            return self.reply("530 5.7.0 authentication required").await;
        }
        if self.mail_from.is_some() {
            return self.reply("503 5.5.1 nested MAIL command").await;
        }
        let Some((addr, params)) = parse_path(rest) else {
            return self.reply("501 5.1.7 bad sender address syntax").await;
        };
        let size = params
            .split_whitespace()
            .find_map(|p| strip_prefix_ci(p, "SIZE=").and_then(|n| n.parse::<usize>().ok()));
        if size.is_some_and(|n| n > MAX_SIZE) {
            return self
                .reply("552 5.3.4 message size exceeds fixed limit")
                .await;
        }
        self.mail_from = Some(addr);
        self.reply("250 2.1.0 ok").await
    }

    async fn rcpt(&mut self, arg: &str) -> Result<(), End> {
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            return self.reply("501 5.5.4 syntax: RCPT TO:<address>").await;
        };
        if self.mail_from.is_none() {
            return self.reply("503 5.5.1 need MAIL before RCPT").await;
        }
        let Some((addr, _params)) = parse_path(rest) else {
            return self.reply("501 5.1.3 bad recipient address syntax").await;
        };
        let attempt = {
            let mut attempts = self.shared.rcpt_attempts.lock().unwrap();
            let n = attempts.entry(addr.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let behaviour = &self.shared.behaviour;
        if let Some(reply) = behaviour.rcpt_reply_for(&addr) {
            let reply = reply.to_string();
            return self.reply(&reply).await;
        }
        if behaviour.defer_for(&addr).is_some_and(|k| attempt <= k) {
            return self.reply("451 4.3.0 try again later").await;
        }
        self.rcpt_to.push(addr);
        self.reply("250 2.1.5 ok").await
    }

    async fn data(&mut self) -> Result<(), End> {
        if self.mail_from.is_none() {
            return self.reply("503 5.5.1 need MAIL before DATA").await;
        }
        if self.rcpt_to.is_empty() {
            return self.reply("554 5.5.1 no valid recipients").await;
        }
        self.reply("354 end data with <CR><LF>.<CR><LF>").await?;
        let mut data = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.reader.read_until(b'\n', &mut line).await? == 0 {
                return Err(End::Io);
            }
            if line == b".\r\n" {
                break;
            }
            if self.shared.behaviour.discard_data {
                continue;
            }
            // Dot-unstuffing (RFC 5321 4.5.2).
            let start = usize::from(line.first() == Some(&b'.'));
            data.extend_from_slice(&line[start..]);
        }
        let mail_from = self.mail_from.take().unwrap_or_default();
        let rcpt_to = std::mem::take(&mut self.rcpt_to);
        let behaviour = &self.shared.behaviour;
        if behaviour
            .drop_after_data
            .iter()
            .any(|p| rcpt_to.iter().any(|r| r.contains(p.as_str())))
        {
            return Err(End::Close);
        }
        let delay = first_match(&behaviour.data_delays, &rcpt_to).copied();
        let reply = first_match(&behaviour.data_replies, &rcpt_to).cloned();
        if let Some(delay) = delay {
            self.writer.flush().await?;
            self.shared.in_flight.send_modify(|n| *n += 1);
            tokio::time::sleep(delay).await;
            self.shared.in_flight.send_modify(|n| *n -= 1);
        }
        match reply {
            Some(reply) if !reply.starts_with('2') => self.reply(&reply).await,
            custom => {
                self.shared.messages.lock().unwrap().push(Received {
                    mail_from,
                    rcpt_to,
                    data,
                    connection: self.id,
                    at: std::time::Instant::now(),
                });
                self.shared.accepted.send_modify(|n| *n += 1);
                self.reply(custom.as_deref().unwrap_or("250 2.0.0 ok: queued"))
                    .await
            }
        }
    }

    async fn auth(&mut self, arg: &str) -> Result<(), End> {
        if self.authenticated {
            return self.reply("503 5.5.1 already authenticated").await;
        }
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_string())),
            None => (arg.to_ascii_uppercase(), None),
        };
        let (user, password) = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(r) => r,
                    None => self.challenge("").await?,
                };
                // authzid NUL authcid NUL password
                let decoded = decode(&response).unwrap_or_default();
                let mut parts = decoded.split(|&b| b == 0).skip(1);
                let user = parts.next().unwrap_or_default().to_vec();
                let password = parts.next().unwrap_or_default().to_vec();
                (user, password)
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => r,
                    None => self.challenge("VXNlcm5hbWU6").await?,
                };
                let password = self.challenge("UGFzc3dvcmQ6").await?;
                (
                    decode(&user).unwrap_or_default(),
                    decode(&password).unwrap_or_default(),
                )
            }
            _ => {
                return self
                    .reply("504 5.5.4 unrecognized authentication type")
                    .await;
            }
        };
        let (want_user, want_password) = self.shared.behaviour.credentials.clone().unwrap();
        if user == want_user.as_bytes() && password == want_password.as_bytes() {
            self.authenticated = true;
            self.reply("235 2.7.0 authentication successful").await
        } else {
            self.reply("535 5.7.8 authentication credentials invalid")
                .await
        }
    }

    /// Sends a 334 challenge and reads the client's one-line answer.
    async fn challenge(&mut self, text: &str) -> Result<String, End> {
        self.writer
            .write_all(format!("334 {text}\r\n").as_bytes())
            .await?;
        self.writer.flush().await?;
        let mut line = Vec::new();
        if self.reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(End::Io);
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }
}

fn decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// `<addr> PARAMS` (tolerating a space before `<`) -> `(addr, PARAMS)`.
fn parse_path(text: &str) -> Option<(String, &str)> {
    let text = text.trim_start();
    let rest = text.strip_prefix('<')?;
    let (addr, params) = rest.split_once('>')?;
    Some((addr.to_string(), params.trim()))
}

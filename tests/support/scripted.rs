//! A scripted SMTP server on loopback for the fault tests: what it answers
//! at each phase (greeting, MAIL, RCPT, DATA, the final dot) is set by a
//! [`Script`], including never answering, answering late, and closing
//! without an answer. It records every message it read through the final
//! dot, whatever it answered, so a test can check that nobody received a
//! message twice.
//!
//! ```ignore
//! let server = Scripted::start(Script::new().dot(Dot::Never));
//! // ... send to 127.0.0.1:server.port() ...
//! assert_eq!(server.received_by("ann@example.net"), 1);
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the server does after reading a message through its final dot.
#[derive(Clone, Debug)]
pub enum Dot {
    /// Answer at once, e.g. `"250 2.0.0 queued"` or `"552 5.3.4 too big"`.
    Reply(String),
    /// Never answer; keep the connection open (a hung server).
    Never,
    /// Answer after a delay, then close the connection.
    Late(Duration, String),
    /// Close the connection without an answer.
    Close,
}

/// A reply that never comes: the server hangs at that phase.
pub const SILENT: &str = "";

/// No reply: the server closes the connection at that phase.
pub const CLOSE: &str = "<close>";

/// The answers per phase. Defaults accept everything; [`SILENT`] at any
/// phase hangs there.
#[derive(Clone, Debug)]
pub struct Script {
    greeting: String,
    mail: String,
    /// (substring of the address, reply); the first match wins, else 250.
    rcpt: Vec<(String, String)>,
    data: String,
    dot: Dot,
    quit: String,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 scripted.test ESMTP".into(),
            mail: "250 2.1.0 ok".into(),
            rcpt: Vec::new(),
            data: "354 go ahead".into(),
            dot: Dot::Reply("250 2.0.0 queued".into()),
            quit: "221 2.0.0 bye".into(),
        }
    }
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }
    /// The greeting; one that does not start with 220 closes the connection.
    pub fn greeting(mut self, reply: &str) -> Self {
        self.greeting = reply.into();
        self
    }
    pub fn mail(mut self, reply: &str) -> Self {
        self.mail = reply.into();
        self
    }
    /// Answers RCPT for addresses containing `pattern` (`""`: all).
    pub fn rcpt(mut self, pattern: &str, reply: &str) -> Self {
        self.rcpt.push((pattern.into(), reply.into()));
        self
    }
    pub fn data(mut self, reply: &str) -> Self {
        self.data = reply.into();
        self
    }
    pub fn dot(mut self, dot: Dot) -> Self {
        self.dot = dot;
        self
    }
    /// The answer to QUIT, after which the connection closes.
    pub fn quit(mut self, reply: &str) -> Self {
        self.quit = reply.into();
        self
    }
}

#[derive(Default)]
struct Log {
    /// The recipients of each message read through the final dot.
    received: Vec<Vec<String>>,
    connections: usize,
}

/// A running server; dropping it closes every connection.
pub struct Scripted {
    port: u16,
    log: Arc<Mutex<Log>>,
    received: watch::Sender<usize>,
    task: JoinHandle<()>,
}

impl Scripted {
    /// Binds `127.0.0.1:0` and serves in the background (inside a runtime).
    pub fn start(script: Script) -> Scripted {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let log = Arc::new(Mutex::new(Log::default()));
        let received = watch::Sender::new(0);
        let task = tokio::spawn(serve(
            listener,
            Arc::new(script),
            log.clone(),
            received.clone(),
        ));
        Scripted {
            port,
            log,
            received,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every recipient of every message read through its dot, in order.
    pub fn received(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.received.iter().flatten().cloned().collect()
    }

    /// How many messages `addr` was a recipient of.
    pub fn received_by(&self, addr: &str) -> usize {
        self.received().iter().filter(|r| *r == addr).count()
    }

    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }

    /// Waits until `n` messages were read or `timeout` passed; returns how
    /// many were.
    pub async fn wait_received(&self, n: usize, timeout: Duration) -> usize {
        let mut rx = self.received.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|&v| v >= n)).await;
        *self.received.borrow()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    script: Arc<Script>,
    log: Arc<Mutex<Log>>,
    received: watch::Sender<usize>,
) {
    // Dropped with this task: aborts every session, hung ones included.
    let mut sessions = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        log.lock().unwrap().connections += 1;
        let session = Session {
            script: script.clone(),
            log: log.clone(),
            received: received.clone(),
        };
        sessions.spawn(async move {
            let _ = session.run(stream).await;
        });
    }
}

struct Session {
    script: Arc<Script>,
    log: Arc<Mutex<Log>>,
    received: watch::Sender<usize>,
}

impl Session {
    async fn run(&self, stream: TcpStream) -> std::io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut reader = BufReader::new(r);
        let script = &self.script;
        send(&mut w, &script.greeting).await?;
        if !script.greeting.starts_with("220") {
            return Ok(());
        }
        let (mut mail, mut rcpts) = (false, Vec::<String>::new());
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let command = line.trim_end().to_string();
            let verb = command.split(' ').next().unwrap_or("").to_ascii_uppercase();
            let reply = match verb.as_str() {
                "EHLO" => "250-scripted.test\r\n250-PIPELINING\r\n250 8BITMIME".to_string(),
                "HELO" | "NOOP" => "250 ok".into(),
                "RSET" => {
                    (mail, rcpts) = (false, Vec::new());
                    "250 ok".into()
                }
                "QUIT" => {
                    send(&mut w, &script.quit).await?;
                    return Ok(());
                }
                "MAIL" => {
                    mail = script.mail.starts_with('2');
                    script.mail.clone()
                }
                "RCPT" if !mail => "503 5.5.1 need MAIL first".into(),
                "RCPT" => {
                    let addr = path(&command);
                    let reply = script
                        .rcpt
                        .iter()
                        .find(|(p, _)| addr.contains(p.as_str()))
                        .map_or("250 2.1.5 ok".to_string(), |(_, r)| r.clone());
                    if reply.starts_with('2') {
                        rcpts.push(addr);
                    }
                    reply
                }
                "DATA" if !mail || rcpts.is_empty() => "554 5.5.1 no valid recipients".into(),
                "DATA" if !script.data.starts_with("354") => script.data.clone(),
                "DATA" => {
                    send(&mut w, &script.data).await?;
                    read_message(&mut reader).await?;
                    self.record(std::mem::take(&mut rcpts));
                    mail = false;
                    match &script.dot {
                        Dot::Reply(reply) => reply.clone(),
                        Dot::Never => std::future::pending().await,
                        Dot::Late(delay, reply) => {
                            tokio::time::sleep(*delay).await;
                            let _ = send(&mut w, reply).await;
                            return Ok(());
                        }
                        Dot::Close => return Ok(()),
                    }
                }
                _ => "502 5.5.2 command not recognized".into(),
            };
            send(&mut w, &reply).await?;
        }
    }

    fn record(&self, rcpts: Vec<String>) {
        self.log.lock().unwrap().received.push(rcpts);
        self.received.send_modify(|n| *n += 1);
    }
}

async fn send(w: &mut tokio::net::tcp::OwnedWriteHalf, reply: &str) -> std::io::Result<()> {
    if reply == SILENT {
        std::future::pending::<()>().await;
    }
    if reply == CLOSE {
        w.shutdown().await?;
        return Err(std::io::ErrorKind::ConnectionAborted.into());
    }
    w.write_all(format!("{reply}\r\n").as_bytes()).await?;
    w.flush().await
}

/// Reads the message up to and including the final `.` line.
async fn read_message(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            return Ok(());
        }
    }
}

/// The address in `RCPT TO:<addr> ...`.
fn path(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map_or(String::new(), |(addr, _)| addr.to_string())
}

//! Independent SMTP servers started as child processes on a free loopback
//! port: Postfix's `smtp-sink` and Python's `aiosmtpd`. Each dumps what it
//! accepts into a temporary directory that [`Server::messages`] reads back.
//!
//! Gating: when `BULLETIN_INTEROP=1` a missing server is a test failure;
//! otherwise the starters print a notice and return `None`, and the test
//! returns early.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `postfix` package puts the sink.
pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
/// Debian's Python, which has `python3-aiosmtpd` (a `python3` earlier on PATH
/// may be another interpreter without Debian's packages).
pub const PYTHON: &str = "/usr/bin/python3";

/// How long a server may take to accept connections.
const STARTUP: Duration = Duration::from_secs(15);

/// One message as a server dumped it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dumped {
    /// The reverse path, without angle brackets.
    pub mail_from: String,
    /// The envelope recipients, without angle brackets, in RCPT order.
    pub rcpt_to: Vec<String>,
    /// The message as the server stored it (header and body). `smtp-sink`
    /// stores LF line ends; aiosmtpd keeps the CRLFs it received.
    pub data: Vec<u8>,
    /// The whole dump file, server-added lines included.
    pub raw: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    PostfixSmtpSink,
    Aiosmtpd,
}

/// A running server; dropping it kills the process.
pub struct Server {
    kind: Kind,
    child: Child,
    port: u16,
    /// Removed on drop, after the process is killed (fields drop in order).
    _tmp: tempfile::TempDir,
    dump: PathBuf,
}

impl Server {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The directory the server dumps messages into.
    pub fn dump_dir(&self) -> &Path {
        &self.dump
    }

    /// The raw dump files written so far, sorted by file name.
    pub fn raw_messages(&self) -> Vec<Vec<u8>> {
        self.dump_files()
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .collect()
    }

    /// The messages dumped so far, parsed. Order is not the arrival order.
    pub fn messages(&self) -> Vec<Dumped> {
        self.raw_messages()
            .into_iter()
            .map(|raw| match self.kind {
                Kind::PostfixSmtpSink => parse_smtp_sink_dump(raw),
                Kind::Aiosmtpd => parse_aiosmtpd_dump(raw),
            })
            .collect()
    }

    /// Polls until at least `n` messages are dumped or `timeout` passed;
    /// returns what is there. Blocking: the server is another process.
    /// Call it once the sends have returned: smtp-sink creates a message's
    /// file when its transaction starts and completes it before the 250.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Dumped> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n || Instant::now() >= deadline {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and waits for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn dump_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dump)
            .expect("read dump dir")
            .map(|e| e.expect("dump dir entry").path())
            .filter(|p| match self.kind {
                // smtp-sink names files `<template>.<hex>`; the template
                // below starts with `msg-`.
                Kind::PostfixSmtpSink => file_name(p).starts_with("msg-"),
                // aiosmtpd's handler renames `*.tmp` to `*.eml` when done.
                Kind::Aiosmtpd => p.extension().is_some_and(|e| e == "eml"),
            })
            .collect();
        files.sort();
        files
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Whether interop tests must run (`BULLETIN_INTEROP=1`).
pub fn interop_required() -> bool {
    std::env::var("BULLETIN_INTEROP").is_ok_and(|v| v == "1")
}

/// A server is missing: fail under `BULLETIN_INTEROP=1`, else print a notice.
fn missing(what: &str, install: &str) -> Option<Server> {
    if interop_required() {
        panic!("BULLETIN_INTEROP=1 but {what}; install it with `{install}`");
    }
    eprintln!(
        "notice: skipping interop test: {what} (set BULLETIN_INTEROP=1 to make this a failure)"
    );
    None
}

/// Starts Postfix's `smtp-sink` on a free loopback port, dumping each
/// message to its own file.
///
/// The command: `smtp-sink [-u nobody] -d DIR/msg-%Y%m%d%H%M%S. 127.0.0.1:PORT 128`.
/// `-u` is required when running as root; the dump directory is then made
/// world-writable so that `nobody` can write to it.
pub fn postfix_smtp_sink() -> Option<Server> {
    if !Path::new(SMTP_SINK).exists() {
        return missing(
            &format!("{SMTP_SINK} is missing"),
            "apt-get install postfix",
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = crate::util::free_port();
    let mut cmd = Command::new(SMTP_SINK);
    if is_root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod dump dir");
        cmd.args(["-u", "nobody"]);
    }
    let template = dir.path().join("msg-%Y%m%d%H%M%S.");
    cmd.arg("-d")
        .arg(template)
        .arg(format!("127.0.0.1:{port}"))
        .arg("128");
    let dump = dir.path().to_path_buf();
    Some(spawn(Kind::PostfixSmtpSink, cmd, port, dir, dump))
}

/// The aiosmtpd handler: writes `<n>.eml` with an envelope header line in
/// front of the message bytes, atomically, before answering 250.
const AIOSMTPD_HANDLER: &str = r#"
import itertools, json, os

class Store:
    """Dumps each message to DIR/<n>.eml: one JSON envelope line, then the data."""

    def __init__(self, directory):
        self.directory = directory
        self.counter = itertools.count()

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("Store takes the dump directory")
        return cls(args[0])

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        envelope_line = json.dumps({"mail_from": envelope.mail_from, "rcpt_to": envelope.rcpt_tos, "mail_options": envelope.mail_options})
        tmp = os.path.join(self.directory, f"{n:06}.tmp")
        with open(tmp, "wb") as f:
            f.write(envelope_line.encode() + b"\n")
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(self.directory, f"{n:06}.eml"))
        return "250 2.0.0 OK"
"#;

/// Starts `aiosmtpd` on a free loopback port with a small handler that
/// stores each message in the dump directory, offering SMTPUTF8 (`-u`).
///
/// The command: `PYTHONPATH=HANDLER_DIR /usr/bin/python3 -m aiosmtpd -n -u
/// -l 127.0.0.1:PORT -c bulletin_store.Store DIR`.
pub fn aiosmtpd() -> Option<Server> {
    aiosmtpd_with(&["-u"])
}

/// `aiosmtpd` with other options: `&[]` does not offer SMTPUTF8, `-s N`
/// advertises SIZE N.
pub fn aiosmtpd_with(options: &[&str]) -> Option<Server> {
    let available = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        return missing(
            &format!("{PYTHON} cannot import aiosmtpd"),
            "apt-get install python3-aiosmtpd",
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let handler_dir = dir.path().join("handler");
    let dump_dir = dir.path().join("dump");
    std::fs::create_dir_all(&handler_dir).unwrap();
    std::fs::create_dir_all(&dump_dir).unwrap();
    std::fs::write(handler_dir.join("bulletin_store.py"), AIOSMTPD_HANDLER).unwrap();
    let port = crate::util::free_port();
    let mut cmd = Command::new(PYTHON);
    cmd.env("PYTHONPATH", &handler_dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-m", "aiosmtpd", "-n"])
        .args(options)
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "bulletin_store.Store"])
        .arg(&dump_dir);
    Some(spawn(Kind::Aiosmtpd, cmd, port, dir, dump_dir))
}

fn spawn(kind: Kind, mut cmd: Command, port: u16, tmp: tempfile::TempDir, dump: PathBuf) -> Server {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut server = Server {
        kind,
        child,
        port,
        _tmp: tmp,
        dump,
    };
    let deadline = Instant::now() + STARTUP;
    loop {
        if TcpStream::connect(server.addr()).is_ok() {
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("{kind:?} exited before accepting connections: {status}");
        }
        if Instant::now() >= deadline {
            server.kill();
            panic!("{kind:?} did not accept connections on port {port} within {STARTUP:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago. Another process could take it before
/// the server binds it; on loopback in a test run that is rare enough.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// smtp-sink's dump: `X-*` lines, a three-line `Received:` header, then the
/// message with LF line ends, then one empty line.
fn parse_smtp_sink_dump(raw: Vec<u8>) -> Dumped {
    let mut mail_from = String::new();
    let mut rcpt_to = Vec::new();
    let mut rest = &raw[..];
    let mut received_lines = 0;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
        rest = &rest[nl + 1..];
        if let Some(args) = line.strip_prefix("X-Mail-Args: ") {
            mail_from = path_of(args);
        } else if let Some(args) = line.strip_prefix("X-Rcpt-Args: ") {
            rcpt_to.push(path_of(args));
        } else if line.starts_with("Received: ") || received_lines > 0 {
            received_lines += 1;
            if received_lines == 3 {
                break;
            }
        }
    }
    let data = rest.strip_suffix(b"\n").unwrap_or(rest).to_vec();
    Dumped {
        mail_from,
        rcpt_to,
        data,
        raw,
    }
}

/// Our aiosmtpd handler's dump: one JSON envelope line, then the data.
fn parse_aiosmtpd_dump(raw: Vec<u8>) -> Dumped {
    let nl = raw.iter().position(|&b| b == b'\n').expect("envelope line");
    let envelope: serde_json::Value = serde_json::from_slice(&raw[..nl]).expect("envelope JSON");
    let mail_from = envelope["mail_from"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let rcpt_to = envelope["rcpt_to"]
        .as_array()
        .expect("rcpt_to array")
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_string())
        .collect();
    Dumped {
        mail_from,
        rcpt_to,
        data: raw[nl + 1..].to_vec(),
        raw,
    }
}

/// `<addr> PARAMS` -> `addr`.
fn path_of(args: &str) -> String {
    let args = args.trim();
    match args.strip_prefix('<').and_then(|a| a.split_once('>')) {
        Some((addr, _)) => addr.to_string(),
        None => args
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

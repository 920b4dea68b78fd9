//! `bulletin bounces imap` against a real Dovecot on loopback: a throwaway
//! configuration in a temporary folder (passwd-file user, a Maildir the test
//! fills, `ssl = no`), started by the test when /usr/sbin/dovecot exists
//! (required under BULLETIN_INTEROP=1). 200 messages, a run killed with
//! SIGKILL midway and started again: each outcome applied exactly once,
//! nothing deleted, other mail left in the inbox.

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::returned::dsn_for;
use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};
use crate::support::{project_command, stdout_of_success};

const DOVECOT: &str = "/usr/sbin/dovecot";
const USER: &str = "bob";
const PASSWORD: &str = "imap-test-password";
/// The mail files belong to `nobody`: Dovecot refuses to run mail as root.
const MAIL_UID: u32 = 65534;

/// A Dovecot serving one user's Maildir on a free loopback port; stopped
/// (SIGTERM, so its children go too) on drop.
pub struct Dovecot {
    pid: u32,
    child: std::process::Child,
    pub port: u16,
    /// The implicit-TLS port, when started with TLS.
    pub imaps_port: Option<u16>,
    pub maildir: PathBuf,
    /// The CA that signed the server's certificate, when started with TLS.
    pub ca_file: Option<PathBuf>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Dovecot {
    /// Starts Dovecot, or prints a notice and returns `None` when it is not
    /// installed (a failure under BULLETIN_INTEROP=1).
    pub fn start() -> Option<Dovecot> {
        Self::start_with(false, None)
    }

    /// [`Dovecot::start`] on a given port (a server that comes back).
    pub fn start_on(port: u16) -> Option<Dovecot> {
        Self::start_with(false, Some(port))
    }

    /// [`Dovecot::start`] with TLS: STARTTLS on `port`, implicit TLS on
    /// `imaps_port`, a certificate for 127.0.0.1 signed by a CA made here.
    pub fn start_tls() -> Option<Dovecot> {
        Self::start_with(true, None)
    }

    fn start_with(tls: bool, port: Option<u16>) -> Option<Dovecot> {
        if !Path::new(DOVECOT).exists() {
            assert!(
                std::env::var("BULLETIN_INTEROP").as_deref() != Ok("1"),
                "BULLETIN_INTEROP=1 but {DOVECOT} is missing (apt-get install dovecot-imapd)"
            );
            eprintln!("notice: {DOVECOT} not installed; IMAP test skipped");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let dir = dir.as_path();
        // Dovecot's own users must reach their sockets under base_dir.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let maildir = dir.join("mail").join(USER);
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
            chown(&maildir.join(sub));
        }
        chown(&maildir);
        chown(&dir.join("mail"));
        std::fs::write(
            dir.join("passwd"),
            format!("{USER}:{{PLAIN}}{PASSWORD}::::::\n"),
        )
        .unwrap();
        let port = port.unwrap_or_else(crate::util::free_port);
        let (ssl, imaps_port, ca_file) = if tls {
            let imaps = crate::util::free_port();
            let ca = make_certificates(dir);
            (
                format!(
                    "ssl = yes\nssl_cert = <{0}/server.pem\nssl_key = <{0}/server.key\n",
                    dir.display()
                ),
                Some(imaps),
                Some(ca),
            )
        } else {
            ("ssl = no\n".to_string(), None, None)
        };
        let imaps_listener = match imaps_port {
            Some(p) => format!("    address = 127.0.0.1\n    port = {p}\n"),
            None => "    port = 0\n".to_string(),
        };
        let d = dir.display();
        let conf = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = imap\nlisten = 127.0.0.1\n{ssl}disable_plaintext_auth = no\n\
             auth_mechanisms = plain login\n\
             default_internal_user = dovecot\ndefault_internal_group = dovecot\ndefault_login_user = dovenull\n\
             mail_location = maildir:{d}/mail/%u\nfirst_valid_uid = 1\n\
             mailbox_idle_check_interval = 1s\n\
             passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid={MAIL_UID} gid={MAIL_UID} home={d}/mail/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
             \x20 inet_listener imaps {{\n{imaps_listener}  }}\n  chroot =\n}}\n\
             service anvil {{\n  chroot =\n}}\n"
        );
        std::fs::write(dir.join("dovecot.conf"), conf).unwrap();
        let child = Command::new(DOVECOT)
            .args(["-F", "-c"])
            .arg(dir.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let dovecot = Dovecot {
            pid: child.id(),
            child,
            port,
            imaps_port,
            maildir,
            ca_file,
            log: dir.join("dovecot.log"),
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not listen: {}",
                std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(dovecot)
    }

    /// What Dovecot logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Puts a message in `folder` ("" for the inbox) as a delivery agent would.
    pub fn deliver(&self, folder: &str, name: &str, raw: &[u8]) {
        let dir = self.folder(folder);
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            chown(&dir.join(sub));
        }
        chown(&dir);
        let path = dir.join("tmp").join(name);
        std::fs::write(&path, raw).unwrap();
        chown(&path);
        std::fs::rename(&path, dir.join("new").join(name)).unwrap();
    }

    /// The messages in `folder` ("" for the inbox), new and cur.
    pub fn messages(&self, folder: &str) -> Vec<Vec<u8>> {
        let dir = self.folder(folder);
        ["new", "cur"]
            .iter()
            .flat_map(|sub| std::fs::read_dir(dir.join(sub)).into_iter().flatten())
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect()
    }

    fn folder(&self, folder: &str) -> PathBuf {
        if folder.is_empty() {
            self.maildir.clone()
        } else {
            self.maildir.join(format!(".{folder}"))
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let _ = self.child.wait();
    }
}

/// A CA and a certificate for 127.0.0.1 it signed, made with `openssl` in
/// `dir` (server.pem, server.key); returns the CA certificate's path.
fn make_certificates(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    for f in ["server.pem", "server.key", "ca.pem"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir.join("ca.pem")
}

fn chown(path: &Path) {
    std::os::unix::fs::chown(path, Some(MAIL_UID), Some(MAIL_UID)).unwrap();
}

/// A project folder whose `[bounces.imap]` points at `dovecot`, its
/// database on the engine under test.
struct Env {
    dir: tempfile::TempDir,
    smtp: String,
    /// The `db` setting (`support::pg::db_setting`).
    db: String,
}

impl Env {
    fn new(smtp_port: u16, imap_port: u16) -> Env {
        let dir = tempfile::tempdir().unwrap();
        // These tests are synchronous: a runtime of its own, on a thread of
        // its own (a caller may be inside one).
        let db = {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(crate::support::pg::db_setting(&path))
            })
            .join()
            .unwrap()
        };
        std::fs::write(
            dir.path().join("bulletin.toml"),
            format!(
                "db = \"{db}\"\nbase_url = \"https://news.example.org\"\n\
                 [sender]\nfrom = \"News <news@alliance.example>\"\nbounce_domain = \"alliance.example\"\n\
                 [bounces]\nsoft_limit = 3\nsoft_window_days = 30\n\
                 [bounces.imap]\nurl = \"imap://{USER}@127.0.0.1:{imap_port}/INBOX\"\nprocessed = \"Processed\"\npoll_secs = 2\n"
            ),
        )
        .unwrap();
        crate::util::write(
            dir.path(),
            "campaigns/news-1.md",
            "+++\nsubject = \"News 1\"\npreheader = \"p\"\nlist = \"news\"\n+++\nHello.\n",
        );
        Env {
            dir,
            smtp: format!("smtp://127.0.0.1:{smtp_port}?tls=none"),
            db,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let secret = "imap-test-secret-at-least-32-bytes-long!";
        let mut cmd = project_command(self.dir.path(), secret, &self.smtp, args);
        cmd.env("BULLETIN_IMAP_PASSWORD", PASSWORD);
        cmd
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout_of_success(self.run(args), args)
    }
}

/// An RFC 3464 report sent back to the VERP address of `m`, named after
/// its recipient.
fn dsn(m: &Received, status: &str, diagnostic: &str) -> Vec<u8> {
    dsn_for(m, &m.rcpt_to[0], status, diagnostic)
}

/// Mail a person wrote to the bounce address: not ours to file.
fn human_mail(n: usize) -> Vec<u8> {
    format!(
        "From: Reader {n} <reader{n}@example.com>\r\nTo: bounces@alliance.example\r\n\
         Subject: Question {n} about the newsletter\r\nMessage-ID: <human.{n}@example.com>\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n\r\nHello, can you tell me more? ({n})\r\n"
    )
    .into_bytes()
}

/// Up to `n` bounce files of the shared corpus, when it is there.
fn corpus(n: usize) -> Vec<Vec<u8>> {
    let dir = crate::util::root().join("../shared/bounce-corpus/eml");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("lhost-") || f.starts_with("rfc3464-"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .take(n)
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// A project with a `news` list, sending to a sink and reading the IMAP
/// server on `imap_port`; the runtime the sink runs on, to keep.
fn news_project(imap_port: u16) -> (tokio::runtime::Runtime, SmtpSink, Env) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = rt.block_on(async { SmtpSink::start(Behaviour::new()) });
    let env = Env::new(sink.port(), imap_port);
    env.ok(&["lists", "add", "news", "--name", "News"]);
    (rt, sink, env)
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn imap_two_hundred_messages_killed_midway_each_applied_once() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let (_rt, sink, env) = news_project(dovecot.port);
    let people: Vec<String> = (0..150).map(|i| format!("person{i}@example.net")).collect();
    crate::util::write(
        env.dir.path(),
        "people.csv",
        &format!("email\n{}\n", people.join("\n")),
    );
    env.ok(&["subscribers", "import", "people.csv", "--list", "news"]);
    env.ok(&["send", "campaigns/news-1.md", "--yes"]);
    let sent = sink.messages();
    assert_eq!(sent.len(), 150);

    // 120 hard bounces, 30 soft ones, 20 letters from people, and 30 more:
    // corpus bounces (addressed to nobody here) or, without the corpus,
    // more letters.
    let mut hard = Vec::new();
    let mut soft = Vec::new();
    for (i, m) in sent.iter().enumerate() {
        let to = m.rcpt_to[0].clone();
        let raw = if i < 120 {
            hard.push(to.clone());
            dsn(m, "5.1.1", &format!("550 5.1.1 <{to}>: user unknown"))
        } else {
            soft.push(to.clone());
            dsn(m, "4.2.2", "452 4.2.2 mailbox full")
        };
        dovecot.deliver("", &format!("1000{i:03}.dsn.host"), &raw);
    }
    let mut others: Vec<Vec<u8>> = (0..20).map(human_mail).collect();
    let extra = corpus(30);
    let corpus_count = extra.len();
    others.extend((20..50 - corpus_count).map(human_mail));
    for (i, raw) in others.iter().chain(extra.iter()).enumerate() {
        dovecot.deliver("", &format!("2000{i:03}.other.host"), raw);
    }
    assert_eq!(dovecot.messages("").len(), 200);

    // A long-running reader, killed with SIGKILL after 60 messages.
    let mut child = env
        .command(&["bounces", "imap"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = 0;
    while seen < 60 {
        let line = lines.next().expect("the reader stopped early").unwrap();
        if line.starts_with("UID ") {
            seen += 1;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Started again, it finishes the job and exits.
    let out = env.ok(&["bounces", "imap", "--once"]);
    assert!(out.contains(" failed"), "{out}");
    assert!(out.contains(", 0 failed"), "{out}");

    // Nothing deleted: every message is in the inbox or the processed folder.
    let inbox = dovecot.messages("");
    let processed = dovecot.messages("Processed");
    assert_eq!(inbox.len() + processed.len(), 200);
    let text = |m: &Vec<u8>| String::from_utf8_lossy(m).into_owned();
    // Every letter from a person is still in the inbox, unseen.
    for n in 0..20 {
        let id = format!("<human.{n}@example.com>");
        assert!(inbox.iter().any(|m| text(m).contains(&id)), "{id} moved");
    }
    // Every DSN was filed.
    for to in hard.iter().chain(&soft) {
        let needle = format!("Final-Recipient: rfc822; {to}\r");
        assert!(
            processed.iter().any(|m| text(m).contains(&needle)),
            "DSN for {to} not filed"
        );
    }

    // Each outcome applied exactly once: one event per person.
    let list = env.ok(&["bounces", "list"]);
    for to in &hard {
        assert_eq!(count(&list, &format!(" {to} ")), 1, "{to}: {list}");
    }
    for to in &soft {
        assert_eq!(count(&list, &format!(" {to} ")), 1, "{to}: {list}");
    }
    // Where each came from.
    for to in hard.iter().chain(&soft) {
        let line = list
            .lines()
            .find(|l| l.contains(&format!(" {to} ")))
            .unwrap();
        assert!(line.contains(" imap "), "{line}");
    }
    let show = env.ok(&["subscribers", "show", &hard[0]]);
    assert!(show.contains("bounced"), "{show}");
    let show = env.ok(&["subscribers", "show", &soft[0]]);
    assert!(show.contains("active"), "{show}");

    // Nothing left to do: a third run reads nothing new.
    let out = env.ok(&["bounces", "imap", "--once"]);
    assert!(out.contains("0 filed, 0 left in INBOX, 0 failed"), "{out}");
}

#[test]
fn imap_reader_stays_connected_picks_up_new_mail_reconnects_and_stops_on_sigterm() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let (_rt, sink, env) = news_project(dovecot.port);
    env.ok(&["subscribers", "add", "late@example.net", "--list", "news"]);
    env.ok(&["send", "campaigns/news-1.md", "--yes"]);
    let sent = sink.messages();

    let mut child = crate::util::Child(
        env.command(&["bounces", "imap"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    // Connected and waiting (the processed folder exists once it has logged in).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dovecot.maildir.join(".Processed").exists() {
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err);
            panic!("the reader never logged in: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Mail that arrives while it waits is read without a restart.
    dovecot.deliver(
        "",
        "3000.late.host",
        &dsn(&sent[0], "5.1.1", "550 5.1.1 user unknown"),
    );
    let line = lines.next().expect("no line for the new message").unwrap();
    assert!(
        line.starts_with("UID ") && line.contains("moved to Processed"),
        "{line}"
    );
    // The server goes away and comes back: the reader reconnects by itself
    // and reads what arrived meanwhile.
    let port = dovecot.port;
    drop(dovecot);
    let dovecot = Dovecot::start_on(port).unwrap();
    dovecot.deliver("", "3001.after.host", &human_mail(7));
    let line = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with("UID "))
        .expect("no line after reconnecting");
    assert!(
        line.starts_with("UID ") && line.contains("left in the inbox"),
        "{line}"
    );
    // SIGTERM: it logs out and exits successfully.
    let status = Command::new("kill")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("reconnecting in 1s"), "{err}");
    assert_eq!(dovecot.messages("").len(), 1);
    let show = env.ok(&["subscribers", "show", "late@example.net"]);
    assert!(show.contains("bounced"), "{show}");
}

#[test]
fn imap_without_settings_or_password_says_what_to_set() {
    let env = Env::new(1, 1);
    let db_line = format!("db = \"{}\"\n", env.db);
    std::fs::write(env.dir.path().join("bulletin.toml"), &db_line).unwrap();
    env.ok(&["init"]);
    std::fs::write(
        env.dir.path().join("bulletin.toml"),
        format!("{db_line}[bounces.imap]\nurl = \"imaps://bob:pw@mail.example.org/INBOX\"\n"),
    )
    .unwrap();
    let out = env.run(&["bounces", "imap", "--once"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bulletin.toml") && err.contains("BULLETIN_IMAP_PASSWORD"),
        "{err}"
    );

    std::fs::write(env.dir.path().join("bulletin.toml"), &db_line).unwrap();
    let out = env.run(&["bounces", "imap", "--once"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no [bounces.imap] in bulletin.toml"), "{err}");

    // Nothing listens on port 1: try again later (75), not an error.
    std::fs::write(
        env.dir.path().join("bulletin.toml"),
        format!("{db_line}[bounces.imap]\nurl = \"imap://bob@127.0.0.1:1/INBOX\"\n"),
    )
    .unwrap();
    let out = env.run(&["bounces", "imap", "--once"]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
}

#[test]
fn imap_over_tls_and_starttls_with_the_servers_own_ca() {
    let Some(dovecot) = Dovecot::start_tls() else {
        return;
    };
    let (_rt, sink, env) = news_project(dovecot.port);
    for who in ["tls@example.net", "starttls@example.net"] {
        env.ok(&["subscribers", "add", who, "--list", "news"]);
    }
    env.ok(&["send", "campaigns/news-1.md", "--yes"]);
    let sent = sink.messages();
    let ca = dovecot.ca_file.clone().unwrap();
    let config = |url: &str, ca: Option<&Path>| {
        let ca_line = ca.map_or(String::new(), |p| {
            format!("ca_file = \"{}\"\n", p.display())
        });
        std::fs::write(
            env.dir.path().join("bulletin.toml"),
            format!(
                "db = \"{}\"\n[sender]\nfrom = \"News <news@alliance.example>\"\nbounce_domain = \"alliance.example\"\n\
                 [bounces.imap]\nurl = \"{url}\"\n{ca_line}",
                env.db
            ),
        )
        .unwrap();
    };
    let imaps = format!(
        "imaps://{USER}@127.0.0.1:{}/INBOX",
        dovecot.imaps_port.unwrap()
    );

    // A certificate nobody vouches for: refused, try again later.
    dovecot.deliver(
        "",
        "4000.tls.host",
        &dsn(&sent[0], "5.1.1", "550 5.1.1 user unknown"),
    );
    config(&imaps, None);
    let out = env.run(&["bounces", "imap", "--once"]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{out:?}"
    );
    assert_eq!(dovecot.messages("processed").len(), 0);

    // Implicit TLS with the CA from ca_file.
    config(&imaps, Some(&ca));
    let out = env.ok(&["bounces", "imap", "--once"]);
    assert!(out.contains("1 filed"), "{out}");

    // imap:// upgrades with STARTTLS when the server offers it.
    dovecot.deliver(
        "",
        "4001.starttls.host",
        &dsn(&sent[1], "5.1.1", "550 5.1.1 user unknown"),
    );
    config(
        &format!("imap://{USER}@127.0.0.1:{}/INBOX", dovecot.port),
        Some(&ca),
    );
    let out = env.ok(&["bounces", "imap", "--once"]);
    assert!(out.contains("1 filed"), "{out}");
    assert_eq!(dovecot.messages("processed").len(), 2);
    let logins: Vec<String> = dovecot
        .log()
        .lines()
        .filter(|l| l.contains("Login: user=<bob>"))
        .map(String::from)
        .collect();
    assert_eq!(logins.len(), 2, "{}", dovecot.log());
    assert!(logins.iter().all(|l| l.contains(", TLS")), "{logins:?}");
}

#[test]
fn doctor_checks_the_imap_login() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = rt.block_on(async { SmtpSink::start(Behaviour::new()) });
    let env = Env::new(sink.port(), dovecot.port);
    env.ok(&["init"]);
    let out = env.run(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("imap:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("ok")
            && line.contains("logged in to 127.0.0.1")
            && line.contains("as bob"),
        "{line}"
    );
    let out = env
        .command(&["doctor"])
        .env("BULLETIN_IMAP_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("imap:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("FAIL") && line.contains("login as bob refused"),
        "{line}"
    );
}

#[test]
fn bounces_list_says_where_each_report_came_from() {
    let (_rt, sink, env) = news_project(1);
    let people = [
        "piped@example.net",
        "filed@example.net",
        "scanned@example.net",
    ];
    for p in people {
        env.ok(&["subscribers", "add", p, "--list", "news"]);
    }
    env.ok(&["send", "campaigns/news-1.md", "--yes"]);
    let sent = sink.messages();
    let dsn_for = |to: &str| {
        let m = sent.iter().find(|m| m.rcpt_to == [to]).unwrap();
        dsn(m, "5.1.1", "550 5.1.1 user unknown")
    };
    // Standard input, as an MTA pipe.
    let mut child = env
        .command(&["bounces", "ingest"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &dsn_for(people[0])).unwrap();
    assert!(child.wait().unwrap().success());
    // A file.
    std::fs::write(env.dir.path().join("b.eml"), dsn_for(people[1])).unwrap();
    env.ok(&["bounces", "ingest", "b.eml"]);
    // A Maildir.
    let maildir = env.dir.path().join("Maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(maildir.join("new/1.host"), dsn_for(people[2])).unwrap();
    env.ok(&["bounces", "scan", "Maildir"]);

    let list = env.ok(&["bounces", "list"]);
    for (who, source) in people.iter().zip([" pipe ", " file ", " maildir "]) {
        let line = list
            .lines()
            .find(|l| l.contains(who))
            .unwrap_or_else(|| panic!("{list}"));
        assert!(line.contains(source), "{line}");
    }
}

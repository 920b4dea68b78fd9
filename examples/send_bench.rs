//! Benchmark (not a test): send personalised copies of the example
//! e-bulletin through the dispatcher to Postfix's `smtp-sink` on loopback,
//! at several campaign sizes in the same run, and compare with Postfix's own
//! `smtp-source` against the same sink.
//!
//!     cargo run --release --example send_bench -- [SIZES...]
//!     cargo run --release --example send_bench -- --db postgres://… [--workers 1,2,4] [SIZES...]
//!
//! With `--db postgres://…` (an empty database, or one this benchmark used
//! before) the subscribers of each size are imported once into it, and for
//! each worker count a new campaign to them is sent by that many separate
//! dispatch processes started together (children of this one, as several
//! `bulletin dispatch` would be): it prints the messages per second of all
//! of them together and the peak memory of each process.
//!
//! SIZES defaults to `10000 1000000`; `BENCH_CONNECTIONS` sets the number of
//! SMTP connections (default 10). For each size it prints messages per
//! second and the peak memory of the sending phase (VmHWM of a process that
//! only sends: the subscribers are imported by a child process first), then
//! the rate of the largest size as a share of the smallest and of
//! smtp-source's (run with the largest size, at most 100,000 messages).
//! Needs /usr/sbin/smtp-sink and /usr/sbin/smtp-source (Debian's `postfix`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulletin::assets::Templates;
use bulletin::campaign;
use bulletin::config::Organisation;
use bulletin::dispatch::transport::{SmtpUrl, Transport};
use bulletin::dispatch::{self, Frozen, Progress, Settings};
use bulletin::links::{Signer, Urls};
use bulletin::render::{self, Renderer};
use bulletin::store::deliveries::{CampaignRow, InFlight, NewCampaign};
use bulletin::store::{ImportOptions, Location, Store};

/// smtp-source sends at most this many messages.
const SOURCE_CAP: usize = 100_000;

fn peak_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Sink(std::process::Child);
impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sink(port: u16) -> Sink {
    let mut child = Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "nobody", "-c", &format!("127.0.0.1:{port}"), "512"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("/usr/sbin/smtp-sink (apt-get install postfix)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Sink(child);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("smtp-sink did not start");
}

/// Where a database is: a file path or a `postgres://` URL.
fn location(db: &str) -> Location {
    Location::parse(Path::new(db), None).unwrap_or_else(|e| panic!("{db}: {e}"))
}

/// The list of the benchmark of `n` recipients: one per size, so that a
/// PostgreSQL database used before for another size sends to `n`, not to
/// everyone it holds.
fn list_slug(n: usize) -> String {
    format!("ebulletin-{n}")
}

/// The child process's job: `n` subscribers imported into `db` (a file or
/// a URL), into their list ([`list_slug`]).
async fn import(db: &str, n: usize) {
    let store = Store::open(location(db)).await.unwrap();
    let csv = std::env::temp_dir().join(format!("send-bench-{}.csv", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        writeln!(f, "email,name,city").unwrap();
        for i in 0..n {
            writeln!(f, "reader{i}@example.net,Reader Number {i},City {}", i % 97).unwrap();
        }
    }
    let t = Instant::now();
    store
        .import(
            std::fs::File::open(&csv).unwrap(),
            &list_slug(n),
            &ImportOptions::new(bulletin::store::now()),
            |_| {},
        )
        .await
        .unwrap();
    std::fs::remove_file(&csv).unwrap();
    eprintln!(
        "setup: imported {n} subscribers in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    store.close().await;
}

/// The example campaign, compiled and frozen for the list of `n`
/// recipients, named after the example with `suffix`.
async fn freeze(store: &Store, n: usize, suffix: &str) -> (CampaignRow, Frozen) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/campaigns/2026-11-ebulletin.md"
    ))
    .unwrap();
    let c = campaign::parse("2026-11-ebulletin.md", &text).unwrap();
    let org = Organisation::default();
    let compiled = Renderer::new(&Templates::builtin())
        .unwrap()
        .compile(
            &c,
            &render::Context {
                organisation: &org,
                bases: Default::default(),
            },
        )
        .unwrap();
    let list = store.list(&list_slug(n)).await.unwrap().unwrap();
    let frozen = Frozen {
        compiled,
        from: "Bench <news@bench.example>".into(),
        reply_to: None,
        list_slug: list.slug.clone(),
        list_name: list.name.clone(),
        lists: Vec::new(),
        archive: false,
        resend_until: None,
    };
    let now = bulletin::store::now();
    let id = store
        .insert_campaign(&NewCampaign {
            slug: &format!("{}{suffix}", c.slug),
            lists: &[list.id],
            subject: &c.subject,
            compiled: &serde_json::to_string(&frozen).unwrap(),
            source_hash: "bench",
            send_at: now,
            now,
        })
        .await
        .unwrap();
    let row = store.campaign_by_id(id).await.unwrap().unwrap();
    (row, frozen)
}

fn settings(port: u16, connections: usize) -> Settings {
    Settings {
        transport: Transport::Smtp {
            url: SmtpUrl::parse(&format!("smtp://127.0.0.1:{port}?tls=none"), None).unwrap(),
            timeout: Duration::from_secs(30),
            hello: "bench.example".into(),
        },
        connections,
        rate: 0.0,
        messages_per_connection: 100_000,
        signer: Signer::new(b"bench secret", &[]),
        urls: Urls::new("https://news.bench.example"),
        bounce_domain: "bench.example".into(),
        lease_secs: 120,
        max_attempts: 3,
        retry_base_secs: 60,
        retry_wait_secs: 0,
        in_flight: InFlight::Unknown,
        dkim: None,
        owner: dispatch::owner_name(),
        transport_source: "the benchmark".into(),
    }
}

/// The size of one sent message, for smtp-source's -l: rebuild one.
fn message_size(frozen: &Frozen, settings: &Settings, slug: &str) -> usize {
    let leave = bulletin::links::Unsubscribe {
        subscriber: 1,
        list: 1,
        campaign: Some(1),
    };
    let unsubscribe = settings.urls.unsubscribe(&settings.signer, &leave);
    let preferences = bulletin::links::Preferences {
        subscriber: 1,
        via_list: Some(1),
    };
    let body = frozen.compiled.personalise(&bulletin::render::Recipient {
        email: "reader1@example.net",
        name: "Reader Number 1",
        attributes: None,
        unsubscribe_url: &unsubscribe,
        preferences_url: &settings.urls.preferences(&settings.signer, &preferences),
        archive_url: &settings.urls.archive(slug),
    });
    let list_id = format!(
        "\"{}\" <{}.bench.example>",
        frozen.list_name, frozen.list_slug
    );
    let headers = bulletin::compose::Headers {
        from: &frozen.from,
        reply_to: None,
        to_email: "reader1@example.net",
        to_name: "Reader Number 1",
        date: std::time::SystemTime::now(),
        message_id: "aeaqaacukk2fv3k4hdibuou5we@bench.example",
        list_id: Some(&list_id),
        unsubscribe_url: Some(&unsubscribe),
        unsubscribe_mailto: Some("unsubscribe+aeaqaacukk2fv3k4hdibuou5we@bench.example"),
        return_path: Some("bounces+aeaqaacukk2fv3k4hdibuou5we@bench.example"),
        test: false,
        feedback_id: None,
    };
    bulletin::compose::message(&headers, &body)
        .unwrap()
        .formatted()
        .len()
}

/// What one size measured.
struct Figures {
    n: usize,
    rate: f64,
    peak_mb: f64,
    size: usize,
}

/// Imports `n` people in a child process, then sends to them from this one.
async fn send(dir: &Path, n: usize, port: u16, connections: usize) -> Figures {
    let path = dir.join(format!("bench-{n}.db"));
    import_in_child(&path.display().to_string(), n);
    let store = Store::open(&path).await.unwrap();
    let (row, frozen) = freeze(&store, n, "").await;
    let settings = settings(port, connections);
    // Reset the peak so it measures the sending phase alone.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let progress = Arc::new(Progress::default());
    let summary = dispatch::run(&store, &row, &settings, progress, stop)
        .await
        .unwrap()
        .unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    let peak_mb = peak_kb() as f64 / 1024.0;
    assert_eq!(summary.sent as usize, n, "{summary:?}");
    let rate = n as f64 / elapsed;
    println!(
        "bulletin:     {n} messages in {elapsed:.1} s = {rate:.0} messages/s over {connections} \
         connections; peak RSS while sending {peak_mb:.1} MB"
    );
    store.close().await;
    std::fs::remove_file(&path).unwrap();
    Figures {
        n,
        rate,
        peak_mb,
        size: message_size(&frozen, &settings, &row.slug),
    }
}

/// Imports `n` people into `db` in a child process (so its memory is not
/// the sender's).
fn import_in_child(db: &str, n: usize) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--import", &n.to_string(), db])
        .status()
        .unwrap();
    assert!(status.success(), "setup child failed");
}

/// A dispatch process's job (`--dispatch DB CAMPAIGN PORT CONNECTIONS`):
/// runs the campaign as `bulletin dispatch` would, beside the others, and
/// prints `sent N peak_kb K`.
async fn dispatch_child(args: &[String]) {
    let store = Store::open_existing(location(&args[0])).await.unwrap();
    let id: i64 = args[1].parse().unwrap();
    let settings = settings(args[2].parse().unwrap(), args[3].parse().unwrap());
    let row = store.campaign_by_id(id).await.unwrap().unwrap();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let progress = Arc::new(Progress::default());
    let summary = dispatch::run(&store, &row, &settings, progress, stop)
        .await
        .unwrap()
        .unwrap();
    println!("sent {} peak_kb {}", summary.sent, peak_kb());
    store.close().await;
}

/// Sends a new campaign to the `n` people of `db` from `workers` dispatch
/// processes started together; returns the rate of all of them and the
/// message size.
async fn send_shared(
    db: &str,
    n: usize,
    workers: usize,
    port: u16,
    connections: usize,
) -> (f64, usize) {
    let store = Store::open_existing(location(db)).await.unwrap();
    let (row, frozen) = freeze(
        &store,
        n,
        &format!("-{n}-w{workers}-{}", std::process::id()),
    )
    .await;
    // Queued before the clock starts, as `send` does before dispatching.
    store
        .materialise(row.id, bulletin::store::now())
        .await
        .unwrap();
    let t = Instant::now();
    let children: Vec<_> = (0..workers)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--dispatch", db, &row.id.to_string()])
                .args([port.to_string(), connections.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut sent = 0;
    let mut peaks = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a dispatch process failed");
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        let fields: Vec<&str> = line.split_whitespace().collect();
        sent += fields[1].parse::<usize>().unwrap();
        peaks.push(fields[3].parse::<f64>().unwrap() / 1024.0);
    }
    let elapsed = t.elapsed().as_secs_f64();
    assert_eq!(sent, n, "every message sent once across the workers");
    let rate = n as f64 / elapsed;
    let peaks: Vec<String> = peaks.iter().map(|p| format!("{p:.1}")).collect();
    println!(
        "bulletin:     {n} messages in {elapsed:.1} s = {rate:.0} messages/s from {workers} \
         dispatch processes x {connections} connections; peak RSS per process {} MB",
        peaks.join(", ")
    );
    let size = message_size(&frozen, &settings(port, connections), &row.slug);
    store.close().await;
    (rate, size)
}

/// `--db postgres://…`: per size, one import, then 1, 2, 4 … workers.
async fn bench_shared(db: &str, workers: &[usize], sizes: &[usize], connections: usize) {
    let port = free_port();
    let _sink = start_sink(port);
    for &n in sizes {
        import_in_child(db, n);
        let mut last = (0.0, 0);
        for &w in workers {
            last = send_shared(db, n, w, port, connections).await;
        }
        smtp_source(n.min(SOURCE_CAP), last.1, port, connections);
    }
}

/// Postfix's own client against the same sink; returns messages/s.
fn smtp_source(n: usize, size: usize, port: u16, connections: usize) -> f64 {
    let t = Instant::now();
    let status = Command::new("/usr/sbin/smtp-source")
        .args(["-d", "-s", &connections.to_string()])
        .args(["-l", &size.to_string(), "-m", &n.to_string()])
        .args(["-f", "bench@bench.example", "-t", "reader@example.net"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .status()
        .expect("/usr/sbin/smtp-source");
    assert!(status.success());
    let elapsed = t.elapsed().as_secs_f64();
    let rate = n as f64 / elapsed;
    println!(
        "smtp-source:  {n} messages of {size} bytes in {elapsed:.1} s = {rate:.0} messages/s \
         (-d -s {connections})"
    );
    rate
}

/// Removes `--name VALUE` from `args`; returns VALUE.
fn take_option(args: &mut Vec<String>, name: &str) -> Option<String> {
    let at = args.iter().position(|a| a == name)?;
    let value = args
        .get(at + 1)
        .cloned()
        .unwrap_or_else(|| panic!("{name} needs a value"));
    args.drain(at..at + 2);
    Some(value)
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--import") => return import(&args[2], args[1].parse().unwrap()).await,
        Some("--dispatch") => return dispatch_child(&args[1..]).await,
        _ => {}
    }
    let db = take_option(&mut args, "--db");
    let workers: Vec<usize> = take_option(&mut args, "--workers")
        .unwrap_or_else(|| "1,2,4".into())
        .split(',')
        .map(|w| {
            w.trim()
                .parse()
                .unwrap_or_else(|_| panic!("--workers {w:?}: not a number"))
        })
        .collect();
    let mut sizes: Vec<usize> = args
        .iter()
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("size {a:?}: not a number"))
        })
        .collect();
    if sizes.is_empty() {
        sizes = vec![10_000, 1_000_000];
    }
    let connections: usize = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10);
    if let Some(db) = db {
        return bench_shared(&db, &workers, &sizes, connections).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sink = start_sink(port);
    let mut figures = Vec::new();
    for &n in &sizes {
        figures.push(send(dir.path(), n, port, connections).await);
    }
    let (first, last) = (&figures[0], &figures[figures.len() - 1]);
    let source = smtp_source(last.n.min(SOURCE_CAP), last.size, port, connections);
    println!(
        "ratio:        {} messages at {:.0} % of the rate at {}; {:.0} % of smtp-source's",
        last.n,
        100.0 * last.rate / first.rate,
        first.n,
        100.0 * last.rate / source
    );
    let peak = figures.iter().map(|f| f.peak_mb).fold(0.0, f64::max);
    println!("peak memory:  {peak:.1} MB (VmHWM of the sending phase, largest of the runs)");
}

//! Benchmark (not a test): send N personalised copies of the example
//! e-bulletin through the dispatcher to Postfix's `smtp-sink` on loopback,
//! and compare with Postfix's own `smtp-source` against the same sink.
//!
//!     cargo run --release --example send_bench -- [N] [CONNECTIONS]
//!
//! Prints messages per second and the peak memory of the sending phase
//! (VmHWM, reset after the setup with /proc/self/clear_refs). Needs
//! /usr/sbin/smtp-sink and /usr/sbin/smtp-source (Debian's `postfix`).

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
use bulletin::store::deliveries::{self as db, InFlight, NewCampaign};
use bulletin::store::{ImportOptions, Store};

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

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();

    // Setup: N subscribers and the example campaign, frozen.
    let store = Store::open(&dir.path().join("bench.db")).await.unwrap();
    let csv = dir.path().join("people.csv");
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
            "ebulletin",
            &ImportOptions::new(bulletin::store::now()),
            |_| {},
        )
        .await
        .unwrap();
    eprintln!(
        "setup: imported {n} subscribers in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/campaigns/2026-11-ebulletin.md"
    ))
    .unwrap();
    let c = campaign::parse("2026-11-ebulletin.md", &text).unwrap();
    let org = Organisation::default();
    let compiled = Renderer::new(&Templates::builtin())
        .unwrap()
        .compile(&c, &render::Context { organisation: &org })
        .unwrap();
    let list = store.list("ebulletin").await.unwrap().unwrap();
    let frozen = Frozen {
        compiled,
        from: "Bench <news@bench.example>".into(),
        reply_to: None,
        list_slug: list.slug.clone(),
        list_name: list.name.clone(),
        archive: false,
    };
    let now = bulletin::store::now();
    let id = db::insert_campaign(
        store.pool(),
        &NewCampaign {
            slug: &c.slug,
            list_id: list.id,
            subject: &c.subject,
            compiled: &serde_json::to_string(&frozen).unwrap(),
            source_hash: "bench",
            send_at: now,
            now,
        },
    )
    .await
    .unwrap();
    let row = db::campaign_by_id(store.pool(), id).await.unwrap().unwrap();

    let port = free_port();
    let _sink = start_sink(port);
    let settings = Settings {
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
    };

    // Reset the peak so it measures the sending phase alone.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base_kb = peak_kb();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let summary = dispatch::run(
        store.pool(),
        &row,
        &settings,
        Arc::new(Progress::default()),
        stop,
    )
    .await
    .unwrap()
    .unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    let peak = peak_kb();
    assert_eq!(summary.sent as usize, n, "{summary:?}");
    // The size of one sent message, for smtp-source's -l: rebuild one.
    let size = {
        let body = frozen.compiled.personalise(&bulletin::render::Recipient {
            email: "reader1@example.net",
            name: "Reader Number 1",
            attributes: None,
            unsubscribe_url: &settings.urls.unsubscribe(&settings.signer, 1, 1),
            preferences_url: &settings.urls.preferences(&settings.signer, 1),
            archive_url: &settings.urls.archive(&c.slug),
        });
        let headers = bulletin::compose::Headers {
            from: &frozen.from,
            reply_to: None,
            to_email: "reader1@example.net",
            to_name: "Reader Number 1",
            date: std::time::SystemTime::now(),
            message_id: "aeaqaacukk2fv3k4hdibuou5we@bench.example",
            list_id: Some("\"E-bulletin\" <ebulletin.bench.example>"),
            unsubscribe_url: Some(&settings.urls.unsubscribe(&settings.signer, 1, 1)),
            unsubscribe_mailto: Some("unsubscribe+aeaqaacukk2fv3k4hdibuou5we@bench.example"),
            return_path: Some("bounces+aeaqaacukk2fv3k4hdibuou5we@bench.example"),
            test: false,
            feedback_id: None,
        };
        bulletin::compose::message(&headers, &body)
            .unwrap()
            .formatted()
            .len()
    };
    println!(
        "bulletin:     {n} messages in {elapsed:.2} s = {:.0} messages/s over {connections} connections; \
         peak RSS while sending {:.1} MB (at start {:.1} MB)",
        n as f64 / elapsed,
        peak as f64 / 1024.0,
        base_kb as f64 / 1024.0
    );

    // Postfix's own client against the same sink, same count and size.
    let t = Instant::now();
    let status = Command::new("/usr/sbin/smtp-source")
        .args([
            "-d",
            "-s",
            &connections.to_string(),
            "-l",
            &size.to_string(),
            "-m",
            &n.to_string(),
        ])
        .args([
            "-f",
            "bench@bench.example",
            "-t",
            "reader@example.net",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .status()
        .expect("/usr/sbin/smtp-source");
    let source = t.elapsed().as_secs_f64();
    assert!(status.success());
    println!(
        "smtp-source:  {n} messages of {size} bytes in {source:.2} s = {:.0} messages/s (-d -s 10)",
        n as f64 / source
    );
    println!(
        "ratio:        {:.0} % of smtp-source",
        100.0 * source / elapsed
    );
}

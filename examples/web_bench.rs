//! Benchmark (not a test): Debian's `wrk` against the subscriber pages of a
//! real `bulletin` web server on loopback, one-click unsubscribe first (each
//! request a different subscriber's signed link), then the preference page.
//! Afterwards it counts the unsubscribes the database recorded.
//!
//!     cargo run --release --example web_bench -- [SUBSCRIBERS] [SECONDS] [CONNECTIONS]
//!
//! Defaults: 300000 subscribers, 10 s per page, 64 connections. Needs
//! /usr/bin/wrk (`apt-get install wrk`). The server runs in this process
//! on a 2-thread tokio runtime; wrk runs with 2 threads beside it.

use std::io::{BufWriter, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use bulletin::assets::Templates;
use bulletin::config::Organisation;
use bulletin::links::{Signer, Urls};
use bulletin::store::{ImportOptions, Store};
use bulletin::web::{self, AppState, Pages};

/// The wrk script: every thread walks the file of paths from its own offset,
/// so no two requests of a run share a path until the file wraps.
const SCRIPT: &str = r#"
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  paths = {}
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  method = args[2]
  step = tonumber(args[3])
  i = id
end
function request()
  local path = paths[(i % #paths) + 1]
  i = i + step
  if method == "POST" then
    return wrk.format("POST", path,
      { ["Content-Type"] = "application/x-www-form-urlencoded" },
      "List-Unsubscribe=One-Click")
  end
  return wrk.format("GET", path)
end
"#;

const WRK_THREADS: usize = 2;

/// What wrk printed that matters here.
#[derive(Debug, Default)]
struct WrkResult {
    requests: u64,
    per_sec: f64,
    p50: String,
    p99: String,
    non_2xx: u64,
    socket_errors: String,
}

fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult {
        socket_errors: "none".into(),
        ..WrkResult::default()
    };
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => r.per_sec = v.parse().unwrap_or(0.0),
            ["50%", v] => r.p50 = v.to_string(),
            ["99%", v] => r.p99 = v.to_string(),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().unwrap_or(0),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            ["Socket", "errors:", ..] => r.socket_errors = words[2..].join(" "),
            _ => {}
        }
    }
    r
}

fn wrk(
    addr: SocketAddr,
    script: &Path,
    paths: &Path,
    method: &str,
    seconds: u64,
    connections: usize,
) -> anyhow::Result<WrkResult> {
    let out = Command::new("wrk")
        .args([
            &format!("-t{WRK_THREADS}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}"))
        .arg("--")
        .arg(paths)
        .args([method, &WRK_THREADS.to_string()])
        .output()
        .map_err(|e| anyhow::anyhow!("wrk: {e} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(parse_wrk(&text))
}

fn print(name: &str, r: &WrkResult) {
    println!(
        "{name}: {:.0} req/s, {} requests, p50 {}, p99 {}, non-2xx {}, socket errors {}",
        r.per_sec, r.requests, r.p50, r.p99, r.non_2xx, r.socket_errors
    );
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let subscribers: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(300_000);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let connections: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let (store, addr, stop) = runtime.block_on(async {
        let store = Store::open(&dir.path().join("bench.db")).await?;
        store
            .create_list("news", "News", "", false, true, 1_750_000_000)
            .await?;
        store
            .create_list("events", "Events", "", false, true, 1_750_000_000)
            .await?;
        let mut csv = String::from("email,name\n");
        for i in 0..subscribers {
            csv.push_str(&format!("person{i}@example.org,Person {i}\n"));
        }
        let (report, _) = store
            .import(
                csv.as_bytes(),
                "news",
                &ImportOptions::new(1_750_000_000),
                |_| {},
            )
            .await?;
        anyhow::ensure!(report.imported == subscribers, "{report:?}");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let signer = Signer::new(b"bench secret", &[]);
        let pages = Pages::new(&Templates::builtin(), &Organisation::default())
            .map_err(|e| anyhow::anyhow!(e))?;
        let state = AppState::new(
            store.clone(),
            signer,
            Urls::new(&format!("http://{addr}")),
            pages,
            None,
            "News <news@example.org>".into(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(web::serve(listener, state, async {
            let _ = stopped.await;
        }));
        anyhow::Ok((store, addr, stop))
    })?;

    // An independent observer on the database file, like a second process:
    // the store's pool stays inside the store.
    let observer = runtime.block_on(sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(store.location().file().expect("a SQLite file")),
    ))?;
    let ids: Vec<i64> = runtime.block_on(
        sqlx::query_scalar("SELECT id FROM subscribers ORDER BY id").fetch_all(&observer),
    )?;
    let list: i64 = runtime.block_on(
        sqlx::query_scalar("SELECT id FROM lists WHERE slug = 'news'").fetch_one(&observer),
    )?;
    let signer = Signer::new(b"bench secret", &[]);
    let write_paths = |name: &str, path: &dyn Fn(i64) -> String| -> anyhow::Result<_> {
        let file = dir.path().join(name);
        let mut out = BufWriter::new(std::fs::File::create(&file)?);
        for &id in &ids {
            writeln!(out, "{}", path(id))?;
        }
        out.flush()?;
        Ok(file)
    };
    let unsubscribe = write_paths("unsubscribe.txt", &|id| {
        format!(
            "/unsubscribe/{}",
            signer.sign(&bulletin::links::Unsubscribe {
                subscriber: id,
                list,
                campaign: None,
            })
        )
    })?;
    let preferences = write_paths("preferences.txt", &|id| {
        let claims = bulletin::links::Preferences {
            subscriber: id,
            via_list: None,
        };
        format!("/preferences/{}", signer.sign(&claims))
    })?;
    let script = dir.path().join("bench.lua");
    std::fs::write(&script, SCRIPT)?;
    println!(
        "{subscribers} subscribers, {seconds} s per page, {connections} connections, wrk -t{WRK_THREADS}"
    );

    let r = wrk(addr, &script, &unsubscribe, "POST", seconds, connections)?;
    print("one-click unsubscribe (POST)", &r);
    let (recorded, events): (i64, i64) = runtime.block_on(async {
        let subs =
            sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE status = 'unsubscribed'")
                .fetch_one(&observer)
                .await?;
        let events = sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = 'unsubscribed'")
            .fetch_one(&observer)
            .await?;
        anyhow::Ok((subs, events))
    })?;
    // wrk counts answered requests; a few more may have been in flight when
    // it stopped, and the server finished them too.
    let answered = r.requests.min(subscribers) as i64;
    let all = recorded >= answered && recorded == events;
    println!(
        "  unsubscribes recorded: {recorded} (events: {events}) for {} answered: {}",
        r.requests,
        if all { "every one recorded" } else { "MISSING" }
    );

    let r = wrk(addr, &script, &preferences, "GET", seconds, connections)?;
    print("preference page (GET)", &r);

    let _ = stop.send(());
    anyhow::ensure!(all, "unsubscribes missing from the database");
    Ok(())
}

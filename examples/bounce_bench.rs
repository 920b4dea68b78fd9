//! Benchmark (not a test): parse and classify the whole bounce corpus in
//! ../shared/bounce-corpus several times and print messages per second.
//!
//! cargo run --release --example bounce_bench

use std::path::Path;
use std::time::Instant;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bounce-corpus");
    if !dir.is_dir() {
        println!("notice: {} is absent; benchmark skipped", dir.display());
        return;
    }
    let mut mails = Vec::new();
    for sub in ["eml", "not-bounce"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(raw) = std::fs::read(entry.path()) {
                mails.push(raw);
            }
        }
    }
    let bytes: usize = mails.iter().map(Vec::len).sum();
    // Warm up once, then time several passes.
    let mut bounces = 0;
    for raw in &mails {
        bounces += usize::from(bulletin::bounce::parse(raw).kind == bulletin::bounce::Kind::Bounce);
    }
    let passes = 20;
    let start = Instant::now();
    let mut recipients = 0;
    for _ in 0..passes {
        for raw in &mails {
            recipients += bulletin::bounce::parse(std::hint::black_box(raw))
                .recipients
                .len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = mails.len() * passes;
    println!(
        "{} mails ({} KiB, {bounces} bounces), {passes} passes: {n} messages in {secs:.3} s = {:.0} messages/s ({} recipients)",
        mails.len(),
        bytes / 1024,
        n as f64 / secs,
        recipients / passes
    );
}

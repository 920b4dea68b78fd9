//! Benchmark (not a test): compile time of the example campaign, and
//! personalised HTML+text bodies per second on one core.
//!
//!     cargo run --release --example compose_bench

use std::hint::black_box;
use std::time::{Duration, Instant};

use bulletin::assets::Templates;
use bulletin::campaign;
use bulletin::config::Organisation;
use bulletin::render::{self, Personalised, Recipient, Renderer};

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/campaigns/2026-11-ebulletin.md"
    );
    let text = std::fs::read_to_string(path).expect("example campaign");
    let org = Organisation::default();
    let ctx = render::Context { organisation: &org };
    let renderer = Renderer::new(&Templates::builtin()).expect("templates");

    // Compile: parse + Markdown + handlebars + mrml + text part.
    let compile = || {
        let c = campaign::parse("2026-11-ebulletin.md", &text).expect("campaign");
        renderer.compile(&c, &ctx).expect("compile")
    };
    for _ in 0..20 {
        black_box(compile());
    }
    let (n, elapsed) = time(Duration::from_secs(2), || {
        black_box(compile());
    });
    let per = elapsed / n as u32;
    println!(
        "compile:      {:>8.3} ms per campaign ({n} runs)",
        per.as_secs_f64() * 1e3
    );

    // Personalise: fill subject, HTML and text for distinct recipients.
    let compiled = compile();
    let names: Vec<String> = (0..1000)
        .map(|i| format!("Subscriber Number {i} <&>"))
        .collect();
    let emails: Vec<String> = (0..1000)
        .map(|i| format!("person{i}@example.org"))
        .collect();
    let urls: Vec<String> = (0..1000)
        .map(|i| format!("https://news.example.org/unsubscribe/aeaqaacukk2fv3k4hdibuou5we{i}"))
        .collect();
    let mut out = Personalised::default();
    let mut i = 0usize;
    let (n, elapsed) = time(Duration::from_secs(3), || {
        let k = i % 1000;
        i += 1;
        compiled.personalise_into(
            &Recipient {
                email: &emails[k],
                name: &names[k],
                attributes: None,
                unsubscribe_url: &urls[k],
                preferences_url: &urls[k],
                archive_url: "https://news.example.org/archive/2026-11-ebulletin",
            },
            &mut out,
        );
        black_box(&out);
    });
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "personalise:  {:>8.0} bodies/s on one core ({:.2} µs each; HTML {} bytes, text {} bytes)",
        rate,
        1e6 / rate,
        out.html.len(),
        out.text.len()
    );
}

/// Runs `f` repeatedly for about `budget`; returns (runs, elapsed).
fn time(budget: Duration, mut f: impl FnMut()) -> (u64, Duration) {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..10 {
            f();
        }
        n += 10;
    }
    (n, start.elapsed())
}

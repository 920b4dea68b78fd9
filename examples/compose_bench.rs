//! Benchmark (not a test): compile time of the example campaign, compile
//! time of generated campaigns of 1,000 and 10,000 articles (it should grow
//! linearly), and personalised HTML+text bodies per second on one core.
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
    let ctx = render::Context {
        organisation: &org,
        bases: Default::default(),
    };
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

    // Compile time by size: 10x the articles should take about 10x the time.
    for articles in [1_000, 10_000] {
        let text = generated(articles);
        let start = Instant::now();
        let c = campaign::parse("generated.md", &text).expect("campaign");
        black_box(renderer.compile(&c, &ctx).expect("compile"));
        println!(
            "compile:      {:>8.3} s for {articles} articles ({} KiB)",
            start.elapsed().as_secs_f64(),
            text.len() / 1024
        );
    }

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

/// A campaign of `articles` articles in sections of ten, each with a
/// paragraph holding a link and a button.
fn generated(articles: usize) -> String {
    let mut text = String::from(
        "+++\nsubject = \"Generated\"\npreheader = \"p\"\nlist = \"news\"\n+++\n\nDear {{subscriber.name}},\n\n",
    );
    for i in 0..articles {
        if i % 10 == 0 {
            text.push_str(&format!("# Section {}\n\n", i / 10));
        }
        text.push_str(&format!(
            "## Article {i}\n\nSome *text* for article {i}, with [a link](https://example.org/a/{i}) \
             and more words to make a paragraph of ordinary length.\n\n\
             [Read more](https://example.org/more/{i})\n\n"
        ));
    }
    text
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

//! Runs the test SMTP sink (`tests/support/smtp_sink.rs`) on its own, for
//! trying the dispatcher by hand or measuring it:
//!
//! ```text
//! cargo run --example smtp_sink [PORT]
//! ```
//!
//! It accepts everything, keeps envelopes only, and prints the counts every
//! second until Ctrl-C.

#[path = "../tests/support/smtp_sink.rs"]
mod smtp_sink;

use std::time::Duration;

use smtp_sink::{Behaviour, SmtpSink};

#[tokio::main]
async fn main() {
    let port = std::env::args()
        .nth(1)
        .map(|p| p.parse::<u16>().expect("PORT"));
    let behaviour = Behaviour::new().discard_data();
    let sink = match port {
        Some(port) => SmtpSink::start_on(([127, 0, 0, 1], port).into(), behaviour),
        None => SmtpSink::start(behaviour),
    };
    println!("listening on {}", sink.addr());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                println!("connections={} messages={}", sink.connections(), sink.messages().len());
            }
        }
    }
    sink.shutdown().await;
}

//! Benchmark (not a test): parse and classify the whole bounce corpus in
//! ../shared/bounce-corpus several times and print messages per second; then
//! how many of its bounces and complaints carry a token that could match
//! them to a subscriber (the corpus is other senders' mail, so none of them
//! is signed with our key: every one would be kept as unmatched).
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
    let matching = matching(&mails);
    let n = mails.len() * passes;
    println!(
        "{} mails ({} KiB, {bounces} bounces), {passes} passes: {n} messages in {secs:.3} s = {:.0} messages/s ({} recipients)",
        mails.len(),
        bytes / 1024,
        n as f64 / secs,
        recipients / passes
    );
    println!("{matching}");
}

/// What the matching rule makes of the corpus: reports that would change a
/// subscriber if they had been ours.
fn matching(mails: &[Vec<u8>]) -> String {
    use bulletin::bounce::Kind;
    use bulletin::links::{Bounce, Signer, parse_message_id};
    let signer = Signer::new(b"bounce-bench-secret", &[]);
    let verifies = |t: &str| signer.verify::<Bounce>(t).is_some();
    let (mut reports, mut verp, mut message_id, mut signed) = (0, 0, 0, 0);
    for raw in mails {
        let r = bulletin::bounce::parse(raw);
        let acts = match r.kind {
            Kind::Bounce => r.bounced().next().is_some(),
            Kind::Complaint | Kind::Unsubscribe => true,
            Kind::AutoReply | Kind::None => false,
        };
        if !acts {
            continue;
        }
        reports += 1;
        let id_token = r.original_message_id.as_deref().and_then(parse_message_id);
        verp += usize::from(r.verp_token.is_some());
        message_id += usize::from(id_token.is_some());
        signed += usize::from(
            r.verp_token.as_deref().is_some_and(verifies) || id_token.is_some_and(verifies),
        );
    }
    format!(
        "matching: {reports} bounces and complaints would act on someone; {verp} carry a \
         bounces+ token, {message_id} a Message-ID shaped like ours, {signed} verify, so \
         {} would be kept as unmatched (before: matched by the addresses they name)",
        reports - signed
    )
}

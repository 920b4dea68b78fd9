//! `bounce`: synthetic fixtures for every path (tests/data/bounces/), the
//! accuracy test over the real corpus in ../shared/bounce-corpus, and the
//! `bounces parse` command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bulletin::bounce::{self, Class, Kind, Report};

/// The shared corpus of real bounces; not part of the repository.
fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bounce-corpus");
    dir.join("expected.tsv").is_file().then_some(dir)
}

/// Rows of expected.tsv that matter here.
struct Row {
    file: String,
    index: usize,
    recipient: String,
    reason: String,
    class: String,
}

fn read_expected(dir: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            let recipient = c[2]
                .split(" (")
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            Row {
                file: c[0].to_string(),
                index: c[1].parse().unwrap_or(1),
                recipient,
                reason: c[3].to_string(),
                class: c[4].to_string(),
            }
        })
        .collect()
}

fn class_name(c: Option<Class>) -> &'static str {
    match c {
        Some(Class::Hard) => "hard",
        // Delayed is not hard: for the hard/soft question it is soft.
        Some(Class::Soft | Class::Delayed) => "soft",
        None => "none",
    }
}

#[test]
fn corpus_accuracy() {
    let Some(dir) = corpus() else {
        println!("notice: ../shared/bounce-corpus is absent; corpus accuracy test skipped");
        return;
    };
    let debug = std::env::var_os("BOUNCE_DEBUG").is_some();
    let rows = read_expected(&dir);
    let mut reports: BTreeMap<String, Report> = BTreeMap::new();
    for row in &rows {
        reports
            .entry(row.file.clone())
            .or_insert_with(|| bounce::parse(&std::fs::read(dir.join(&row.file)).unwrap()));
    }

    let (mut with_rcpt, mut found) = (0, 0);
    let (mut with_class, mut agree) = (0, 0);
    for row in &rows {
        let report = &reports[&row.file];
        if !row.recipient.is_empty() {
            with_rcpt += 1;
            let hit = report
                .recipients
                .iter()
                .any(|r| r.address.as_deref() == Some(row.recipient.as_str()));
            if hit {
                found += 1;
            } else if debug {
                let got: Vec<_> = report
                    .recipients
                    .iter()
                    .map(|r| r.address.clone())
                    .collect();
                println!(
                    "RCPT {} want {} got {:?} kind {:?}",
                    row.file, row.recipient, got, report.kind
                );
            }
        }
        if row.class == "hard" || row.class == "soft" {
            with_class += 1;
            let r = report
                .recipients
                .iter()
                .find(|r| r.address.as_deref() == Some(row.recipient.as_str()))
                .or_else(|| report.recipients.get(row.index - 1))
                .or_else(|| report.recipients.first());
            let got = class_name(r.and_then(|r| r.class));
            if report.kind == Kind::Bounce && got == row.class {
                agree += 1;
            } else if debug {
                println!(
                    "CLASS {} want {} ({}) got {} kind {:?} status {:?} reason {:?}",
                    row.file,
                    row.class,
                    row.reason,
                    got,
                    report.kind,
                    r.and_then(|r| r.status.clone()),
                    r.map(|r| r.reason.chars().take(160).collect::<String>())
                );
            }
        }
    }

    let mut false_bounces = Vec::new();
    let mut not_bounce = 0;
    for entry in std::fs::read_dir(dir.join("not-bounce")).unwrap() {
        let path = entry.unwrap().path();
        not_bounce += 1;
        if bounce::parse(&std::fs::read(&path).unwrap()).kind == Kind::Bounce {
            false_bounces.push(path.display().to_string());
        }
    }
    let mut autoreplies = 0;
    let mut autoreply_recognised = 0;
    for row in rows.iter().filter(|r| r.reason == "vacation") {
        autoreplies += 1;
        match reports[&row.file].kind {
            Kind::Bounce => false_bounces.push(row.file.clone()),
            Kind::AutoReply => autoreply_recognised += 1,
            _ => {}
        }
    }
    let complaints = rows
        .iter()
        .filter(|r| r.reason == "feedback" && r.index == 1)
        .filter(|r| reports[&r.file].kind == Kind::Complaint)
        .count();

    let rcpt_pct = 100.0 * found as f64 / with_rcpt as f64;
    let class_pct = 100.0 * agree as f64 / with_class as f64;
    println!(
        "bounce corpus: {} mails, {} rows",
        reports.len(),
        rows.len()
    );
    println!("  recipient found:  {found}/{with_rcpt} = {rcpt_pct:.1} % (target >= 95 %)");
    println!("  hard/soft agrees: {agree}/{with_class} = {class_pct:.1} % (target >= 90 %)");
    println!(
        "  false bounces among {not_bounce} not-bounce mails and {autoreplies} auto-replies: {} {:?}",
        false_bounces.len(),
        false_bounces
    );
    println!(
        "  auto-replies recognised as such: {autoreply_recognised}/{autoreplies}; ARF mails read as complaints: {complaints}"
    );
    assert!(
        rcpt_pct >= 95.0,
        "recipient found for {rcpt_pct:.1} % < 95 %"
    );
    assert!(
        class_pct >= 90.0,
        "hard/soft agrees for {class_pct:.1} % < 90 %"
    );
    assert!(
        false_bounces.is_empty(),
        "counted as bounces: {false_bounces:?}"
    );
}

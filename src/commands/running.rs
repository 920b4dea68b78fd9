//! Running one frozen campaign through the dispatcher and reporting it:
//! the run recorded with its transport, the progress bar `send` shows on a
//! terminal, and the summary line `send` and `dispatch` print (`dispatch`
//! only when the run did something, so cron mails nobody). Not a command:
//! commands import this module, never each other.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;

use crate::dispatch::transport::Transport;
use crate::dispatch::{self, NotStarted, Progress, Settings, Summary};
use crate::store::Store;
use crate::store::deliveries::CampaignRow;

/// How `run_one` reports: `send` with a progress bar on a terminal and
/// always a line; `dispatch` (cron mails any output) without a bar and only
/// when the run sent, failed or finished something.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Report {
    Send { show_bar: bool },
    Dispatch,
}

/// Runs one campaign; prints its line as `report` says.
pub(super) async fn run_one(
    store: &Store,
    campaign: &CampaignRow,
    settings: &Settings,
    report: Report,
    stop: watch::Receiver<bool>,
) -> Result<Option<Summary>> {
    let show_bar = report == Report::Send { show_bar: true };
    let progress = Arc::new(Progress::default());
    let verb = delivered_verb(&settings.transport);
    let (bar, ticker) = show_bar
        .then(|| progress_bar(progress.clone(), verb.clone()))
        .unzip();
    let (kind, target) = super::setup::transport_kind(&settings.transport);
    store
        .record_run(campaign.id, kind, &target, crate::store::now())
        .await?;
    let result = dispatch::run(store, campaign, settings, progress.clone(), stop).await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(Ok(summary)) => {
            if report != Report::Dispatch || !is_idle(&summary) {
                println!(
                    "{}",
                    summary_line(&campaign.slug, &verb, &summary, campaign.welcome)
                );
            }
            Ok(Some(summary))
        }
        Ok(Err(NotStarted::Busy(owner))) => {
            // The run that holds it reports; a quiet cron stays quiet.
            if report != Report::Dispatch {
                println!(
                    "{}: skipped, another run is sending it ({owner})",
                    campaign.slug
                );
            }
            Ok(None)
        }
        Err(e) => {
            let e =
                super::setup::transport_failure(e, &settings.transport, &settings.transport_source);
            Err(e.context(stopped(&campaign.slug)))
        }
    }
}

/// The line a run that stopped on an error starts with.
fn stopped(slug: &str) -> String {
    format!(
        "{slug}: stopped; the campaign stays queued and the next `bulletin send` or `bulletin dispatch` resumes it"
    )
}

/// The progress line `send` shows on a terminal, redrawn from `progress`
/// five times a second; hidden until the run knows how many messages there
/// are, so no 0/0 bar shows at the start.
fn progress_bar(
    progress: Arc<Progress>,
    verb: String,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
        )
        .expect("progress template")
        .progress_chars("=> "),
    );
    let drawn = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut shown = false;
        loop {
            let total = progress.total.load(Ordering::Relaxed);
            if total > 0 && !shown {
                drawn.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                shown = true;
            }
            drawn.set_length(total);
            drawn.set_position(
                progress.sent.load(Ordering::Relaxed)
                    + progress.failed.load(Ordering::Relaxed)
                    + progress.skipped.load(Ordering::Relaxed),
            );
            drawn.set_message(progress_message(&progress, &verb));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, ticker)
}

/// "sent 3 failed 0", and while the run waits for in-run retries
/// ", waiting to retry 1 (next at 10:45:12)".
fn progress_message(progress: &Progress, verb: &str) -> String {
    let mut message = format!(
        "{verb} {} failed {}",
        progress.sent.load(Ordering::Relaxed),
        progress.failed.load(Ordering::Relaxed)
    );
    let waiting = progress.waiting.load(Ordering::Relaxed);
    if waiting > 0 {
        let next = super::setup::fmt_clock(progress.next_retry_at.load(Ordering::Relaxed));
        message.push_str(&format!(", waiting to retry {waiting} (next at {next})"));
    }
    message
}

/// A run that sent, failed, skipped or finished nothing: only retries
/// waiting, a welcome mail with nobody new, or a campaign whose last rows
/// another worker sent meanwhile (that worker reports the end). `dispatch`
/// says nothing about it, so cron mails nobody.
fn is_idle(s: &Summary) -> bool {
    s.sent == 0
        && s.failed == 0
        && s.skipped == 0
        && s.unknown == 0
        && s.in_flight_resolved == 0
        && !s.finished_here
        && !s.interrupted
        && !s.cancelled
}

/// What a delivery is called in reports: "sent" over SMTP; "written to the
/// outbox DIR" for the outbox, so that nobody mistakes files for mail.
fn delivered_verb(transport: &Transport) -> String {
    match transport {
        Transport::Smtp { .. } => "sent".into(),
        Transport::Outbox(dir) => {
            format!("written to {}:", super::setup::folder(dir))
        }
    }
}

fn summary_line(slug: &str, verb: &str, s: &Summary, welcome: bool) -> String {
    let mut parts = vec![format!("{verb} {}", s.sent)];
    if s.deferred > 0 {
        parts.push(format!("deferred {}", s.deferred));
    }
    if s.failed > 0 {
        parts.push(format!("failed {}", s.failed));
    }
    if s.skipped > 0 {
        parts.push(format!("skipped {} (left the list)", s.skipped));
    }
    if s.unknown > 0 {
        parts.push(format!(
            "unknown {} (sent, no answer from the server; not sent again)",
            s.unknown
        ));
    }
    if s.in_flight_resolved > 0 {
        parts.push(format!(
            "{} in flight at a crash marked unknown",
            s.in_flight_resolved
        ));
    }
    let state = if s.cancelled {
        "cancelled; nothing more is sent"
    } else if s.interrupted {
        "interrupted; run `bulletin dispatch` to resume"
    } else if s.finished {
        "finished"
    } else if s.left_to_others {
        "other workers are sending the rest"
    } else if welcome && s.deferred == 0 {
        "welcome mail; whoever is confirmed next gets it at the next `bulletin dispatch`"
    } else {
        "retries pending; `bulletin dispatch` continues"
    };
    format!("{slug}: {} ({state})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cron mails whatever `dispatch` prints: a run that found its
    /// campaign finished by another worker (which reports it) says nothing;
    /// the run that finished it, or sent anything, says so.
    #[test]
    fn a_campaign_another_worker_finished_is_no_news_for_cron() {
        let elsewhere = Summary {
            finished: true,
            ..Summary::default()
        };
        assert!(is_idle(&elsewhere));
        let here = Summary {
            finished_here: true,
            ..elsewhere.clone()
        };
        assert!(!is_idle(&here));
        let sent = Summary {
            sent: 1,
            ..elsewhere.clone()
        };
        assert!(!is_idle(&sent));
        assert!(summary_line("c", "sent", &elsewhere, false).ends_with("(finished)"));
    }
}

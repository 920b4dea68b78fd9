//! `bulletin dispatch`, the cron entry point: hold long-overdue scheduled
//! campaigns, reopen sent ones for newcomers (`resend_to_new`), then run
//! every due campaign through `running::run_one`, quietly when a run did
//! nothing.

use std::process::ExitCode;

use anyhow::Result;

use super::running::{Report, run_one};
use super::setup::{fmt_time, settings, stop_on_signal};
use crate::config::Config;
use crate::store::deliveries::CampaignStatus;

/// `bulletin dispatch`: every due campaign sent; exit code 1 when one was
/// held or refused, a run had failures or unknown outcomes or was
/// interrupted, or a signal stopped the command.
pub(crate) fn run(config: &Config) -> Result<ExitCode> {
    if config.smtp.url.is_some() {
        // Even with nothing due: cron that lost `.env`, or has a misspelt
        // SMTP URL, fails on every run, not first when a campaign is due.
        super::setup::smtp_url(config)?;
        super::setup::require_secret(config)?;
    }
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let now = crate::store::now();
        let mut trouble = false;
        // Long-overdue scheduled campaigns are held, not sent silently.
        let hold_before = now - config.dispatch.hold_after_hours * 3600;
        for c in store.due_campaigns(now).await? {
            if c.status == CampaignStatus::Scheduled && c.send_at < hold_before {
                store.set_campaign_status(c.id, CampaignStatus::Held, now).await?;
                println!(
                    "{}: held, it was due {} ({} hours ago); send it anyway with `bulletin send` on its file",
                    c.slug,
                    fmt_time(c.send_at),
                    (now - c.send_at) / 3600
                );
                trouble = true;
            }
        }
        // Sent campaigns that opted in (`resend_to_new`) go to who joined since.
        for c in store.reopen_for_new(now).await? {
            println!("{c}: sending to the people who joined its list since it was sent");
        }
        let due = store.due_campaigns(now).await?;
        if due.is_empty() {
            return Ok(if trouble { ExitCode::from(1) } else { ExitCode::SUCCESS });
        }
        let settings = settings(config, &store).await?;
        // One signal stops the whole command, not just the campaign in hand.
        let stop = stop_on_signal();
        for c in due {
            if *stop.borrow() {
                trouble = true;
                break;
            }
            // A campaign on the wrong transport is refused; the others run.
            if let Err(e) = super::setup::check_transport_kind(&store, &c, &settings).await {
                // The database itself failing is the run's error (75):
                // it would fail for every campaign.
                let database = e
                    .chain()
                    .filter_map(|c| c.downcast_ref::<crate::store::Error>())
                    .any(crate::store::Error::is_transient);
                if database {
                    return Err(e);
                }
                eprintln!("bulletin: {e:#}");
                trouble = true;
                continue;
            }
            match run_one(&store, &c, &settings, Report::Dispatch, stop.clone()).await? {
                Some(s) if s.failed > 0 || s.unknown > 0 || s.interrupted => trouble = true,
                Some(_) => {}
                None => {}
            }
        }
        Ok(if trouble { ExitCode::from(1) } else { ExitCode::SUCCESS })
    })
}

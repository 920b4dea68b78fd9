//! `bulletin cancel`: stop a scheduled, held or sending campaign or a
//! welcome mail (nothing more is sent), or end a sent campaign's window for
//! newcomers (`resend_to_new`).

use std::process::ExitCode;

use anyhow::{Result, bail};

use super::setup::{find_campaign, fmt_time};
use crate::cli::CancelArgs;
use crate::config::Config;
use crate::store::deliveries::{CampaignStatus, Cancel};

/// `bulletin cancel`: stops a scheduled, held or sending campaign.
pub(crate) fn run(config: &Config, args: &CancelArgs) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let campaign = find_campaign(&store, &args.campaign).await?;
        match store.cancel_campaign(campaign.id, crate::store::now()).await? {
            Cancel::Done { dropped } if campaign.welcome => {
                println!(
                    "{}: welcome mail stopped; nobody confirmed from now on gets it, {dropped} waiting for it not sent, {} sent before; `bulletin report {}` lists who got it",
                    campaign.slug,
                    store.received_count(campaign.id).await?,
                    campaign.slug
                );
                Ok(ExitCode::SUCCESS)
            }
            Cancel::Done { .. } if campaign.started_at.is_none() => {
                println!(
                    "{}: cancelled before it started; nobody had been mailed yet",
                    campaign.slug
                );
                Ok(ExitCode::SUCCESS)
            }
            Cancel::NewcomersEnded { until } => {
                println!(
                    "{}: no longer sent to people who join (it would have been until {}); the {} messages sent stay; `bulletin report {}` lists who got it",
                    campaign.slug,
                    fmt_time(until),
                    store.received_count(campaign.id).await?,
                    campaign.slug
                );
                Ok(ExitCode::SUCCESS)
            }
            Cancel::Done { dropped } => {
                let sent = store.received_count(campaign.id).await?;
                println!(
                    "{}: cancelled; {dropped} not sent, {sent} sent before (a run in progress stops after the messages in flight); `bulletin report {}` lists who got it",
                    campaign.slug, campaign.slug
                );
                Ok(ExitCode::SUCCESS)
            }
            Cancel::Refused(status) => bail!(
                "campaign {} cannot be cancelled: it is already {}",
                campaign.slug,
                if status == CampaignStatus::Finished { "finished (every message sent)" } else { status.as_str() }
            ),
        }
    })
}

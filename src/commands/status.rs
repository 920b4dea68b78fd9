//! `bulletin status`: each campaign's state, times, delivery counts,
//! bounces, complaints, unsubscribes and live workers, as text or JSON.

use std::process::ExitCode;

use anyhow::Result;

use super::setup::{campaign_name, fmt_time, iso_time};
use crate::campaign::Trigger;
use crate::cli::{Format, StatusArgs};
use crate::config::Config;
use crate::store::deliveries::{CampaignRow, CampaignStatus};
use crate::store::workers::Worker;

/// One campaign as `status` shows it; JSON keeps machine times (ISO 8601,
/// UTC), the text human ones.
#[derive(serde::Serialize)]
struct StatusReport {
    campaign: String,
    subject: String,
    /// The first list (what campaigns to one list call their list).
    list: String,
    /// Every list, in front matter order.
    lists: Vec<String>,
    status: CampaignStatus,
    /// `welcome` for a welcome mail (sent to each person when confirmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger: Option<&'static str>,
    /// When `send` froze it.
    frozen_at: String,
    /// When it is (or was) due.
    send_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    deliveries: std::collections::BTreeMap<String, i64>,
    /// How the runs delivered: SMTP servers and outbox folders.
    transports: Vec<crate::store::RunTransport>,
    bounces: i64,
    complaints: i64,
    unsubscribes: i64,
    /// `resend_to_new`: until when people who join its lists still get it
    /// (absent once the window is over or `cancel` ended it).
    #[serde(skip_serializing_if = "Option::is_none")]
    mails_newcomers_until: Option<String>,
    /// When `cancel` ended that window early.
    #[serde(skip_serializing_if = "Option::is_none")]
    newcomers_ended_at: Option<String>,
    /// The `dispatch`/`send` processes sending it now (heartbeat within
    /// `lease_secs`): several on PostgreSQL, at most one on SQLite.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    workers: Vec<WorkerReport>,
}

/// A live worker as `status` shows it.
#[derive(serde::Serialize)]
struct WorkerReport {
    host: String,
    pid: i64,
    started_at: String,
    heartbeat_at: String,
}

/// `bulletin status [CAMPAIGN]`: every campaign, or the one named.
pub(crate) fn run(config: &Config, args: &StatusArgs) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let mut campaigns = store.campaigns().await?;
        if let Some(name) = &args.campaign {
            let stem = campaign_name(name);
            campaigns.retain(|c| c.slug == *name || c.slug == stem);
            if campaigns.is_empty() {
                return Err(super::setup::no_campaign(&store, name).await?);
            }
        }
        let now = crate::store::now();
        let alive_since = now - config.dispatch.lease_secs.max(5);
        let mut live = store.live_workers(alive_since).await?;
        // One of this machine whose process is gone is not live, though
        // its heartbeat has not gone stale yet.
        live.retain(|w| !crate::dispatch::is_gone(&w.id));
        let mut reports = Vec::new();
        for c in &campaigns {
            let workers = live
                .iter()
                .filter(|w| w.campaign_id == Some(c.id))
                .map(|w| WorkerReport {
                    host: w.host.clone(),
                    pid: w.pid,
                    started_at: iso_time(w.started_at),
                    heartbeat_at: iso_time(w.heartbeat_at),
                })
                .collect();
            let since = c.started_at.unwrap_or(c.send_at);
            let lists = store.campaign_list_slugs(c.id).await?;
            reports.push(StatusReport {
                campaign: c.slug.clone(),
                subject: c.subject.clone(),
                list: lists.first().cloned().unwrap_or_default(),
                lists,
                status: c.status,
                trigger: c.welcome.then_some(Trigger::Welcome.as_str()),
                frozen_at: iso_time(c.created_at),
                send_at: iso_time(c.send_at),
                started_at: c.started_at.map(iso_time),
                finished_at: c.finished_at.map(iso_time),
                deliveries: store.delivery_counts(c.id).await?.into_iter().collect(),
                transports: store.run_transports(c.id).await?,
                bounces: store.events_since(c.id, "bounced", since).await?,
                complaints: store.events_since(c.id, "complained", since).await?,
                unsubscribes: store.events_since(c.id, "unsubscribed", since).await?,
                mails_newcomers_until: c.mails_newcomers_until(now).map(iso_time),
                newcomers_ended_at: c.resend_closed_at.map(iso_time),
                workers,
            });
        }
        match args.format {
            Format::Json => {
                for r in &reports {
                    println!("{}", serde_json::to_string(r)?);
                }
            }
            Format::Text => print_text(&reports, &campaigns, &live, now),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The text form: per campaign its name, state, lists and subject, its
/// times, deliveries, what happened since, and its live workers.
fn print_text(reports: &[StatusReport], campaigns: &[CampaignRow], live: &[Worker], now: i64) {
    if reports.is_empty() {
        println!("no campaigns yet; `bulletin send CAMPAIGN` queues one");
    }
    for (r, c) in reports.iter().zip(campaigns) {
        println!(
            "{}  [{}]  {} {}  \"{}\"",
            r.campaign,
            state_label(c, &r.transports),
            if r.lists.len() > 1 { "lists" } else { "list" },
            r.lists.join(", "),
            r.subject
        );
        println!("  {}", when(c, now));
        let counts: Vec<String> = r
            .deliveries
            .iter()
            .map(|(k, v)| format!("{} {v}", delivered_label(k, &r.transports)))
            .collect();
        println!(
            "  deliveries: {}",
            if counts.is_empty() {
                "none yet".into()
            } else {
                counts.join(", ")
            }
        );
        println!(
            "  since then: {} bounced, {} complained, {} unsubscribed",
            r.bounces, r.complaints, r.unsubscribes
        );
        for w in live.iter().filter(|w| w.campaign_id == Some(c.id)) {
            println!(
                "  worker: {} pid {}, started {}, last heartbeat {}s ago",
                w.host,
                w.pid,
                fmt_time(w.started_at),
                (now - w.heartbeat_at).max(0)
            );
        }
    }
}

/// A campaign's state as `status` prints it: a welcome mail is "welcome
/// (active)" while people confirmed get it; a finished campaign that only
/// ever wrote to an outbox is "written".
fn state_label(c: &CampaignRow, transports: &[crate::store::RunTransport]) -> String {
    match (c.welcome, c.status) {
        (false, CampaignStatus::Finished)
            if crate::store::RunTransport::only_outboxes(transports) =>
        {
            "written".into()
        }
        (true, CampaignStatus::Sending) => "welcome (active)".into(),
        (true, status) => format!("welcome ({status})"),
        (false, status) => status.to_string(),
    }
}

/// A campaign's times in words: frozen, due, started, finished or cancelled.
fn when(c: &CampaignRow, now: i64) -> String {
    let mut parts = vec![format!("frozen {}", fmt_time(c.created_at))];
    match c.status {
        _ if c.welcome => {
            parts.push("sent to each person confirmed on its list since then".into());
            if let Some(t) = c.finished_at {
                parts.push(format!("cancelled {}", fmt_time(t)));
            }
            return parts.join("; ");
        }
        CampaignStatus::Scheduled => parts.push(format!("scheduled for {}", fmt_time(c.send_at))),
        CampaignStatus::Held => parts.push(format!(
            "held: was due {}; `bulletin send` on its file starts it",
            fmt_time(c.send_at)
        )),
        _ => parts.push(format!("due {}", fmt_time(c.send_at))),
    }
    if let Some(t) = c.started_at {
        parts.push(format!("started {}", fmt_time(t)));
    }
    match (c.status, c.finished_at) {
        (CampaignStatus::Cancelled, Some(t)) => parts.push(format!("cancelled {}", fmt_time(t))),
        (CampaignStatus::Finished, Some(t)) => parts.push(format!("finished {}", fmt_time(t))),
        _ => {}
    }
    if let Some(until) = c.mails_newcomers_until(now) {
        parts.push(format!("mails newcomers until {}", fmt_time(until)));
    } else if let Some(t) = c.resend_closed_at {
        parts.push(format!(
            "no longer sent to newcomers (cancelled {})",
            fmt_time(t)
        ));
    }
    parts.join("; ")
}

/// The status of a delivery as `status` prints it: `sent` is "written to
/// DIR/" when every run of the campaign wrote to an outbox, and "sent or
/// written to DIR/" when runs used both.
fn delivered_label(status: &str, transports: &[crate::store::RunTransport]) -> String {
    let outboxes: Vec<String> = transports
        .iter()
        .filter(|t| t.transport == "outbox")
        .map(|t| super::setup::folder(&t.target))
        .collect();
    if status != "sent" || outboxes.is_empty() {
        return status.to_string();
    }
    let outboxes = outboxes.join(", ");
    if crate::store::RunTransport::only_outboxes(transports) {
        format!("written to {outboxes}")
    } else {
        format!("sent or written to {outboxes}")
    }
}

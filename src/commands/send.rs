//! `bulletin send`, `cancel`, `dispatch`, `status` and `test`: freezing
//! campaigns, running them (through `running`), and reporting.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Result, anyhow, bail};

use super::compile::{SAMPLE_NAME, compile_file, format_warning};
use super::running::{Report, run_one};
use super::setup::{campaign_name, find_campaign, fmt_time, iso_time, settings, stop_on_signal};
use crate::campaign::Trigger;
use crate::cli::{CancelArgs, Format, SendArgs, StatusArgs, TestArgs};
use crate::compose;
use crate::config::Config;
use crate::dispatch::Settings;
use crate::dispatch::transport::Transport;
use crate::render::Recipient;
use crate::store::Store;
use crate::store::deliveries::{CampaignRow, CampaignStatus, Cancel};

/// `bulletin send FILE`: the campaign file frozen and sent
/// (`freeze::send_file`, which `quickstart` shares).
pub(crate) fn send(config: &Config, args: &SendArgs) -> Result<ExitCode> {
    super::freeze::send_file(config, args)
}

/// `bulletin cancel`: stops a scheduled, held or sending campaign.
pub(crate) fn cancel(config: &Config, args: &CancelArgs) -> Result<ExitCode> {
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

pub(crate) fn dispatch(config: &Config) -> Result<ExitCode> {
    if config.smtp.url.is_some() {
        // Even with nothing due: cron that lost `.env` fails on every run.
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

pub(crate) fn status(config: &Config, args: &StatusArgs) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let mut campaigns = store.campaigns().await?;
        if let Some(name) = &args.campaign {
            let stem = campaign_name(name);
            campaigns.retain(|c| c.slug == *name || c.slug == stem);
            if campaigns.is_empty() {
                bail!("no campaign named {name:?}; `bulletin status` lists them all");
            }
        }
        let now = crate::store::now();
        let alive_since = now - config.dispatch.lease_secs.max(5);
        let live = store.live_workers(alive_since).await?;
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
            Format::Text => {
                if reports.is_empty() {
                    println!("no campaigns yet; `bulletin send CAMPAIGN` queues one");
                }
                for (r, c) in reports.iter().zip(&campaigns) {
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
        }
        Ok(ExitCode::SUCCESS)
    })
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
/// the outbox DIR" when every run of the campaign wrote to an outbox, and
/// "sent or written to the outbox" when runs used both.
fn delivered_label(status: &str, transports: &[crate::store::RunTransport]) -> String {
    let outboxes: Vec<&str> = transports
        .iter()
        .filter(|t| t.transport == "outbox")
        .map(|t| t.target.as_str())
        .collect();
    if status != "sent" || outboxes.is_empty() {
        return status.to_string();
    }
    let outboxes = outboxes.join(", ");
    if crate::store::RunTransport::only_outboxes(transports) {
        format!("written to the outbox {outboxes}")
    } else {
        format!("sent or written to the outbox {outboxes}")
    }
}

pub(crate) fn test(config: &Config, args: &TestArgs) -> Result<ExitCode> {
    let built = compile_file(config, &args.campaign)?;
    let file = args.campaign.display().to_string();
    for w in &built.compiled.warnings {
        eprintln!("{}", format_warning(&file, w));
    }
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let settings = settings(config, &store).await?;
        let person = match &args.as_subscriber {
            None => None,
            Some(addr) => Some(test_person(config, &store, addr).await?),
        };
        let mut sender = settings.transport.sender();
        let started = crate::store::now();
        for (index, to) in args.to.iter().enumerate() {
            let message = test_copy(config, &settings, &built, to, person.as_ref())?;
            let bytes = compose::wire_bytes(&message, settings.dkim.as_deref())?;
            let name = test_copy_name(started, index, to);
            let reply = sender
                .send(message.envelope(), &bytes, &name, 1)
                .await
                .map_err(|e| anyhow!("test copy to {to}: {e}"))?;
            let filled = match &args.as_subscriber {
                Some(addr) => format!(" (filled as {addr})"),
                None => String::new(),
            };
            match &settings.transport {
                Transport::Outbox(dir) => println!(
                    "test copy of {}{filled} to {to} written to the outbox {}: {reply}",
                    built.campaign.slug,
                    dir.display()
                ),
                Transport::Smtp { .. } => println!(
                    "sent a test copy of {}{filled} to {to} via {}: {reply}",
                    built.campaign.slug,
                    settings.transport.describe()
                ),
            }
        }
        sender.close().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The outbox file name of test copy `index` to `to`:
/// `test-1796035183-1-ann@example.org`. The index keeps copies of one run
/// apart, the address (only letters, digits, `@._-`) says whose it is.
fn test_copy_name(started: i64, index: usize, to: &str) -> String {
    let address: String = to
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '@' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    format!("test-{started}-{}-{address}", index + 1)
}

/// The subscriber `test --as ADDR` fills the copy with; not stored (or
/// erased) is an error naming the flag and the database.
async fn test_person(
    config: &Config,
    store: &Store,
    addr: &str,
) -> Result<crate::store::Subscriber> {
    let found = store
        .subscriber(addr)
        .await
        .map_err(|e| anyhow!("--as {addr}: {e}"))?;
    found
        .filter(|s| s.email.is_some())
        .ok_or_else(|| {
            anyhow!(
                "--as {addr}: no subscriber with that address in {}; give a subscriber's address or leave out --as",
                config.db
            )
        })
}

/// One test copy to `to`, filled with `person`'s data or the sample. Its
/// links are signed for nobody (subscriber 0), so clicking them in a test
/// copy changes no one's subscription, even with `--as`.
fn test_copy(
    config: &Config,
    settings: &Settings,
    built: &super::compile::Built,
    to: &str,
    person: Option<&crate::store::Subscriber>,
) -> Result<lettre::Message> {
    let urls = &settings.urls;
    let domain = &settings.bounce_domain;
    let unsubscribe = urls.unsubscribe(&settings.signer, &super::compile::SAMPLE_UNSUBSCRIBE);
    let preferences = urls.preferences(&settings.signer, &super::compile::SAMPLE_PREFERENCES);
    let archive = urls.archive(&built.campaign.slug);
    let body = built.compiled.personalise(&Recipient {
        email: person.and_then(|p| p.email.as_deref()).unwrap_or(to),
        name: person.map_or(SAMPLE_NAME, |p| p.name.as_str()),
        attributes: person.map(|p| &p.attributes),
        unsubscribe_url: &unsubscribe,
        preferences_url: &preferences,
        archive_url: &archive,
    });
    let token = settings.signer.sign(&crate::links::Bounce { delivery: 0 });
    let message_id = format!(
        "test.{}.{}@{domain}",
        built.campaign.slug,
        crate::store::now()
    );
    let list_id = compose::list_id(&built.campaign.lists[0], &built.campaign.lists[0], domain);
    let from = built
        .campaign
        .from
        .clone()
        .unwrap_or_else(|| config.sender.from.clone());
    let return_path = crate::links::verp_address(&token, domain);
    let headers = compose::Headers {
        from: &from,
        reply_to: config.sender.reply_to.as_deref(),
        to_email: to,
        to_name: "",
        date: SystemTime::now(),
        message_id: &message_id,
        list_id: Some(&list_id),
        unsubscribe_url: Some(&unsubscribe),
        unsubscribe_mailto: None,
        return_path: Some(&return_path),
        test: true,
        feedback_id: None,
    };
    Ok(compose::message(&headers, &body)?)
}

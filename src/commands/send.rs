//! `bulletin send`, `dispatch`, `status` and `test`: freezing campaigns,
//! running the dispatcher with a progress bar, and reporting.

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow, bail};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::build::{SAMPLE_NAME, compile_file, format_warning};
use super::setup::{fmt_time, settings, stop_on_signal};
use crate::cli::{Format, SendArgs, StatusArgs, TestArgs};
use crate::compose;
use crate::config::Config;
use crate::dispatch::transport::Transport;
use crate::dispatch::{self, Frozen, NotStarted, Progress, Settings, Summary};
use crate::links::Purpose;
use crate::render::Recipient;
use crate::store::Store;
use crate::store::deliveries::{self as db, CampaignRow, NewCampaign};

/// Runs one campaign with a progress bar on a terminal; prints its line.
async fn run_one(
    store: &Store,
    campaign: &CampaignRow,
    settings: &Settings,
    show_bar: bool,
    stop: watch::Receiver<bool>,
) -> Result<Option<Summary>> {
    let progress = Arc::new(Progress::default());
    let verb = delivered_verb(&settings.transport);
    let bar = show_bar.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
            )
            .expect("progress template")
            .progress_chars("=> "),
        );
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let p = progress.clone();
        let verb = verb.clone();
        tokio::spawn(async move {
            loop {
                let done = p.sent.load(Ordering::Relaxed)
                    + p.failed.load(Ordering::Relaxed)
                    + p.skipped.load(Ordering::Relaxed);
                bar.set_length(p.total.load(Ordering::Relaxed));
                bar.set_position(done);
                bar.set_message(format!(
                    "{verb} {} failed {} deferred {}",
                    p.sent.load(Ordering::Relaxed),
                    p.failed.load(Ordering::Relaxed),
                    p.deferred.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let (kind, target) = match &settings.transport {
        Transport::Smtp { url, .. } => ("smtp", format!("{}:{}", url.host, url.port)),
        Transport::Outbox(dir) => ("outbox", dir.display().to_string()),
    };
    store
        .record_run(campaign.id, kind, &target, crate::store::now())
        .await?;
    let result = dispatch::run(store.pool(), campaign, settings, progress.clone(), stop).await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(Ok(summary)) => {
            println!("{}", summary_line(&campaign.slug, &verb, &summary));
            Ok(Some(summary))
        }
        Ok(Err(NotStarted::Busy(owner))) => {
            println!("{}: skipped, another run is sending it ({owner})", campaign.slug);
            Ok(None)
        }
        Err(e) => Err(anyhow!(e).context(format!(
            "{}: stopped; the campaign stays queued and the next `bulletin send` or `bulletin dispatch` resumes it",
            campaign.slug
        ))),
    }
}

/// What a delivery is called in reports: "sent" over SMTP; "written to the
/// outbox DIR" for the outbox, so that nobody mistakes files for mail.
fn delivered_verb(transport: &Transport) -> String {
    match transport {
        Transport::Smtp { .. } => "sent".into(),
        Transport::Outbox(dir) => format!("written to the outbox {}:", dir.display()),
    }
}

fn summary_line(slug: &str, verb: &str, s: &Summary) -> String {
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
    let state = if s.interrupted {
        "interrupted; run `bulletin dispatch` to resume"
    } else if s.finished {
        "finished"
    } else {
        "retries pending; `bulletin dispatch` continues"
    };
    format!("{slug}: {} ({state})", parts.join(", "))
}

pub(crate) fn send(config: &Config, args: &SendArgs) -> Result<ExitCode> {
    let built = compile_file(config, &args.campaign)?;
    let file = args.campaign.display().to_string();
    for w in &built.compiled.warnings {
        eprintln!("{}", format_warning(&file, w));
    }
    let at = match (&args.at, built.campaign.send_at) {
        (Some(at), _) => Some(crate::campaign::parse_time(at).map_err(|m| anyhow!("--at: {m}"))?),
        (None, from_file) => from_file,
    };
    let source_hash = {
        let text = std::fs::read(&args.campaign)?;
        Sha256::digest(&text)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let pool = store.pool();
        let list = store.list(&built.campaign.list).await?.ok_or_else(|| {
            crate::campaign::Error {
                file: file.clone(),
                line: built.campaign.line_of_key("list"),
                message: format!(
                    "list {:?} does not exist; create it with `bulletin lists add {} --name NAME`",
                    built.campaign.list, built.campaign.list
                ),
            }
        })?;
        let settings = settings(config, &store).await?;
        let now = crate::store::now();
        let send_at = at.map_or(now, |t| t.timestamp());

        // A campaign already frozen: resume it, never freeze it twice.
        let mut slug = built.campaign.slug.clone();
        let existing = db::campaign_by_slug(pool, &slug).await?;
        let campaign = match existing {
            Some(c) if c.status == "sent" || c.status == "cancelled" => {
                if !args.again {
                    bail!(
                        "campaign {slug} was already sent (finished {}); use --again to send it once more as a new campaign",
                        c.finished_at.map_or("earlier".into(), fmt_time)
                    );
                }
                let mut n = 2;
                while db::campaign_by_slug(pool, &format!("{slug}-{n}")).await?.is_some() {
                    n += 1;
                }
                slug = format!("{slug}-{n}");
                None
            }
            Some(c) => {
                if c.source_hash != source_hash {
                    eprintln!("bulletin: note: {file} changed since {slug} was queued; sending the version frozen then");
                }
                if c.status == "scheduled" && args.at.is_some() {
                    db::set_send_at(pool, c.id, send_at).await?;
                }
                Some(c)
            }
            None => None,
        };

        let (list_id, list_name) = (list.id, list.name.clone());
        let recipients = store.audience_count(list_id).await?;
        let when = if send_at > now { format!("at {}", fmt_time(send_at)) } else { "now".into() };
        if campaign.is_none() && !args.yes {
            if !std::io::stdin().is_terminal() {
                bail!("not sending without confirmation: add --yes (would send {slug:?} to {recipients} recipients of {})", built.campaign.list);
            }
            eprint!(
                "Send \"{}\"\n  to {recipients} recipients of list {} ({list_name}) {when}\n  via {}? [y/N] ",
                built.campaign.subject,
                built.campaign.list,
                settings.transport.describe()
            );
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                println!("not sent");
                return Ok(ExitCode::SUCCESS);
            }
        }
        let campaign = match campaign {
            Some(c) => c,
            None => {
                let frozen = Frozen {
                    compiled: built.compiled.clone(),
                    from: built.campaign.from.clone().unwrap_or_else(|| config.sender.from.clone()),
                    reply_to: config.sender.reply_to.clone(),
                    list_slug: built.campaign.list.clone(),
                    list_name: list_name.clone(),
                    archive: built.campaign.archive,
                };
                let id = db::insert_campaign(
                    pool,
                    &NewCampaign {
                        slug: &slug,
                        list_id,
                        subject: &built.campaign.subject,
                        compiled: &serde_json::to_string(&frozen)?,
                        source_hash: &source_hash,
                        send_at,
                        now,
                    },
                )
                .await
                .map_err(|e| {
                    if e.is_duplicate() {
                        anyhow!(
                            "campaign {slug} is already being sent: another `bulletin send` froze it a moment ago; `bulletin status {slug}` shows its progress"
                        )
                    } else {
                        e.into()
                    }
                })?;
                db::campaign_by_id(pool, id).await?.expect("just inserted")
            }
        };
        if campaign.status == "scheduled" && campaign.send_at.max(send_at) > now {
            println!(
                "{}: scheduled for {} to the {recipients} recipients of {}; `bulletin dispatch` (cron) sends it then",
                campaign.slug,
                fmt_time(campaign.send_at.max(send_at)),
                built.campaign.list
            );
            return Ok(ExitCode::SUCCESS);
        }
        if campaign.status == "held" {
            db::set_campaign_status(pool, campaign.id, "sending", now).await?;
        }
        let campaign = db::campaign_by_id(pool, campaign.id).await?.expect("exists");
        let show_bar = std::io::stderr().is_terminal();
        let summary = run_one(&store, &campaign, &settings, show_bar, stop_on_signal()).await?;
        Ok(match summary {
            Some(s) if s.failed > 0 || s.unknown > 0 || s.interrupted => ExitCode::from(1),
            Some(_) => ExitCode::SUCCESS,
            None => ExitCode::from(1),
        })
    })
}

pub(crate) fn dispatch(config: &Config) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let pool = store.pool();
        let now = crate::store::now();
        let mut trouble = false;
        // Long-overdue scheduled campaigns are held, not sent silently.
        let hold_before = now - config.dispatch.hold_after_hours * 3600;
        for c in db::due_campaigns(pool, now).await? {
            if c.status == "scheduled" && c.send_at < hold_before {
                db::set_campaign_status(pool, c.id, "held", now).await?;
                println!(
                    "{}: held, it was due {} ({} hours ago); send it anyway with `bulletin send` on its file",
                    c.slug,
                    fmt_time(c.send_at),
                    (now - c.send_at) / 3600
                );
                trouble = true;
            }
        }
        let due = db::due_campaigns(pool, now).await?;
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
            match run_one(&store, &c, &settings, false, stop.clone()).await? {
                Some(s) if s.failed > 0 || s.unknown > 0 || s.interrupted => trouble = true,
                Some(_) => {}
                None => {}
            }
        }
        Ok(if trouble { ExitCode::from(1) } else { ExitCode::SUCCESS })
    })
}

#[derive(serde::Serialize)]
struct StatusReport {
    campaign: String,
    subject: String,
    list: String,
    status: String,
    send_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    deliveries: std::collections::BTreeMap<String, i64>,
    /// How the runs delivered: SMTP servers and outbox folders.
    transports: Vec<crate::store::RunTransport>,
    bounces: i64,
    complaints: i64,
    unsubscribes: i64,
}

pub(crate) fn status(config: &Config, args: &StatusArgs) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let pool = store.pool();
        let mut campaigns = db::campaigns(pool).await?;
        if let Some(name) = &args.campaign {
            let stem = std::path::Path::new(name)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(name)
                .to_string();
            campaigns.retain(|c| c.slug == *name || c.slug == stem);
            if campaigns.is_empty() {
                bail!("no campaign named {name:?}; `bulletin status` lists them all");
            }
        }
        let mut reports = Vec::new();
        for c in &campaigns {
            let since = c.started_at.unwrap_or(c.send_at);
            let list = sqlx::query_scalar::<_, String>("SELECT slug FROM lists WHERE id = ?")
                .bind(c.list_id)
                .fetch_optional(pool)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            reports.push(StatusReport {
                campaign: c.slug.clone(),
                subject: c.subject.clone(),
                list,
                status: c.status.clone(),
                send_at: c.send_at,
                started_at: c.started_at,
                finished_at: c.finished_at,
                deliveries: db::counts(pool, c.id).await?.into_iter().collect(),
                transports: store.run_transports(c.id).await?,
                bounces: db::events_since(pool, c.list_id, c.id, "bounced", since).await?,
                complaints: db::events_since(pool, c.list_id, c.id, "complained", since).await?,
                unsubscribes: db::events_since(pool, c.list_id, c.id, "unsubscribed", since)
                    .await?,
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
                for r in &reports {
                    println!(
                        "{}  [{}]  list {}  \"{}\"",
                        r.campaign, r.status, r.list, r.subject
                    );
                    let when = match (r.started_at, r.finished_at) {
                        (_, Some(f)) => format!("finished {}", fmt_time(f)),
                        (Some(s), None) => format!("started {}", fmt_time(s)),
                        _ => format!("due {}", fmt_time(r.send_at)),
                    };
                    let counts: Vec<String> = r
                        .deliveries
                        .iter()
                        .map(|(k, v)| format!("{} {v}", delivered_label(k, &r.transports)))
                        .collect();
                    println!(
                        "  {when}; deliveries: {}",
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
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
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
    if outboxes.len() == transports.len() {
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
        for to in &args.to {
            let message = test_copy(config, &settings, &built, to, person.as_ref())?;
            let bytes = compose::wire_bytes(&message, settings.dkim.as_deref())?;
            let name = format!("test-{}", crate::store::now());
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
                config.db.display()
            )
        })
}

/// One test copy to `to`, filled with `person`'s data or the sample. Its
/// links are signed for nobody (subscriber 0), so clicking them in a test
/// copy changes no one's subscription, even with `--as`.
fn test_copy(
    config: &Config,
    settings: &Settings,
    built: &super::build::Built,
    to: &str,
    person: Option<&crate::store::Subscriber>,
) -> Result<lettre::Message> {
    let urls = &settings.urls;
    let domain = &settings.bounce_domain;
    let unsubscribe = urls.unsubscribe(&settings.signer, 0, 0);
    let preferences = urls.preferences(&settings.signer, 0);
    let archive = urls.archive(&built.campaign.slug);
    let body = built.compiled.personalise(&Recipient {
        email: person.and_then(|p| p.email.as_deref()).unwrap_or(to),
        name: person.map_or(SAMPLE_NAME, |p| p.name.as_str()),
        attributes: person.map(|p| &p.attributes),
        unsubscribe_url: &unsubscribe,
        preferences_url: &preferences,
        archive_url: &archive,
    });
    let token = settings.signer.sign(Purpose::Bounce, 0, 0);
    let message_id = format!(
        "test.{}.{}@{domain}",
        built.campaign.slug,
        crate::store::now()
    );
    let list_id = compose::list_id(&built.campaign.list, &built.campaign.list, domain);
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

//! `bulletin subscribers ...`: add, remove, show, import, export, forget,
//! reactivate.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::cli::SubscribersCommand;
use crate::config::Config;
use crate::store::{self, Added, ImportOptions, Reactivated, Selection, Store};

pub(crate) fn run(config: &Config, command: &SubscribersCommand) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = match command {
            SubscribersCommand::Add { .. }
            | SubscribersCommand::Import { dry_run: false, .. } => {
                super::create_store(config).await?
            }
            _ => super::open_store(config).await?,
        };
        let db = super::db_error(config);
        let now = store::now();
        match command {
            SubscribersCommand::Add {
                email,
                name,
                list,
                confirmed,
            } => return add(&store, config, email, name.as_deref(), list, *confirmed).await,
            SubscribersCommand::Remove { email, list } => {
                let removed = store
                    .remove_subscriber(email, list.as_deref(), "cli", now)
                    .await
                    .map_err(db)?;
                match (list, removed.lists.is_empty()) {
                    (Some(l), true) => println!("{} was not subscribed to {l}", canonical(email)),
                    (None, true) => println!(
                        "{} was on no list; marked unsubscribed from all",
                        canonical(email)
                    ),
                    (Some(_), false) => {
                        println!("unsubscribed {} from {}", canonical(email), removed.lists[0])
                    }
                    (None, false) => println!(
                        "unsubscribed {} from all lists ({})",
                        canonical(email),
                        removed.lists.join(", ")
                    ),
                }
            }
            SubscribersCommand::Show { email } => show(&store, config, email).await?,
            SubscribersCommand::Import {
                file,
                list,
                dry_run,
            } => return import(&store, config, file, list, *dry_run).await,
            SubscribersCommand::Export { list, status } => {
                export(&store, config, list.as_deref(), status.as_deref()).await?
            }
            SubscribersCommand::Forget { email } => {
                if store.forget(email, "cli", now).await.map_err(db)? {
                    println!(
                        "erased {}: personal data deleted, only a hash of the address is kept so it is never mailed again",
                        canonical(email)
                    );
                } else {
                    println!(
                        "{} was not stored; a hash of the address is now suppressed so it is never mailed",
                        canonical(email)
                    );
                }
            }
            SubscribersCommand::Reactivate { email } => {
                match store.reactivate(email, "cli", now).await.map_err(db)? {
                    Reactivated::Reactivated => println!(
                        "reactivated {}: active again and no longer suppressed; the next campaign to their lists includes them",
                        canonical(email)
                    ),
                    Reactivated::AlreadyActive => {
                        println!("{} is already active; nothing changed", canonical(email))
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `subscribers add`: on a double opt-in list the confirmation email goes
/// out (set up before anything is written, so a missing SMTP server writes
/// nothing), unless `--confirmed` says the consent is on record.
async fn add(
    store: &Store,
    config: &Config,
    email: &str,
    name: Option<&str>,
    slug: &str,
    confirmed: bool,
) -> Result<ExitCode> {
    let name = name
        .map(|n| crate::text::clean(n, crate::text::Field::Name))
        .transpose()
        .context("--name")?;
    let db = super::db_error(config);
    let list = store.require_list(slug).await.map_err(&db)?;
    let mail = match list.double_opt_in && !confirmed {
        true => Some(ConfirmationMail::new(config, store).await?),
        false => None,
    };
    let added = store
        .subscribe(email, name.as_deref(), slug, confirmed, "cli", store::now())
        .await
        .map_err(&db)?;
    let who = canonical(email);
    let pending = match added {
        Added::Subscribed { status, .. } if status == "pending" => {
            format!("subscribed {who} to {slug} (pending)")
        }
        Added::Already { status } if status == "pending" => {
            format!("{who} is already on {slug} (pending)")
        }
        Added::Subscribed { status, .. } if confirmed && list.double_opt_in => {
            println!(
                "subscribed {who} to {slug} ({status}): consent on record (--confirmed), no confirmation email sent"
            );
            return Ok(ExitCode::SUCCESS);
        }
        Added::Subscribed { status, .. } => {
            println!("subscribed {who} to {slug} ({status})");
            return Ok(ExitCode::SUCCESS);
        }
        Added::Already { status } => {
            println!("{who} is already on {slug} ({status})");
            return Ok(ExitCode::SUCCESS);
        }
        Added::Confirmed => {
            println!(
                "confirmed {who} on {slug}: consent on record (--confirmed), no confirmation email sent"
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let mail = mail.expect("set up for a double opt-in list");
    mail.send(store, config, &who, &list, &pending).await
}

/// What sending a confirmation email from the command line needs: the same
/// pages, links and mailer as `bulletin serve`.
struct ConfirmationMail {
    pages: crate::web::Pages,
    urls: crate::links::Urls,
    signer: crate::links::Signer,
    mailer: crate::dispatch::Mailer,
    via: String,
}

impl ConfirmationMail {
    async fn new(config: &Config, store: &Store) -> Result<ConfirmationMail> {
        config.secrets.check()?;
        let templates = crate::assets::Templates::load(&config.templates)?;
        let pages = crate::web::Pages::new(&templates, &config.organisation)
            .map_err(|e| anyhow::anyhow!(e))?;
        let transport = super::setup::transport(config)
            .context("the list asks new subscribers to confirm by email (or add --confirmed when you have their consent on record)")?;
        let signer = super::setup::signer(config, store, &transport).await?;
        let via = match &transport {
            crate::dispatch::transport::Transport::Outbox(dir) => {
                format!("written to the outbox {}", dir.display())
            }
            smtp => format!("sent via {}", smtp.describe()),
        };
        let mailer = crate::dispatch::Mailer::new(transport, &config.bounce_domain())
            .with_dkim(super::setup::dkim(config)?);
        Ok(ConfirmationMail {
            pages,
            urls: crate::links::Urls::new(&config.base_url),
            signer,
            mailer,
            via,
        })
    }

    /// Counts and sends the email for `list`; `done` says what was stored.
    async fn send(
        &self,
        store: &Store,
        config: &Config,
        who: &str,
        list: &store::List,
        done: &str,
    ) -> Result<ExitCode> {
        let db = super::db_error(config);
        let person = store
            .subscriber(who)
            .await
            .map_err(&db)?
            .ok_or_else(|| store::Error::NoSubscriber(who.to_string()))?;
        if !store
            .count_confirmation(person.id, "cli", store::now())
            .await
            .map_err(&db)?
        {
            println!(
                "{done}; no confirmation email sent: the address had {} in the last 24 hours",
                store::people::CONFIRMATIONS_PER_WINDOW
            );
            return Ok(ExitCode::from(1));
        }
        let confirmations = crate::web::Confirmations {
            pages: &self.pages,
            urls: &self.urls,
            signer: &self.signer,
            mailer: &self.mailer,
            from: &config.sender.from,
        };
        confirmations
            .send(person.id, who, &person.name, &[list])
            .await
            .with_context(|| {
                format!("{done}, but the confirmation email to {who} was not sent (run the same command again to retry)")
            })?;
        println!(
            "{done}: confirmation email {}; they are on the list once they open its link",
            self.via
        );
        Ok(ExitCode::SUCCESS)
    }
}

fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

async fn show(store: &Store, config: &Config, email: &str) -> Result<()> {
    let profile = store
        .profile(email)
        .await
        .map_err(super::db_error(config))?
        .ok_or_else(|| store::Error::NoSubscriber(canonical(email).to_string()))?;
    let s = &profile.subscriber;
    println!("email:       {}", s.email.as_deref().unwrap_or("(erased)"));
    println!("name:        {}", s.name);
    println!("status:      {}", s.status);
    println!("id:          {}", s.id);
    println!("created:     {}", time(s.created_at));
    println!("updated:     {}", time(s.updated_at));
    println!(
        "suppressed:  {}",
        if profile.suppressed { "yes" } else { "no" }
    );
    println!(
        "deliveries:  {} ({} sent)",
        profile.deliveries, profile.sent
    );
    println!("attributes:");
    if s.attributes.is_empty() {
        println!("  (none)");
    }
    for (k, v) in &s.attributes {
        match v {
            serde_json::Value::String(v) => println!("  {k}: {v}"),
            other => println!("  {k}: {other}"),
        }
    }
    println!("subscriptions:");
    if profile.subscriptions.is_empty() {
        println!("  (none)");
    }
    for sub in &profile.subscriptions {
        println!(
            "  {}: {} (by {}, since {}; first {})",
            sub.list,
            sub.status,
            sub.source,
            time(sub.updated_at),
            time(sub.created_at)
        );
    }
    println!("history:");
    for e in &profile.events {
        let mut line = format!("  {}  {} via {}", time(e.created_at), e.kind, e.source);
        if let Some(l) = &e.list {
            line.push_str(&format!(" list={l}"));
        }
        if let Some(c) = e.campaign_id {
            line.push_str(&format!(" campaign={c}"));
        }
        if let Some(d) = &e.detail {
            line.push_str(&format!(": {d}"));
        }
        println!("{line}");
    }
    Ok(())
}

pub(super) async fn import(
    store: &Store,
    config: &Config,
    file: &Path,
    list: &str,
    dry_run: bool,
) -> Result<ExitCode> {
    let name = file.display().to_string();
    let input = std::fs::File::open(file).with_context(|| name.clone())?;
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        bar
    });
    let options = ImportOptions {
        dry_run,
        ..ImportOptions::new(store::now())
    };
    let result = store
        .import(input, list, &options, |bytes| {
            if let Some(bar) = &bar {
                bar.set_position(bytes)
            }
        })
        .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let (report, errors) = result.map_err(|e| match e {
        store::Error::EmptyFile | store::Error::NoEmailColumn(_) | store::Error::Read { .. } => {
            anyhow::Error::new(e).context(name.clone())
        }
        other => super::db_error(config)(other),
    })?;
    for e in &errors {
        eprintln!("{name}:{}: {}", e.line, e.reason);
    }
    let would = if dry_run {
        " (dry run: nothing written)"
    } else {
        ""
    };
    println!("{name} -> {list}{would}");
    if report.list_created {
        println!("  list {list} created");
    }
    println!("  rows read:           {}", report.read);
    println!("  newly subscribed:    {}", report.imported);
    println!("  updated:             {}", report.updated);
    println!("  already subscribed:  {}", report.unchanged);
    println!("  duplicates in file:  {}", report.duplicates);
    let s = report.skipped;
    println!(
        "  not resubscribed:    {} (unsubscribed {}, bounced {}, complained {}, erased or suppressed {})",
        s.total(),
        s.unsubscribed,
        s.bounced,
        s.complained,
        s.suppressed
    );
    println!("  rejected:            {}", report.rejected);
    Ok(if report.rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn export(
    store: &Store,
    config: &Config,
    list: Option<&str>,
    status: Option<&str>,
) -> Result<()> {
    let db = super::db_error(config);
    let list_id = match list {
        Some(slug) => Some(store.require_list(slug).await.map_err(&db)?.id),
        None => None,
    };
    let selection = Selection::new(list_id, status)?;
    let keys = store.attribute_keys(&selection).await.map_err(&db)?;
    let stdout = std::io::stdout().lock();
    let mut out = csv::Writer::from_writer(std::io::BufWriter::with_capacity(1 << 16, stdout));
    let mut header = vec!["email", "name", "status"];
    header.extend(keys.iter().map(String::as_str));
    out.write_record(&header).map_err(csv_error)?;
    let mut record: Vec<String> = Vec::with_capacity(header.len());
    store
        .export(&selection, |row| -> Result<()> {
            record.clear();
            record.push(row.email);
            record.push(row.name);
            record.push(row.status);
            for k in &keys {
                record.push(match row.attributes.get(k) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                });
            }
            out.write_record(&record).map_err(csv_error)
        })
        .await?;
    out.flush()?;
    Ok(())
}

/// Keeps the `io::Error` inside a csv error visible, so a closed pipe is
/// recognised by `main`.
fn csv_error(e: csv::Error) -> anyhow::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io.into(),
        other => anyhow::anyhow!("csv: {other:?}"),
    }
}

/// The address as the store keeps it, for messages; as typed when invalid
/// (the store reports that error itself).
fn canonical(email: &str) -> String {
    crate::address::normalize(email).unwrap_or_else(|_| email.trim().to_string())
}

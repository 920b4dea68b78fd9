//! `bulletin subscribers ...`: add, remove, show, import, export, forget,
//! reactivate.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::cli::{ExportFormat, SubscribersCommand};
use crate::config::Config;
use crate::store::{self, Added, Reactivated, Selection, Store};

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
                from,
                dry_run,
                welcome,
            } => return super::import_file::import(&store, config, file, list, *from, *dry_run, *welcome).await,
            SubscribersCommand::Export {
                list,
                status,
                format,
                bom,
            } => export(&store, config, list.as_deref(), status.as_deref(), *format, *bom).await?,
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
                    Reactivated::Reactivated { lists } if lists.is_empty() => println!(
                        "reactivated {}: active again and no longer suppressed, but confirmed on no list, so no campaign reaches them",
                        canonical(email)
                    ),
                    Reactivated::Reactivated { lists } => println!(
                        "reactivated {}: active again and no longer suppressed; the next campaign to {} includes them",
                        canonical(email),
                        lists.join(", ")
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
    let newly_confirmed = match &added {
        Added::Subscribed { status, .. } => status == "confirmed",
        Added::Confirmed => true,
        Added::Already { .. } => false,
    };
    let done = || welcome_note(store, config, list.id, newly_confirmed);
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
            return done().await;
        }
        Added::Subscribed { status, .. } => {
            println!("subscribed {who} to {slug} ({status})");
            return done().await;
        }
        Added::Already { status } => {
            println!("{who} is already on {slug} ({status})");
            return done().await;
        }
        Added::Confirmed => {
            println!(
                "confirmed {who} on {slug}: consent on record (--confirmed), no confirmation email sent"
            );
            return done().await;
        }
    };
    let mail = mail.expect("set up for a double opt-in list");
    mail.send(store, config, &who, &list, &pending).await
}

/// After `subscribers add` confirmed someone: says that the list's welcome
/// mail (if it has one) goes to them at the next `dispatch`.
async fn welcome_note(
    store: &Store,
    config: &Config,
    list_id: i64,
    newly_confirmed: bool,
) -> Result<ExitCode> {
    if newly_confirmed {
        let active = store
            .active_welcome(list_id)
            .await
            .map_err(super::db_error(config))?;
        if let Some(welcome) = active {
            println!("  welcome mail {welcome}: sent to them by the next `bulletin dispatch`");
        }
    }
    Ok(ExitCode::SUCCESS)
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
                format!("written to {}", super::setup::folder(dir))
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
    print_bounce_score(store, config, s.id).await?;
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
        if let Some(consent) = consent_line(&sub.consent) {
            println!("    consent: {consent}");
        }
    }
    println!("history:");
    for e in &profile.events {
        let mut line = format!("  {}  {} via {}", time(e.created_at), e.kind, e.source);
        if let Some(l) = &e.list {
            line.push_str(&format!(" list={l}"));
        }
        match (&e.campaign, e.campaign_id) {
            (Some(slug), _) => line.push_str(&format!(" campaign={slug}")),
            (None, Some(id)) => line.push_str(&format!(" campaign={id}")),
            (None, None) => {}
        }
        if let Some(d) = &e.detail {
            line.push_str(&format!(": {d}"));
        }
        println!("{line}");
    }
    Ok(())
}

/// "bounce score 1.6 of 3 (halves every 30 days)" and the changes that
/// led there, one line each: time, campaign, why, score after.
async fn print_bounce_score(store: &Store, config: &Config, subscriber: i64) -> Result<()> {
    let rule =
        store::SoftRule::from_settings(config.bounces.soft_limit, config.bounces.soft_window_days);
    let score = store
        .bounce_score(subscriber, store::now())
        .await
        .map_err(super::db_error(config))?;
    let value = score.as_ref().map_or(0.0, |s| s.score);
    println!(
        "bounce score {value:.1} of {} (halves every {} days)",
        rule.limit,
        rule.window_secs / 86_400
    );
    for change in score.iter().flat_map(|s| &s.history) {
        println!(
            "  {}  {}  {} -> {:.1}",
            time(change.at),
            change.campaign.as_deref().unwrap_or("-"),
            change.why,
            change.score
        );
    }
    Ok(())
}

/// A consent record in one line: "opted in 2023-01-15 10:20:30 UTC from
/// 203.0.113.5, confirmed … (recorded by mailchimp)".
fn consent_line(consent: &store::Consent) -> Option<String> {
    if consent.is_empty() {
        return None;
    }
    let part = |what: &str, at: Option<i64>, ip: &Option<String>| {
        let mut s = what.to_string();
        if let Some(at) = at {
            s.push_str(&format!(" {}", time(at)));
        }
        if let Some(ip) = ip {
            s.push_str(&format!(" from {ip}"));
        }
        s
    };
    let mut parts = Vec::new();
    if consent.at.is_some() || consent.ip.is_some() {
        parts.push(part("opted in", consent.at, &consent.ip));
    }
    if consent.confirmed_at.is_some() || consent.confirmed_ip.is_some() {
        parts.push(part(
            "confirmed",
            consent.confirmed_at,
            &consent.confirmed_ip,
        ));
    }
    let by = consent.source.as_deref().unwrap_or("unknown");
    Some(format!("{} (recorded by {by})", parts.join(", ")))
}

async fn export(
    store: &Store,
    config: &Config,
    list: Option<&str>,
    status: Option<&str>,
    format: ExportFormat,
    bom: bool,
) -> Result<()> {
    let db = super::db_error(config);
    let list_id = match list {
        Some(slug) => Some(store.require_list(slug).await.map_err(&db)?.id),
        None => None,
    };
    let mailchimp_file = match format {
        ExportFormat::Mailchimp => Some(MailchimpFile::for_status(status)?),
        _ => None,
    };
    let status = match mailchimp_file {
        Some(MailchimpFile::Cleaned) => Some("bounced"),
        _ => status,
    };
    let selection = Selection::new(list_id, status)?;
    if mailchimp_file == Some(MailchimpFile::Subscribed) {
        let who = match list {
            Some(slug) => format!("the subscribed people of {slug} only (who its campaigns reach)"),
            None => "subscribed people only (mailable on at least one list)".to_string(),
        };
        eprintln!(
            "exporting {who}, as Mailchimp's subscribed file; \
             --status unsubscribed and --status bounced export the unsubscribed and cleaned files"
        );
    }
    let mut keys = store.attribute_keys(&selection).await.map_err(&db)?;
    if format == ExportFormat::Mailchimp {
        // Its First Name and Last Name columns carry these already.
        keys.retain(|k| !crate::import::NAME_ATTRIBUTES.contains(&k.as_str()));
    }
    let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if format == ExportFormat::Json {
        store
            .export_with_lists(&selection, |row| -> Result<()> {
                serde_json::to_writer(&mut stdout, &export_json(row))?;
                stdout.write_all(b"\n")?;
                Ok(())
            })
            .await?;
        stdout.flush()?;
        return Ok(());
    }
    if bom {
        stdout.write_all("\u{feff}".as_bytes())?;
    }
    let mut out = csv::Writer::from_writer(stdout);
    let time_column = mailchimp_file.and_then(MailchimpFile::time_column);
    let mut header = export_header(format, list.is_some(), &keys);
    header.extend(time_column.map(String::from));
    out.write_record(&header).map_err(csv_error)?;
    let mut record: Vec<String> = Vec::with_capacity(header.len());
    let each = |row: store::ExportRow| -> Result<()> {
        record.clear();
        let changed_at = row.changed_at;
        export_record(format, list.is_some(), &keys, row, &mut record);
        if time_column.is_some() {
            record.push(crate::import::format_mailchimp_time(changed_at));
        }
        // Every cell neutralised for spreadsheets; bulletin's import
        // undoes it (`import::restore`).
        out.write_record(
            record
                .iter()
                .map(|c| crate::import::neutralise(c).into_owned()),
        )
        .map_err(csv_error)
    };
    // An export of people names their lists; a list export does not need to.
    if list.is_some() {
        store.export(&selection, each).await?;
    } else {
        store.export_with_lists(&selection, each).await?;
    }
    out.flush()?;
    Ok(())
}

/// Mailchimp exports each member status as its own file, and its import
/// reads the file's status from its columns (`UNSUB_TIME`, `CLEAN_TIME`):
/// a Mailchimp-format export is one of those files, so that nobody who left
/// comes back subscribed when it is imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MailchimpFile {
    Subscribed,
    Unsubscribed,
    Cleaned,
}

impl MailchimpFile {
    /// The file `--status` asks for with `--format mailchimp`.
    fn for_status(status: Option<&str>) -> Result<MailchimpFile> {
        Ok(match status {
            None => MailchimpFile::Subscribed,
            Some("unsubscribed") => MailchimpFile::Unsubscribed,
            Some("bounced" | "cleaned") => MailchimpFile::Cleaned,
            Some(other) => anyhow::bail!(
                "--status {other} with --format mailchimp: Mailchimp's files are subscribed (no --status), \
                 unsubscribed (--status unsubscribed) and cleaned (--status bounced), and it would import \
                 {other} people as subscribed; use --format csv for them"
            ),
        })
    }

    /// The column that marks the file for Mailchimp's import (and bulletin's).
    fn time_column(self) -> Option<&'static str> {
        match self {
            MailchimpFile::Subscribed => None,
            MailchimpFile::Unsubscribed => Some("UNSUB_TIME"),
            MailchimpFile::Cleaned => Some("CLEAN_TIME"),
        }
    }
}

/// The columns of a CSV export: bulletin's own (which re-imports as it
/// is) or Mailchimp's import columns. A list export carries the consent
/// record of that list; an export of people lists their memberships.
fn export_header(format: ExportFormat, one_list: bool, keys: &[String]) -> Vec<String> {
    let mut header: Vec<String> = match format {
        ExportFormat::Mailchimp => ["Email Address", "First Name", "Last Name"]
            .map(String::from)
            .to_vec(),
        _ => ["email", "name", "status"].map(String::from).to_vec(),
    };
    if format != ExportFormat::Mailchimp && !one_list {
        header.push("lists".into());
    }
    header.extend(keys.iter().cloned());
    if one_list {
        let consent: &[&str] = match format {
            ExportFormat::Mailchimp => &["OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP"],
            _ => &[
                "optin_time",
                "optin_ip",
                "confirm_time",
                "confirm_ip",
                "consent_source",
            ],
        };
        header.extend(consent.iter().map(|c| c.to_string()));
    }
    header
}

fn export_record(
    format: ExportFormat,
    one_list: bool,
    keys: &[String],
    row: store::ExportRow,
    record: &mut Vec<String>,
) {
    let mailchimp = format == ExportFormat::Mailchimp;
    record.push(row.email);
    if mailchimp {
        let (first, last) = name_parts(&row.name, &row.attributes);
        record.push(first);
        record.push(last);
    } else {
        record.push(row.name);
        record.push(row.status);
        if !one_list {
            let lists: Vec<String> = row
                .lists
                .iter()
                .map(|m| format!("{} ({})", m.list, m.status))
                .collect();
            record.push(lists.join(", "));
        }
    }
    for k in keys {
        record.push(match row.attributes.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        });
    }
    if one_list {
        let time = |t: Option<i64>| match t {
            Some(t) if mailchimp => crate::import::format_mailchimp_time(t),
            Some(t) => crate::import::format_time(t),
            None => String::new(),
        };
        let c = row.consent;
        record.push(time(c.at));
        record.push(c.ip.unwrap_or_default());
        record.push(time(c.confirmed_at));
        record.push(c.confirmed_ip.unwrap_or_default());
        if !mailchimp {
            record.push(c.source.unwrap_or_default());
        }
    }
}

/// First and last name for Mailchimp's columns: the person's `first_name`
/// and `last_name` attributes while they still make up the name (so that
/// `Mary Ann` stays one first name), else the name split at its first
/// space.
fn name_parts(
    name: &str,
    attributes: &serde_json::Map<String, serde_json::Value>,
) -> (String, String) {
    let part = |k: &str| attributes.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let (first, last) = (
        part(crate::import::NAME_ATTRIBUTES[0]),
        part(crate::import::NAME_ATTRIBUTES[1]),
    );
    let joined = crate::import::full_name(first, last);
    if !joined.is_empty() && joined == name {
        return (first.to_string(), last.to_string());
    }
    let (first, last) = name.split_once(' ').unwrap_or((name, ""));
    (first.to_string(), last.to_string())
}

/// One person as a JSON object for tools: every subscription with its
/// consent record, times in RFC 3339.
fn export_json(row: store::ExportRow) -> serde_json::Value {
    let time = |t: Option<i64>| t.map(crate::import::format_time);
    let lists: Vec<serde_json::Value> = row
        .lists
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "list": m.list,
                "status": m.status,
                "source": m.source,
                "since": crate::import::format_time(m.since),
                "consent": {
                    "optin_time": time(m.consent_at),
                    "optin_ip": m.consent_ip,
                    "confirm_time": time(m.confirmed_at),
                    "confirm_ip": m.confirmed_ip,
                    "recorded_by": m.consent_source,
                },
            })
        })
        .collect();
    serde_json::json!({
        "email": row.email,
        "name": row.name,
        "status": row.status,
        "attributes": row.attributes,
        "lists": lists,
    })
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

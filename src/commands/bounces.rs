//! `bulletin bounces parse FILE...`: read returned mail and print what each
//! message says, one JSON line per file, without touching the database.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::bounce::{self, Report};
use crate::cli::{BouncesParseArgs, EX_TEMPFAIL};

mod imap; // `bounces imap`: the IMAP mailbox loop

/// One output line: the file and its report.
#[derive(Debug, Serialize)]
pub struct ParseLine<'a> {
    pub file: &'a str,
    #[serde(flatten)]
    pub report: &'a Report,
}

pub(crate) fn parse(args: &BouncesParseArgs) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    for path in &args.files {
        let file = path.display().to_string();
        match read(path) {
            Ok(raw) => {
                let report = bounce::parse(&raw);
                serde_json::to_writer(
                    &mut out,
                    &ParseLine {
                        file: &file,
                        report: &report,
                    },
                )?;
                out.write_all(b"\n")?;
            }
            Err(err) => {
                // One unreadable file does not stop the others.
                out.flush()?;
                eprintln!("bulletin: {file}: {err}");
                failed = true;
            }
        }
    }
    out.flush()?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// `bounces ingest`, `scan` and `list`.
pub(crate) fn run(
    config: &crate::config::Config,
    command: &crate::cli::BouncesCommand,
) -> Result<ExitCode> {
    use crate::cli::BouncesCommand;
    super::runtime()?.block_on(async {
        // Any error of `ingest` exits EX_TEMPFAIL (`Command::error_exit_code`):
        // an MTA pipe keeps the message and retries.
        let store = super::open_store(config).await?;
        let ctx = Ingest {
            signer: super::setup::verifier(config, &store).await?,
            soft: crate::store::SoftRule::from_settings(
                config.bounces.soft_limit,
                config.bounces.soft_window_days,
            ),
            store,
        };
        match command {
            BouncesCommand::Parse(_) => unreachable!("handled without a database"),
            BouncesCommand::Ingest { files } if files.is_empty() => {
                let mut raw = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw)?;
                // Postfix's pipe(8) and others pass the envelope recipient.
                let envelope = std::env::var("ORIGINAL_RECIPIENT")
                    .or_else(|_| std::env::var("RECIPIENT"))
                    .ok();
                match ctx.process(&raw, envelope.as_deref(), "pipe").await {
                    Ok(line) => {
                        println!("-: {line}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => {
                        eprintln!("bulletin: -: {e:#}");
                        Ok(ExitCode::from(EX_TEMPFAIL))
                    }
                }
            }
            BouncesCommand::Ingest { files } => {
                let mut failed = false;
                for path in files {
                    let result = match read(path) {
                        Ok(raw) => ctx.process(&raw, None, "file").await,
                        Err(e) => Err(e.into()),
                    };
                    match result {
                        Ok(line) => println!("{}: {line}", path.display()),
                        Err(e) => {
                            eprintln!("bulletin: {}: {e:#}", path.display());
                            failed = true;
                        }
                    }
                }
                Ok(if failed {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                })
            }
            BouncesCommand::Scan { maildir } => ctx.scan(maildir).await,
            BouncesCommand::Imap { once } => imap::run(config, &ctx, *once).await,
            BouncesCommand::List { since, unmatched } => {
                let since = match since {
                    None => 0,
                    Some(s) => parse_since(s)?,
                };
                if *unmatched {
                    return list_unmatched(&ctx.store, since).await;
                }
                let events = ctx.store.bounce_events(since).await?;
                if events.is_empty() {
                    println!("no bounces or complaints recorded");
                }
                for e in events {
                    println!(
                        "{}  {:<10}  {:<32}  {:<20}  {:<16}  {}",
                        super::setup::fmt_time(e.at),
                        e.kind,
                        e.email.as_deref().unwrap_or("(erased)"),
                        e.campaign.as_deref().unwrap_or("-"),
                        e.source,
                        e.detail.as_deref().unwrap_or("").replace('\n', " ")
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// `bounces list --unmatched`: returned mail that changed nobody, with why.
async fn list_unmatched(store: &crate::store::Store, since: i64) -> Result<ExitCode> {
    let mails = store.unmatched_since(since).await?;
    if mails.is_empty() {
        println!("no unmatched mail recorded");
    }
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    for m in mails {
        println!(
            "{}  {:<11}  {:<32}  {:<40}  {}",
            super::setup::fmt_time(m.received_at),
            m.kind,
            one_line(&m.sender),
            one_line(&m.subject),
            m.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_since(text: &str) -> Result<i64> {
    let t = if text.len() == 10 {
        format!("{text} 00:00")
    } else {
        text.to_string()
    };
    crate::campaign::parse_time(&t)
        .map(|d| d.timestamp())
        .map_err(|m| anyhow::anyhow!("--since: {m}"))
}

struct Ingest {
    store: crate::store::Store,
    signer: Option<crate::links::Signer>,
    soft: crate::store::SoftRule,
}

/// What [`Ingest::ingest`] made of one message.
struct Ingested {
    /// What was done, to print.
    line: String,
    /// A bounce, complaint or mailto unsubscribe (filed away once applied);
    /// false for other mail, which a person may want to read.
    report: bool,
}

/// What one report does, to whom: the person a signed token or a quoted
/// signed Message-ID names, and nobody else.
struct Target {
    subscriber: i64,
    campaign: Option<i64>,
    action: crate::store::Action,
}

impl Ingest {
    /// The one entry point for mail read from a mailbox (`source` says which
    /// kind): parses, matches and applies `raw` like `bounces ingest`.
    async fn ingest(&self, raw: &[u8], source: &str) -> Result<Ingested> {
        use crate::bounce::Kind;
        let report = !matches!(bounce::parse(raw).kind, Kind::None | Kind::AutoReply);
        let line = self.process(raw, None, source).await?;
        Ok(Ingested { line, report })
    }

    /// The delivery that a token signed for `Purpose::Bounce` names; `Err`
    /// says why there is none.
    async fn delivery(
        &self,
        token: &str,
        source: &str,
    ) -> Result<Result<crate::store::DeliveryOwner, String>> {
        let claims = self
            .signer
            .as_ref()
            .and_then(|s| s.verify::<crate::links::Bounce>(token));
        let Some(claims) = claims else {
            return Ok(Err(format!("{source} is not signed by us")));
        };
        Ok(self
            .store
            .delivery_owner(claims.delivery)
            .await?
            .ok_or_else(|| {
                format!(
                    "{source} names delivery {} that is not stored",
                    claims.delivery
                )
            }))
    }

    /// The delivery a report is about: its VERP token, else the token of the
    /// returned original's Message-ID. Addresses in the report prove nothing
    /// (anyone can write them), so they never name the person.
    async fn reported_delivery(
        &self,
        report: &Report,
    ) -> Result<Result<crate::store::DeliveryOwner, String>> {
        let mut why = Vec::new();
        if let Some(token) = report.verp_token.as_deref() {
            match self.delivery(token, "the VERP token").await? {
                Ok(owner) => return Ok(Ok(owner)),
                Err(e) => why.push(e),
            }
        }
        if let Some(id) = report.original_message_id.as_deref() {
            let found = match crate::links::parse_message_id(id) {
                Some(token) => self.delivery(token, &format!("Message-ID <{id}>")).await?,
                None => Err(format!("Message-ID <{id}> is not one of ours")),
            };
            match found {
                Ok(owner) => return Ok(Ok(owner)),
                Err(e) => why.push(e),
            }
        }
        if why.is_empty() {
            why.push("no VERP token and no Message-ID of ours".into());
        }
        Ok(Err(why.join("; ")))
    }

    /// The one change a report makes; `Err` says why it makes none.
    async fn target(&self, report: &Report) -> Result<Result<Target, String>> {
        use crate::bounce::{Class, Kind};
        use crate::store::Action;
        if report.kind == Kind::Unsubscribe {
            let claims = match (&self.signer, report.unsubscribe_token.as_deref()) {
                (Some(s), Some(t)) => s.verify::<crate::links::Unsubscribe>(t),
                _ => None,
            };
            return Ok(claims
                .map(|c| Target {
                    subscriber: c.subscriber,
                    campaign: c.campaign,
                    action: Action::Unsubscribe { list_id: c.list },
                })
                .ok_or_else(|| "the unsubscribe address is not signed by us".to_string()));
        }
        let owner = match self.reported_delivery(report).await? {
            Ok(owner) => owner,
            Err(why) => return Ok(Err(why)),
        };
        let action = if report.kind == Kind::Complaint {
            let ty = report.feedback_type.as_deref().unwrap_or("abuse");
            Action::Complaint {
                reason: format!("complaint: {ty}"),
            }
        } else {
            // The delivery's own line of the report; other lines are about
            // other people (or forged) and change nothing.
            let own = |r: &&bounce::Recipient| {
                let canonical = r.address.as_deref().map(crate::address::normalize);
                matches!((canonical, &owner.email), (Some(Ok(a)), Some(e)) if &a == e)
            };
            let Some(r) = report
                .bounced()
                .find(own)
                .or_else(|| report.bounced().next())
            else {
                return Ok(Err("no failed recipient".into()));
            };
            let reason = format!("{} {}", r.status.as_deref().unwrap_or("-"), r.reason)
                .trim()
                .to_string();
            match r.class {
                Some(Class::Hard) => Action::Hard { reason },
                _ => Action::Soft { reason },
            }
        };
        Ok(Ok(Target {
            subscriber: owner.subscriber,
            campaign: Some(owner.campaign),
            action,
        }))
    }

    /// Processes one message that came from `source` (pipe, file, maildir,
    /// imap); returns the line to print.
    async fn process(&self, raw: &[u8], envelope: Option<&str>, source: &str) -> Result<String> {
        use crate::bounce::Kind;
        use crate::store::{Action, Applied, UnmatchedMail};
        use sha2::{Digest, Sha256};
        let hash: String = Sha256::digest(raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if self.store.inbound_seen(&hash).await? {
            return Ok("already processed".into());
        }
        let now = crate::store::now();
        let report = bounce::parse_with_envelope(raw, envelope);
        let kind = serde_json::to_value(report.kind)?
            .as_str()
            .unwrap_or("none")
            .to_string();
        let ignored = match report.kind {
            Kind::AutoReply => Some("auto-reply, ignored".to_string()),
            Kind::None => Some(match &report.feedback_type {
                Some(t) => format!("feedback report ({t}), logged only"),
                None => "not a bounce, ignored".to_string(),
            }),
            Kind::Bounce if report.bounced().next().is_none() => {
                Some("delay notice, nothing to do".to_string())
            }
            _ => None,
        };
        if let Some(what) = ignored {
            self.store.inbound_record(&hash, &kind, now).await?;
            return Ok(what);
        }
        let target = match self.target(&report).await? {
            Ok(target) => target,
            Err(reason) => {
                let line = format!("{kind} unmatched ({reason}): changed nobody, kept for review");
                self.store
                    .record_unmatched(&UnmatchedMail {
                        hash,
                        kind,
                        sender: report.from,
                        subject: report.subject,
                        reason,
                        received_at: now,
                    })
                    .await?;
                return Ok(line);
            }
        };
        let Target {
            subscriber: sub,
            campaign,
            action,
        } = target;
        let applied = self
            .store
            .apply_inbound(&hash, sub, campaign, &action, self.soft, source, now)
            .await?;
        let what = match action {
            Action::Hard { .. } => "hard bounce",
            Action::Soft { .. } => "soft bounce",
            Action::Complaint { .. } => "complaint",
            Action::Unsubscribe { .. } => "unsubscribe by mail",
        };
        // The address, as every CLI line names a person (the mail log that
        // runs this holds it already); an erased person has none.
        let who = match self
            .store
            .subscriber_by_id(sub)
            .await?
            .and_then(|s| s.email)
        {
            Some(email) => email,
            None => format!("subscriber {sub} (erased)"),
        };
        let from = match campaign {
            Some(id) => match self.store.campaign_slug(id).await? {
                Some(slug) => format!(" (campaign {slug})"),
                None => String::new(),
            },
            None => String::new(),
        };
        let result = match applied {
            None => "already processed".to_string(),
            Some(Applied::Status(s)) => format!("{who} is now {s}{from}"),
            Some(Applied::Unsubscribed) => format!("{who} unsubscribed{from}"),
            Some(Applied::Recorded) => format!("recorded for {who}{from}"),
        };
        Ok(format!("{what}: {result}"))
    }

    /// Processes `maildir/new`, moving each message to `cur/` only after it
    /// is recorded; a failure leaves it for the next run.
    async fn scan(&self, maildir: &Path) -> Result<ExitCode> {
        let new = maildir.join("new");
        let cur = maildir.join("cur");
        let mut entries: Vec<_> = std::fs::read_dir(&new)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (expected a Maildir with new/ and cur/)",
                    new.display()
                )
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        std::fs::create_dir_all(&cur)?;
        let (mut done, mut failed) = (0, 0);
        for path in entries {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let result = match read(&path) {
                Ok(raw) => self.process(&raw, None, "maildir").await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(line) => {
                    let target =
                        cur.join(format!("{}:2,S", name.split(':').next().unwrap_or(&name)));
                    std::fs::rename(&path, &target)?;
                    println!("{name}: {line}");
                    done += 1;
                }
                Err(e) => {
                    eprintln!("bulletin: {}: {e:#}", path.display());
                    failed += 1;
                }
            }
        }
        if done + failed > 0 {
            println!("{done} processed, {failed} left in new/ for the next run");
        }
        Ok(if failed > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    }
}

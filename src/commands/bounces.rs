//! `bulletin bounces parse FILE...`: read returned mail and print what each
//! message says, one JSON line per file, without touching the database.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::bounce::{self, Report};
use crate::cli::BouncesParseArgs;

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
            soft: crate::store::SoftRule {
                limit: config.bounces.soft_limit.max(1),
                window_secs: config.bounces.soft_window_days.max(1) * 86_400,
            },
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
                match ctx.process(&raw, envelope.as_deref()).await {
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
                        Ok(raw) => ctx.process(&raw, None).await,
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
            BouncesCommand::List { since } => {
                let since = match since {
                    None => 0,
                    Some(s) => parse_since(s)?,
                };
                let events = ctx.store.bounce_events(since).await?;
                if events.is_empty() {
                    println!("no bounces or complaints recorded");
                }
                for e in events {
                    println!(
                        "{}  {:<10}  {:<32}  {:<20}  {}",
                        super::setup::fmt_time(e.at),
                        e.kind,
                        e.email.as_deref().unwrap_or("(erased)"),
                        e.campaign.as_deref().unwrap_or("-"),
                        e.detail.as_deref().unwrap_or("").replace('\n', " ")
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

use crate::cli::EX_TEMPFAIL;

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

impl Ingest {
    /// The delivery a VERP or Message-ID token names: (subscriber, campaign).
    async fn by_token(&self, token: Option<&str>) -> Result<Option<(i64, i64)>> {
        let (Some(signer), Some(token)) = (&self.signer, token) else {
            return Ok(None);
        };
        match signer.verify_for(token, crate::links::Purpose::Bounce) {
            Some(c) => Ok(self.store.delivery_owner(c.a).await?),
            None => Ok(None),
        }
    }

    /// Processes one message; returns the line to print.
    async fn process(&self, raw: &[u8], envelope: Option<&str>) -> Result<String> {
        use crate::bounce::{Class, Kind};
        use crate::store::{Action, Applied};
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
        // Who: the VERP token, then the returned original's Message-ID, then addresses.
        let message_token = report
            .original_message_id
            .as_deref()
            .map(|id| id.trim_matches(|c| c == '<' || c == '>'))
            .and_then(|id| id.split('@').next());
        let by_token = match self.by_token(report.verp_token.as_deref()).await? {
            Some(owner) => Some(owner),
            None => self.by_token(message_token).await?,
        };
        let mut targets: Vec<(i64, Option<i64>, Action)> = Vec::new();
        match report.kind {
            Kind::Unsubscribe => {
                let claims = match (&self.signer, report.unsubscribe_token.as_deref()) {
                    (Some(s), Some(t)) => s.verify_for(t, crate::links::Purpose::Unsubscribe),
                    _ => None,
                };
                if let Some(c) = claims {
                    targets.push((c.a, None, Action::Unsubscribe { list_id: c.b }));
                }
            }
            Kind::Bounce => {
                let worst = report
                    .bounced()
                    .map(|r| r.class)
                    .max_by_key(|c| matches!(c, Some(Class::Hard)));
                let reason = |r: &bounce::Recipient| {
                    format!("{} {}", r.status.as_deref().unwrap_or("-"), r.reason)
                        .trim()
                        .to_string()
                };
                match by_token {
                    Some((sub, campaign)) => {
                        if let Some(r) = report
                            .bounced()
                            .find(|r| Some(r.class) == worst)
                            .or_else(|| report.bounced().next())
                        {
                            let action = match r.class {
                                Some(Class::Hard) => Action::Hard { reason: reason(r) },
                                _ => Action::Soft { reason: reason(r) },
                            };
                            targets.push((sub, Some(campaign), action));
                        }
                    }
                    None => {
                        for r in report.bounced() {
                            let Some(addr) = &r.address else { continue };
                            if let Some(sub) = self.store.subscriber_id(addr).await? {
                                let action = match r.class {
                                    Some(Class::Hard) => Action::Hard { reason: reason(r) },
                                    _ => Action::Soft { reason: reason(r) },
                                };
                                targets.push((sub, None, action));
                            }
                        }
                    }
                }
            }
            Kind::Complaint => {
                let reason = format!(
                    "complaint: {}",
                    report.feedback_type.as_deref().unwrap_or("abuse")
                );
                match by_token {
                    Some((sub, campaign)) => {
                        targets.push((sub, Some(campaign), Action::Complaint { reason }))
                    }
                    None => {
                        for r in &report.recipients {
                            if let Some(addr) = &r.address
                                && let Some(sub) = self.store.subscriber_id(addr).await?
                            {
                                targets.push((
                                    sub,
                                    None,
                                    Action::Complaint {
                                        reason: reason.clone(),
                                    },
                                ));
                                break;
                            }
                        }
                    }
                }
            }
            Kind::AutoReply | Kind::None => {}
        }
        if targets.is_empty() {
            self.store.inbound_record(&hash, &kind, now).await?;
            let what = match report.kind {
                Kind::AutoReply => "auto-reply, ignored".to_string(),
                Kind::None => match &report.feedback_type {
                    Some(t) => format!("feedback report ({t}), logged only"),
                    None => "not a bounce, ignored".to_string(),
                },
                Kind::Bounce if report.bounced().next().is_none() => {
                    "delay notice, nothing to do".to_string()
                }
                _ => format!("{kind}: matches no subscriber"),
            };
            return Ok(what);
        }
        let mut lines = Vec::new();
        for (i, (sub, campaign, action)) in targets.iter().enumerate() {
            let key = if i == 0 {
                hash.clone()
            } else {
                format!("{hash}:{i}")
            };
            let applied = self
                .store
                .apply_inbound(&key, *sub, *campaign, action, self.soft, now)
                .await?;
            let what = match action {
                Action::Hard { .. } => "hard bounce",
                Action::Soft { .. } => "soft bounce",
                Action::Complaint { .. } => "complaint",
                Action::Unsubscribe { .. } => "unsubscribe by mail",
            };
            let result = match applied {
                None => "already processed".to_string(),
                Some(Applied::Status(s)) => format!("subscriber {sub} is now {s}"),
                Some(Applied::Unsubscribed) => format!("subscriber {sub} unsubscribed"),
                Some(Applied::Recorded) => format!("recorded for subscriber {sub}"),
            };
            lines.push(format!("{what}: {result}"));
        }
        Ok(lines.join("; "))
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
                Ok(raw) => self.process(&raw, None).await,
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

//! A campaign file frozen and sent, as `send` and `quickstart` both do it
//! (`send_file`): compiled and checked against the database, then frozen
//! as a new campaign (asking first), or the campaign frozen from it before
//! resumed, moved (`--at`), replaced (`--replace`), sent to who joined
//! since (`--only-new`) or sent again as a copy (`--again`); a welcome mail
//! is frozen as its list's. The run itself is `running::run_one`. Not a
//! command: commands import this module, never each other.

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use sha2::{Digest, Sha256};

use super::compile::{Built, campaign_lists, check_placeholders, compile_file, format_warning};
use super::running::{Report, run_one};
use super::setup::{fmt_time, settings, stop_on_signal};
use crate::campaign::Trigger;
use crate::cli::SendArgs;
use crate::config::Config;
use crate::dispatch::{Frozen, FrozenList, Settings};
use crate::render::Compiled;
use crate::store::deliveries::{CampaignRow, CampaignStatus, NewCampaign, Refreeze, Replace};
use crate::store::welcome::FreezeWelcome;
use crate::store::{List, Store};

/// Asks `question` on the terminal; `--yes` answers yes, and without a
/// terminal the command refuses with `refusal` (one line, naming --yes).
fn confirm(yes: bool, question: &str, refusal: &str) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("{refusal}");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// The SHA-256 of the campaign file, hex: tells whether it changed since
/// it was frozen.
fn source_hash(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read(path)?;
    Ok(Sha256::digest(&text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Who `lists` (slugs: `names`) reach now, in words: "300 recipients of
/// news", or "500 people on ebulletin, partners (100 on more than one,
/// mailed once)".
async fn audience_of(store: &Store, lists: &[i64], names: &str) -> Result<String> {
    if let [one] = lists[..] {
        let n = store.audience_count(one).await?;
        return Ok(format!("{n} recipients of {names}"));
    }
    let a = store.audience_of_lists(lists).await?;
    Ok(format!(
        "{} people on {names} ({} on more than one, mailed once)",
        a.people, a.on_several
    ))
}

/// What `send` works with once the file is compiled and the store open.
struct Plan<'a> {
    store: &'a Store,
    args: &'a SendArgs,
    built: &'a Built,
    file: String,
    settings: &'a Settings,
    now: i64,
    /// `--at`, else the file's `send_at`, else now.
    send_at: i64,
    /// `send_at` came from `--at`, or from the file and is still ahead.
    time_given: bool,
    /// The campaign's lists, in front matter order.
    list_ids: Vec<i64>,
    list_names: Vec<String>,
    source_hash: String,
    /// The `Frozen` content as stored.
    frozen: String,
}

/// What `send` does next, once it has looked at the frozen campaign.
enum Step {
    /// Run (or report as scheduled) this campaign; `moved`: its time or
    /// content was just changed by this command.
    Run(Box<CampaignRow>, bool),
    /// Freeze a new campaign under this slug (`--again`: `NAME-2`).
    Freeze(String),
    /// Nothing to do (declined, or nothing new); already printed.
    Done,
}

/// Freezes the campaign file `args.campaign` and sends it, or finds the
/// campaign frozen from it and resumes, moves, replaces or copies it, as
/// the flags say: `bulletin send`, and `quickstart`'s example.
pub(super) fn send_file(config: &Config, args: &SendArgs) -> Result<ExitCode> {
    if !args.campaign.exists() {
        name_not_file(config, &args.campaign)?;
    }
    let built = compile_file(config, &args.campaign)?;
    let file = args.campaign.display().to_string();
    for w in &built.compiled.warnings {
        eprintln!("{}", format_warning(&file, w));
    }
    let at = match (&args.at, built.campaign.send_at) {
        (Some(at), _) => Some({
            let now = chrono::DateTime::from_timestamp(crate::store::now(), 0).unwrap_or_default();
            crate::campaign::parse_at(at, now).map_err(|m| anyhow!("--at: {m}"))?
        }),
        (None, from_file) => from_file,
    };
    let source_hash = source_hash(&args.campaign)?;
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let lists = campaign_lists(&store, &built.campaign).await?;
        check_placeholders(&store, &built, &lists).await?;
        let settings = settings(config, &store).await?;
        let now = crate::store::now();
        let frozen = frozen(config, &built, &lists)?;
        let plan = Plan {
            store: &store,
            args,
            built: &built,
            file,
            settings: &settings,
            now,
            send_at: at.map_or(now, |t| t.timestamp()),
            // A file's `send_at` already past names no time to keep to.
            time_given: args.at.is_some()
                || built.campaign.send_at.is_some_and(|t| t.timestamp() > now),
            list_ids: lists.iter().map(|l| l.id).collect(),
            list_names: lists.iter().map(|l| l.name.clone()).collect(),
            source_hash,
            frozen,
        };
        plan.run().await
    })
}

/// The campaign as it is frozen (`Frozen`, as JSON): what the dispatcher
/// sends from, whatever happens to the file later.
fn frozen(config: &Config, built: &Built, lists: &[List]) -> Result<String> {
    Ok(serde_json::to_string(&Frozen {
        compiled: built.compiled.clone(),
        from: built
            .campaign
            .from
            .clone()
            .unwrap_or_else(|| config.sender.from.clone()),
        reply_to: config.sender.reply_to.clone(),
        list_slug: lists[0].slug.clone(),
        list_name: lists[0].name.clone(),
        lists: lists
            .iter()
            .map(|l| FrozenList {
                id: l.id,
                slug: l.slug.clone(),
                name: l.name.clone(),
            })
            .collect(),
        archive: built.campaign.archive,
        resend_until: built.campaign.resend_until.map(|t| t.timestamp()),
    })?)
}

impl Plan<'_> {
    /// The campaign to freeze from the compiled file, under `slug`, due at
    /// `send_at`.
    fn new_campaign<'a>(&'a self, slug: &'a str, send_at: i64) -> NewCampaign<'a> {
        NewCampaign {
            slug,
            lists: &self.list_ids,
            subject: &self.built.campaign.subject,
            compiled: &self.frozen,
            source_hash: &self.source_hash,
            send_at,
            now: self.now,
        }
    }

    /// The campaign's list slugs, for messages: `news`, `ebulletin, partners`.
    fn lists_text(&self) -> String {
        self.built.campaign.lists.join(", ")
    }

    /// The frozen campaign's list slugs, for messages (an edited file may
    /// name others).
    async fn frozen_lists_text(&self, c: &CampaignRow) -> Result<String> {
        Ok(self.store.campaign_list_slugs(c.id).await?.join(", "))
    }

    /// Who the file's lists reach now, in words ([`audience_of`]).
    async fn audience(&self) -> Result<String> {
        audience_of(self.store, &self.list_ids, &self.lists_text()).await
    }

    /// Looks at the frozen campaign of this name (never freezes one twice),
    /// then runs, schedules or freezes as the flags say.
    async fn run(&self) -> Result<ExitCode> {
        let args = self.args;
        let slug = &self.built.campaign.slug;
        if self.built.campaign.trigger == Some(Trigger::Welcome) {
            return self.welcome().await;
        }
        let step = match self.store.campaign_by_slug(slug).await? {
            Some(c) if c.welcome => bail!(
                "campaign {slug} is a welcome mail, but {} no longer says trigger = \"welcome\"; put the line back, or save the campaign under a new file name",
                self.file
            ),
            None if args.replace || args.only_new => bail!(
                "campaign {slug} was never sent, so there is nothing to {}; send it without {}",
                if args.replace {
                    "replace"
                } else {
                    "send to new subscribers"
                },
                if args.replace {
                    "--replace"
                } else {
                    "--only-new"
                }
            ),
            None => Step::Freeze(slug.clone()),
            Some(c) if args.replace => self.replace(c).await?,
            Some(c) if args.only_new => self.only_new(self.latest_copy(c).await?).await?,
            Some(c) if c.status.is_over() => self.again(c).await?,
            Some(c) => self.resume(c).await?,
        };
        let (campaign, moved) = match step {
            Step::Done => return Ok(ExitCode::SUCCESS),
            Step::Run(c, moved) => (*c, moved),
            Step::Freeze(slug) => match self.freeze(&slug).await? {
                Some(c) => (c, false),
                None => return Ok(ExitCode::SUCCESS),
            },
        };
        if campaign.status == CampaignStatus::Cancelled {
            bail!(
                "campaign {} was cancelled; nothing more is sent",
                campaign.slug
            );
        }
        if campaign.status == CampaignStatus::Scheduled && campaign.send_at > self.now {
            // The frozen lists, which an edited file may no longer name.
            let lists = self.store.campaign_lists(campaign.id).await?;
            let names = self.store.campaign_list_slugs(campaign.id).await?;
            println!(
                "{}: scheduled for {} to {}; `bulletin dispatch` (cron) sends it then",
                campaign.slug,
                fmt_time(campaign.send_at),
                audience_of(self.store, &lists, &names.join(", ")).await?
            );
            return Ok(ExitCode::SUCCESS);
        }
        super::setup::check_transport_kind(self.store, &campaign, self.settings).await?;
        if campaign.status == CampaignStatus::Held || moved {
            self.store
                .set_campaign_status(campaign.id, CampaignStatus::Sending, self.now)
                .await?;
        }
        let campaign = self
            .store
            .campaign_by_id(campaign.id)
            .await?
            .expect("exists");
        let show_bar = std::io::stderr().is_terminal();
        let summary = run_one(
            self.store,
            &campaign,
            self.settings,
            Report::Send { show_bar },
            stop_on_signal(),
        )
        .await?;
        Ok(match summary {
            Some(s) if s.failed > 0 || s.unknown > 0 || s.interrupted => ExitCode::from(1),
            Some(_) => ExitCode::SUCCESS,
            None => ExitCode::from(1),
        })
    }

    /// A file with `trigger = "welcome"`: frozen as its list's welcome
    /// mail (mailing nobody now), replaced, or reported as it stands.
    async fn welcome(&self) -> Result<ExitCode> {
        let args = self.args;
        let (slug, list) = (&self.built.campaign.slug, &self.built.campaign.lists[0]);
        let flag = [
            (args.at.is_some(), "--at"),
            (args.only_new, "--only-new"),
            (args.again, "--again"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag));
        if let Some(flag) = flag {
            bail!(
                "{flag}: {} is a welcome mail (trigger = \"welcome\"): each person confirmed on {list} gets it once, when confirmed; send it without {flag}",
                self.file
            );
        }
        match self.store.campaign_by_slug(slug).await? {
            None if args.replace => bail!(
                "campaign {slug} was never sent, so there is nothing to replace; send it without --replace"
            ),
            None => self.freeze_welcome(slug).await,
            Some(c) if !c.welcome => bail!(
                "campaign {slug} was sent as an ordinary campaign, not a welcome mail; save the welcome mail under a new file name"
            ),
            Some(c) if c.status == CampaignStatus::Cancelled => bail!(
                "welcome mail {slug} was cancelled; nobody gets it any more. To welcome people again, save the file under a new name and send that"
            ),
            Some(c) if args.replace => self.replace_welcome(c).await,
            Some(c) => {
                if c.source_hash != self.source_hash {
                    eprintln!(
                        "bulletin: note: {} changed since {slug} was frozen; people get the version frozen then (`bulletin send {} --replace` refreezes it)",
                        self.file, self.file
                    );
                }
                println!(
                    "{slug}: already the welcome mail of {list}: each person confirmed on it gets this once ({} so far); `bulletin dispatch` (cron) sends it, `bulletin cancel {slug}` stops it",
                    self.store.received_count(c.id).await?
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }

    /// Asks, then freezes the file as its list's welcome mail; refused when
    /// the list has an active one.
    async fn freeze_welcome(&self, slug: &str) -> Result<ExitCode> {
        let (built, file) = (self.built, &self.file);
        let list = &built.campaign.lists[0];
        let question = format!(
            "Make \"{}\" the welcome mail of list {list} ({})?\n  From now on, each person confirmed on {list} gets this once, via {}; nobody already on the list gets it.",
            built.campaign.subject,
            self.list_names[0],
            self.settings.transport.describe()
        );
        let refusal = format!(
            "not sending without confirmation: add --yes (would make {slug:?} the welcome mail of {list}: from now on, each person confirmed on {list} gets this once)"
        );
        if !confirm(self.args.yes, &question, &refusal)? {
            println!("not sent");
            return Ok(ExitCode::SUCCESS);
        }
        let new = self.new_campaign(slug, self.now);
        let frozen = self.store.freeze_welcome(&new).await.map_err(|e| {
            if e.is_duplicate() {
                anyhow!("campaign {slug} was frozen a moment ago by another `bulletin send`; `bulletin status {slug}` shows it")
            } else {
                e.into()
            }
        })?;
        match frozen {
            FreezeWelcome::Busy(active) => bail!(
                "list {list} already has a welcome mail, {active} (one per list); `bulletin cancel {active}` stops it, then send {file} again"
            ),
            FreezeWelcome::Frozen(_) => println!(
                "{slug}: from now on, each person confirmed on {list} gets this once (welcome mail; nobody already on the list gets it); `bulletin dispatch` (cron) sends it, `bulletin cancel {slug}` stops it"
            ),
        }
        Ok(ExitCode::SUCCESS)
    }

    /// What `--replace` writes over frozen campaign `id`: this file's
    /// lists, subject and compiled content, to go out at `send_at`.
    fn refreeze(&self, id: i64, send_at: i64) -> Refreeze<'_> {
        Refreeze {
            id,
            lists: &self.list_ids,
            subject: &self.built.campaign.subject,
            compiled: &self.frozen,
            source_hash: &self.source_hash,
            send_at,
            now: self.now,
        }
    }

    /// `--replace` of a welcome mail: new subject and content for whoever
    /// is confirmed next, while no welcome message went out yet.
    async fn replace_welcome(&self, c: CampaignRow) -> Result<ExitCode> {
        let (slug, list) = (&c.slug, &self.built.campaign.lists[0]);
        if c.list_id != self.list_ids[0] {
            bail!(
                "welcome mail {slug} belongs to another list than {list}; `bulletin cancel {slug}` stops it, then send the file for {list} under a new name"
            );
        }
        let replaced = self
            .store
            .replace_welcome(&self.refreeze(c.id, c.send_at))
            .await?;
        if let Replace::Refused(_, attempted) = replaced {
            bail!(
                "welcome mail {slug} cannot be replaced: {attempted} welcome messages already went out; `bulletin cancel {slug}` stops it, then send the new version under a new file name"
            );
        }
        println!(
            "{slug}: replaced from {} (subject \"{}\"); each person confirmed on {list} gets this version once",
            self.file, self.built.campaign.subject
        );
        Ok(ExitCode::SUCCESS)
    }

    /// `--replace`: refreezes from the file, asking first when the new time
    /// is not ahead; refused once a message went out. A campaign scheduled
    /// for later keeps its time unless `--at` or the file gives one: a
    /// fixed typo is no reason to mail everyone before the hour chosen.
    async fn replace(&self, c: CampaignRow) -> Result<Step> {
        let send_at = match c.status {
            CampaignStatus::Scheduled if !self.time_given && c.send_at > self.now => c.send_at,
            _ => self.send_at,
        };
        let (slug, at) = (&c.slug, fmt_time(send_at));
        if send_at <= self.now
            && !confirm(
                self.args.yes,
                &format!(
                    "{slug}: the new time {at} is not in the future; send the replaced campaign now?"
                ),
                &format!(
                    "{slug}: not replaced: the new time {at} is not in the future; add --yes to send it now, or give --at TIME"
                ),
            )?
        {
            println!("not replaced");
            return Ok(Step::Done);
        }
        let replaced = self
            .store
            .replace_campaign(&self.refreeze(c.id, send_at))
            .await?;
        if let Replace::Refused(status, attempted) = replaced {
            let stop = match status {
                _ if c.mails_newcomers_until(self.now).is_some() => {
                    format!("`bulletin cancel {slug}` stops sending it to people who join, then ")
                }
                CampaignStatus::Finished | CampaignStatus::Cancelled => String::new(),
                _ => format!("`bulletin cancel {slug}` stops it, then "),
            };
            bail!(
                "campaign {slug} cannot be replaced: it is {status} and {attempted} messages already went out; {stop}send the correction under a new file name"
            );
        }
        println!(
            "{slug}: replaced from {} (subject \"{}\")",
            self.file, self.built.campaign.subject
        );
        let c = self.store.campaign_by_id(c.id).await?.expect("exists");
        Ok(Step::Run(Box::new(c), true))
    }

    /// `--only-new`: the people of the list with no row for it, once.
    async fn only_new(&self, c: CampaignRow) -> Result<Step> {
        let (slug, list) = (&c.slug, &self.frozen_lists_text(&c).await?);
        match c.status {
            CampaignStatus::Cancelled => {
                let too = match self.store.received_count(c.id).await? {
                    0 => String::new(),
                    n => format!(" (the {n} who got it too)"),
                };
                bail!(
                    "campaign {slug} was cancelled, so it goes to nobody new; `bulletin send {} --again` sends it to everyone on {list} as a new campaign{too}",
                    self.file
                )
            }
            CampaignStatus::Scheduled | CampaignStatus::Held => bail!(
                "campaign {slug} has not been sent yet ({}, due {}); it goes to everyone on its list, new subscribers included, without --only-new",
                c.status,
                fmt_time(c.send_at)
            ),
            CampaignStatus::Sending | CampaignStatus::Finished => {}
        }
        let first_time = self.store.first_time_count(c.id).await?;
        if first_time == 0 {
            println!("{slug}: every subscriber of {list} already has it; nothing to send");
            return Ok(Step::Done);
        }
        let people = subscribers(first_time);
        // What goes out is the frozen campaign, to its frozen lists.
        let frozen: Frozen = serde_json::from_str(&c.compiled)?;
        let lists = self.store.campaign_lists(c.id).await?;
        let missing = self
            .missing_values(&frozen.compiled, &lists, Some(c.id))
            .await?;
        let question = self.with_missing(
            only_new_question(
                &c.subject,
                first_time,
                list,
                &self.settings.transport.describe(),
            ),
            &missing,
        );
        let refusal = format!(
            "not sending without confirmation: add --yes (would send {slug:?} to {people} of {list} for the first time; nobody twice)"
        );
        if !confirm(self.args.yes, &question, &refusal)? {
            println!("not sent");
            return Ok(Step::Done);
        }
        self.store
            .set_campaign_status(c.id, CampaignStatus::Sending, self.now)
            .await?;
        let c = self.store.campaign_by_id(c.id).await?.expect("exists");
        Ok(Step::Run(Box::new(c), false))
    }

    /// A sent or cancelled campaign: refused, unless `--again` (a new
    /// campaign `NAME-N` to everyone, after saying how many have it).
    async fn again(&self, c: CampaignRow) -> Result<Step> {
        let slug = &c.slug;
        if !self.args.again {
            let latest = self.latest_copy(c.clone()).await?;
            let file = &self.file;
            let copy = if latest.id == c.id {
                String::new()
            } else {
                format!(" (latest copy: {})", latest.slug)
            };
            let only_new = match latest.status {
                CampaignStatus::Cancelled => String::new(),
                _ => format!(
                    "`bulletin send {file} --only-new` sends {} to who joined since; ",
                    latest.slug
                ),
            };
            bail!(
                "campaign {slug} was already {} ({}){copy}; {only_new}`bulletin send {file} --again` sends it to everyone once more as a new campaign",
                if c.status == CampaignStatus::Cancelled {
                    "cancelled"
                } else {
                    "sent"
                },
                c.finished_at.map_or("earlier".into(), fmt_time)
            );
        }
        let received = self.store.received_count(c.id).await?;
        let missing = self
            .missing_values(&self.built.compiled, &self.list_ids, None)
            .await?;
        let question = self.with_missing(
            format!(
                "{slug} already went to {received} people. Send it AGAIN to everyone on {} (they get it a second time)?",
                self.frozen_lists_text(&c).await?
            ),
            &missing,
        );
        let refusal = format!(
            "not sending again without confirmation: add --yes ({slug} already went to {received} people, who would get it a second time)"
        );
        if !confirm(self.args.yes, &question, &refusal)? {
            println!("not sent");
            return Ok(Step::Done);
        }
        let mut n = 2;
        while self
            .store
            .campaign_by_slug(&format!("{slug}-{n}"))
            .await?
            .is_some()
        {
            n += 1;
        }
        Ok(Step::Freeze(format!("{slug}-{n}")))
    }

    /// The last `--again` copy of `c` (`NAME-2`, `NAME-3`, …), or `c`:
    /// what `--only-new` on the file sends.
    async fn latest_copy(&self, c: CampaignRow) -> Result<CampaignRow> {
        let mut latest = c;
        let base = latest.slug.clone();
        let mut n = 2;
        while let Some(copy) = self.store.campaign_by_slug(&format!("{base}-{n}")).await? {
            latest = copy;
            n += 1;
        }
        Ok(latest)
    }

    /// A queued or half-sent campaign: resumed as frozen; `--at` moves a
    /// scheduled or held one (asking first when the time is not ahead).
    async fn resume(&self, c: CampaignRow) -> Result<Step> {
        let (slug, file) = (&c.slug, &self.file);
        if c.source_hash != self.source_hash {
            eprintln!(
                "bulletin: note: {file} changed since {slug} was queued; sending the version frozen then (`bulletin send {file} --replace` refreezes it)"
            );
        }
        let movable = matches!(c.status, CampaignStatus::Scheduled | CampaignStatus::Held);
        if self.args.at.is_none() || !movable || c.send_at == self.send_at {
            return Ok(Step::Run(Box::new(c), false));
        }
        let at = fmt_time(self.send_at);
        if self.send_at <= self.now
            && !confirm(
                self.args.yes,
                &format!("{slug}: {at} is not in the future; send it now?"),
                &format!("{slug}: not moved: {at} is not in the future; add --yes to send it now"),
            )?
        {
            println!("not moved; still scheduled for {}", fmt_time(c.send_at));
            return Ok(Step::Done);
        }
        self.store.set_send_at(c.id, self.send_at).await?;
        if c.status == CampaignStatus::Held && self.send_at > self.now {
            // A new time ahead makes a held campaign scheduled again.
            self.store
                .set_campaign_status(c.id, CampaignStatus::Scheduled, self.now)
                .await?;
        }
        println!("{slug}: moved from {} to {at}", fmt_time(c.send_at));
        let c = self.store.campaign_by_id(c.id).await?.expect("exists");
        Ok(Step::Run(Box::new(c), true))
    }

    /// The prompt's lines for the placeholders without fallback in
    /// `compiled` that some of the people it would mail have no value for:
    /// everyone on `lists`, or with `newcomers_of` only who has no row for
    /// that campaign yet (`--only-new`), counted out of as many.
    async fn missing_values(
        &self,
        compiled: &Compiled,
        lists: &[i64],
        newcomers_of: Option<i64>,
    ) -> Result<Vec<String>> {
        let bare: Vec<String> = crate::render::placeholders::keys(compiled)
            .into_iter()
            .filter(|u| u.bare)
            .map(|u| u.key)
            .collect();
        if bare.is_empty() {
            return Ok(Vec::new());
        }
        let (missing, recipients) = match newcomers_of {
            None => (
                self.store.missing_values(lists, &bare).await?,
                self.store.audience_of_lists(lists).await?.people,
            ),
            Some(id) => (
                self.store
                    .missing_values_of_newcomers(id, lists, &bare)
                    .await?,
                self.store.first_time_count(id).await?,
            ),
        };
        Ok(missing
            .iter()
            .map(|(key, n)| crate::render::placeholders::missing_line(key, *n, recipients))
            .collect())
    }

    /// `question` with the `missing` lines under it; with `--yes`, which
    /// asks nothing, they go to stderr as notes, so the log still has them.
    fn with_missing(&self, question: String, missing: &[String]) -> String {
        if self.args.yes {
            for line in missing {
                eprintln!("bulletin: note: {line}");
            }
        }
        question
            + &missing
                .iter()
                .map(|l| format!("\n  {l}"))
                .collect::<String>()
    }

    /// Asks, then freezes a new campaign; `None` when the answer is no.
    async fn freeze(&self, slug: &str) -> Result<Option<CampaignRow>> {
        let built = self.built;
        if !self.args.again {
            let recipients = self.audience().await?;
            let when = if self.send_at > self.now {
                format!("at {}", fmt_time(self.send_at))
            } else {
                "now".into()
            };
            let names = self.list_names.join(", ");
            let missing = self
                .missing_values(&built.compiled, &self.list_ids, None)
                .await?;
            let question = self.with_missing(
                format!(
                    "Send \"{}\"\n  to {recipients} ({names}) {when}\n  via {}?",
                    built.campaign.subject,
                    self.settings.transport.describe(),
                ),
                &missing,
            );
            let refusal = format!(
                "not sending without confirmation: add --yes (would send {slug:?} to {recipients})"
            );
            if !confirm(self.args.yes, &question, &refusal)? {
                println!("not sent");
                return Ok(None);
            }
        }
        let new = self.new_campaign(slug, self.send_at);
        let id = self.store.insert_campaign(&new).await.map_err(|e| {
            if e.is_duplicate() {
                anyhow!(
                    "campaign {slug} is already being sent: another `bulletin send` froze it a moment ago; `bulletin status {slug}` shows its progress"
                )
            } else {
                e.into()
            }
        })?;
        Ok(self.store.campaign_by_id(id).await?)
    }
}

/// "1 subscriber", "3 subscribers".
fn subscribers(n: i64) -> String {
    match n {
        1 => "1 subscriber".into(),
        n => format!("{n} subscribers"),
    }
}

/// What `--only-new` asks before it mails the `n` people of `list` who
/// have no row for the campaign yet.
fn only_new_question(subject: &str, n: i64, list: &str, via: &str) -> String {
    let have = if n == 1 { "has" } else { "have" };
    format!(
        "Send \"{subject}\" to the {} of {list} who {have} not had it?\n  Each gets it for the first time; nobody gets it twice. Via {via}?",
        subscribers(n)
    )
}

/// `send NAME` where NAME is a campaign (an `--again` copy, say), not a
/// file: an error naming the command that works. Nothing when no campaign
/// has that name (reading the file then says what is wrong).
fn name_not_file(config: &Config, path: &std::path::Path) -> Result<()> {
    let name = path.to_string_lossy().into_owned();
    let found = super::runtime()?.block_on(async {
        let Ok(store) = super::open_store(config).await else {
            return Ok::<_, anyhow::Error>(false);
        };
        Ok(store.campaign_by_slug(&name).await?.is_some())
    })?;
    if !found {
        return Ok(());
    }
    let original = match name.rsplit_once('-') {
        Some((base, n)) if n.parse::<u32>().is_ok_and(|n| n >= 2) => base,
        _ => name.as_str(),
    };
    bail!(
        "{name} is a campaign, not a file: `send` reads the campaign's file; `bulletin send {original}.md --only-new` (in its folder) sends the latest copy of {original} to who joined since, and `bulletin status {name}` shows it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_only_new_question_agrees_with_its_count() {
        assert_eq!(
            only_new_question("News", 1, "ebulletin", "SMTP"),
            "Send \"News\" to the 1 subscriber of ebulletin who has not had it?\n  \
             Each gets it for the first time; nobody gets it twice. Via SMTP?"
        );
        assert!(
            only_new_question("News", 3, "ebulletin", "SMTP").starts_with(
                "Send \"News\" to the 3 subscribers of ebulletin who have not had it?"
            )
        );
    }
}

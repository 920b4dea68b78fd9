//! `bulletin send`, `cancel`, `dispatch`, `status` and `test`: freezing
//! campaigns, running them (through `running`), and reporting.

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Result, anyhow, bail};
use sha2::{Digest, Sha256};

use super::compile::{
    Built, SAMPLE_NAME, campaign_lists, check_placeholders, compile_file, format_warning,
};
use super::running::{Report, run_one};
use super::setup::{campaign_name, find_campaign, fmt_time, iso_time, settings, stop_on_signal};
use crate::campaign::Trigger;
use crate::cli::{CancelArgs, Format, SendArgs, StatusArgs, TestArgs};
use crate::compose;
use crate::config::Config;
use crate::dispatch::transport::Transport;
use crate::dispatch::{Frozen, FrozenList, Settings};
use crate::render::Recipient;
use crate::store::Store;
use crate::store::deliveries::{
    CampaignRow, CampaignStatus, Cancel, NewCampaign, Refreeze, Replace,
};
use crate::store::welcome::FreezeWelcome;

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

pub(crate) fn send(config: &Config, args: &SendArgs) -> Result<ExitCode> {
    if !args.campaign.exists() {
        name_not_file(config, &args.campaign)?;
    }
    let built = compile_file(config, &args.campaign)?;
    let file = args.campaign.display().to_string();
    for w in &built.compiled.warnings {
        eprintln!("{}", format_warning(&file, w));
    }
    let at = match (&args.at, built.campaign.send_at) {
        (Some(at), _) => Some(crate::campaign::parse_time(at).map_err(|m| anyhow!("--at: {m}"))?),
        (None, from_file) => from_file,
    };
    let source_hash = source_hash(&args.campaign)?;
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let lists = campaign_lists(&store, &built.campaign).await?;
        check_placeholders(&store, &built, &lists).await?;
        let settings = settings(config, &store).await?;
        let now = crate::store::now();
        let frozen = serde_json::to_string(&Frozen {
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
        })?;
        let plan = Plan {
            store: &store,
            args,
            built: &built,
            file,
            settings: &settings,
            now,
            send_at: at.map_or(now, |t| t.timestamp()),
            list_ids: lists.iter().map(|l| l.id).collect(),
            list_names: lists.iter().map(|l| l.name.clone()).collect(),
            source_hash,
            frozen,
        };
        plan.run().await
    })
}

impl Plan<'_> {
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
        let new = NewCampaign {
            slug,
            lists: &self.list_ids,
            subject: &built.campaign.subject,
            compiled: &self.frozen,
            source_hash: &self.source_hash,
            send_at: self.now,
            now: self.now,
        };
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
    /// is not ahead; refused once a message went out.
    async fn replace(&self, c: CampaignRow) -> Result<Step> {
        let (slug, at) = (&c.slug, fmt_time(self.send_at));
        if self.send_at <= self.now
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
            .replace_campaign(&self.refreeze(c.id, self.send_at))
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
            CampaignStatus::Cancelled => bail!(
                "campaign {slug} was cancelled, so it goes to nobody new; `bulletin send {} --again` sends it to everyone on {list} as a new campaign (the {} who got it too)",
                self.file,
                self.store.received_count(c.id).await?
            ),
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
        let people = match first_time {
            1 => "1 subscriber".to_string(),
            n => format!("{n} subscribers"),
        };
        let question = format!(
            "Send \"{}\" to the {people} of {list} who have not had it?\n  Each gets it for the first time; nobody gets it twice. Via {}?",
            c.subject,
            self.settings.transport.describe()
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
        let question = format!(
            "{slug} already went to {received} people. Send it AGAIN to everyone on {} (they get it a second time)?",
            self.frozen_lists_text(&c).await?
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

    /// The prompt's lines for the placeholders without fallback that some
    /// of the `recipients` have no value for.
    async fn missing_values(&self) -> Result<Vec<String>> {
        let bare: Vec<String> = crate::render::placeholders::keys(&self.built.compiled)
            .into_iter()
            .filter(|u| u.bare)
            .map(|u| u.key)
            .collect();
        if bare.is_empty() {
            return Ok(Vec::new());
        }
        let missing = self.store.missing_values(&self.list_ids, &bare).await?;
        let recipients = self.store.audience_of_lists(&self.list_ids).await?.people;
        Ok(missing
            .iter()
            .map(|(key, n)| crate::render::placeholders::missing_line(key, *n, recipients))
            .collect())
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
            let missing = self.missing_values().await?;
            let question = format!(
                "Send \"{}\"\n  to {recipients} ({names}) {when}\n  via {}?{}",
                built.campaign.subject,
                self.settings.transport.describe(),
                missing
                    .iter()
                    .map(|l| format!("\n  {l}"))
                    .collect::<String>()
            );
            if self.args.yes {
                // Unattended: what the prompt would say still reaches the log.
                for line in &missing {
                    eprintln!("bulletin: note: {line}");
                }
            }
            let refusal = format!(
                "not sending without confirmation: add --yes (would send {slug:?} to {recipients})"
            );
            if !confirm(self.args.yes, &question, &refusal)? {
                println!("not sent");
                return Ok(None);
            }
        }
        let new = NewCampaign {
            slug,
            lists: &self.list_ids,
            subject: &built.campaign.subject,
            compiled: &self.frozen,
            source_hash: &self.source_hash,
            send_at: self.send_at,
            now: self.now,
        };
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

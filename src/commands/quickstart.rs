//! `bulletin quickstart`: the whole pipeline on the embedded defaults, no
//! server needed: the database is created, the example subscribers are
//! imported into the `ebulletin` list, and the example e-bulletin is sent to
//! the local outbox folder (never over SMTP, whatever the configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::SendArgs;
use crate::config::{Config, Source};
use crate::store;

const CAMPAIGN: &str = "campaigns/2026-11-ebulletin.md";
const PEOPLE: &str = "examples/subscribers.csv";
const LIST: &str = "ebulletin";

/// The example files, embedded so that quickstart runs in any folder.
const EXAMPLES: [(&str, &str); 2] = [
    (
        CAMPAIGN,
        include_str!("../../campaigns/2026-11-ebulletin.md"),
    ),
    (PEOPLE, include_str!("../../examples/subscribers.csv")),
];

pub(crate) fn run(config: &Config) -> Result<ExitCode> {
    write_examples()?;
    let mut config = config.clone();
    config.smtp.url = None;
    config.outbox_source = Source::Command("quickstart");
    println!("database: {}", config.db);
    super::runtime()?.block_on(async {
        let store = super::create_store(&config).await?;
        if store.list(LIST).await?.is_none() {
            store
                .create_list(
                    LIST,
                    "GAATW e-bulletin",
                    "News and events from the Global Alliance Against Traffic in Women",
                    false,
                    true,
                    store::now(),
                )
                .await?;
            println!("created list {LIST}");
        }
        super::import_file::import(
            &store,
            &config,
            PEOPLE.as_ref(),
            LIST,
            crate::cli::ImportFrom::Auto,
            false,
            false,
        )
        .await?;
        anyhow::Ok(())
    })?;
    let slug = "2026-11-ebulletin";
    let already = super::runtime()?.block_on(async {
        let store = super::open_store(&config).await?;
        anyhow::Ok(
            store
                .campaign_by_slug(slug)
                .await?
                .is_some_and(|c| c.status == crate::store::deliveries::CampaignStatus::Finished),
        )
    })?;
    if already {
        println!(
            "{slug} was already written to {} by an earlier quickstart",
            super::setup::folder(&config.outbox)
        );
        return Ok(ExitCode::SUCCESS);
    }
    super::freeze::send_file(
        &config,
        &SendArgs {
            campaign: PathBuf::from(CAMPAIGN),
            at: None,
            yes: true,
            again: false,
            only_new: false,
            replace: false,
        },
    )
}

/// Writes each example file that is not there yet (never overwriting one:
/// it may be the user's edit), saying so.
fn write_examples() -> Result<()> {
    for (path, text) in EXAMPLES {
        let path = std::path::Path::new(path);
        if path.exists() {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        println!(
            "wrote {} (the example, to edit as you like)",
            path.display()
        );
    }
    Ok(())
}

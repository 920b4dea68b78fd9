//! What `build`, `preview`, `send`, `test` and `doctor` share about a
//! campaign file: reading and compiling it (`compile_file`), its lists and
//! placeholders checked against the database, warnings as `file:line`
//! lines, and the sample recipient (`sample`, `sample_eml`) that `build` and
//! `preview` show. Not a command: commands import this module, never each
//! other.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};

use crate::assets::Templates;
use crate::campaign::{self, Campaign};
use crate::compose;
use crate::config::Config;
use crate::links::Urls;
use crate::render::{self, Compiled, Personalised, Recipient, Renderer, Warning, placeholders};
use crate::store::{self, List, Store};

/// A campaign read from disk and compiled.
pub(crate) struct Built {
    pub campaign: Campaign,
    pub compiled: Compiled,
}

/// Reads, parses and compiles a campaign file with the configured templates.
/// Bad input is a `campaign::Error` (file, line, fix) in the chain.
pub(crate) fn compile_file(config: &Config, path: &Path) -> Result<Built> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    compile(config, &path.display().to_string(), &text)
}

/// Parses and compiles the campaign `text` (`name` is the file in errors)
/// with the configured templates.
pub(crate) fn compile(config: &Config, name: &str, text: &str) -> Result<Built> {
    let campaign = campaign::parse(name, text)?;
    let templates = Templates::load(&config.templates)?;
    let renderer = Renderer::new(&templates)?;
    let compiled = renderer.compile(
        &campaign,
        &render::Context {
            organisation: &config.organisation,
            bases: render::urls::Bases {
                assets: config.assets_url.as_ref(),
                pages: config.pages_url.as_ref(),
            },
        },
    )?;
    Ok(Built { campaign, compiled })
}

/// The campaign's lists, in front matter order; a missing one is an error
/// at the `list` line, with "did you mean" when a list's slug is close.
pub(crate) async fn campaign_lists(store: &Store, campaign: &Campaign) -> Result<Vec<List>> {
    let mut lists = Vec::with_capacity(campaign.lists.len());
    for slug in &campaign.lists {
        lists.push(campaign_list(store, campaign, slug).await?);
    }
    Ok(lists)
}

async fn campaign_list(store: &Store, campaign: &Campaign, slug: &str) -> Result<List> {
    match store.require_list(slug).await {
        Ok(list) => Ok(list),
        Err(store::Error::NoList {
            slug,
            suggestion: None,
        }) => Err(campaign
            .error(
                campaign.line_of_key("list"),
                format!(
                    "list {slug:?} does not exist; create it with `bulletin lists add {slug} --name NAME` (`bulletin lists` shows all)"
                ),
            )
            .into()),
        Err(e @ store::Error::NoList { .. }) => Err(campaign
            .error(campaign.line_of_key("list"), e.to_string())
            .into()),
        Err(e) => Err(e.into()),
    }
}

/// Fails on a placeholder without fallback that no subscriber of any of
/// `lists` has a value for (`render::placeholders::check`).
pub(crate) async fn check_placeholders(store: &Store, built: &Built, lists: &[List]) -> Result<()> {
    let ids: Vec<i64> = lists.iter().map(|l| l.id).collect();
    let keys = store.list_keys(&ids).await?;
    let slugs: Vec<&str> = lists.iter().map(|l| l.slug.as_str()).collect();
    placeholders::check(&built.campaign, &built.compiled, &slugs.join(", "), &keys)?;
    Ok(())
}

/// `file:line: warning: message`, or `file: warning: message`.
pub(crate) fn format_warning(file: &str, w: &Warning) -> String {
    match w.line {
        Some(l) => format!("{file}:{l}: warning: {}", w.message),
        None => format!("{file}: warning: {}", w.message),
    }
}

/// The sample recipient of `build` and `preview`.
pub(crate) const SAMPLE_EMAIL: &str = "sample.recipient@example.org";
pub(crate) const SAMPLE_NAME: &str = "Sample Recipient";

/// The links of the sample recipient (subscriber 0 of list 0).
pub(crate) const SAMPLE_UNSUBSCRIBE: crate::links::Unsubscribe = crate::links::Unsubscribe {
    subscriber: 0,
    list: 0,
    campaign: None,
};
pub(crate) const SAMPLE_PREFERENCES: crate::links::Preferences = crate::links::Preferences {
    subscriber: 0,
    via_list: None,
};

/// Personalises for the sample recipient (subscriber 0 of list 0).
pub(crate) fn sample(config: &Config, built: &Built) -> Personalised {
    let signer = super::sample_signer(config);
    let urls = Urls::new(&config.base_url);
    let unsubscribe = urls.unsubscribe(&signer, &SAMPLE_UNSUBSCRIBE);
    let preferences = urls.preferences(&signer, &SAMPLE_PREFERENCES);
    let archive = urls.archive(&built.campaign.slug);
    built.compiled.personalise(&Recipient {
        email: SAMPLE_EMAIL,
        name: SAMPLE_NAME,
        attributes: None,
        unsubscribe_url: &unsubscribe,
        preferences_url: &preferences,
        archive_url: &archive,
    })
}

/// The sample message as the recipient would get it.
pub(crate) fn sample_eml(config: &Config, built: &Built, body: &Personalised) -> Result<Vec<u8>> {
    let signer = super::sample_signer(config);
    let urls = Urls::new(&config.base_url);
    let domain = config.bounce_domain();
    let unsubscribe = urls.unsubscribe(&signer, &SAMPLE_UNSUBSCRIBE);
    let mailto = crate::links::unsubscribe_address(&signer.sign(&SAMPLE_UNSUBSCRIBE), &domain);
    let bounce =
        crate::links::verp_address(&signer.sign(&crate::links::Bounce { delivery: 0 }), &domain);
    let message_id = format!("{}.sample@{}", built.campaign.slug, domain);
    let list_id = compose::list_id(&built.campaign.lists[0], &built.campaign.lists[0], &domain);
    let from = built
        .campaign
        .from
        .as_deref()
        .unwrap_or(&config.sender.from);
    let headers = compose::Headers {
        from,
        reply_to: config.sender.reply_to.as_deref(),
        to_email: SAMPLE_EMAIL,
        to_name: SAMPLE_NAME,
        // A fixed date keeps the sample reproducible.
        date: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_547_200),
        message_id: &message_id,
        list_id: Some(&list_id),
        unsubscribe_url: Some(&unsubscribe),
        unsubscribe_mailto: Some(&mailto),
        return_path: Some(&bounce),
        test: false,
        feedback_id: None,
    };
    Ok(compose::message(&headers, body)?.formatted())
}

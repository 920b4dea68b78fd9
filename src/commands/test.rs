//! `bulletin test`: send a test copy of a campaign file to each address
//! given, filled with the sample recipient or a subscriber's data (`--as`);
//! not logged as a delivery, its links signed for nobody.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Result, anyhow};

use super::compile::{SAMPLE_NAME, compile_file, format_warning};
use super::setup::{settings, transport_failure};
use crate::cli::TestArgs;
use crate::compose;
use crate::config::Config;
use crate::dispatch::Settings;
use crate::dispatch::transport::Transport;
use crate::render::Recipient;
use crate::store::Store;

/// `bulletin test FILE --to ADDR`: one test copy to each address, sent or
/// written to the outbox, each reported on its own line.
pub(crate) fn run(config: &Config, args: &TestArgs) -> Result<ExitCode> {
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
                .map_err(|e| {
                    transport_failure(e, &settings.transport, &settings.transport_source)
                        .context(format!("test copy to {to}"))
                })?;
            let filled = match &args.as_subscriber {
                Some(addr) => format!(" (filled as {addr})"),
                None => String::new(),
            };
            match &settings.transport {
                // The reply names the file: "written to outbox/test-…eml".
                Transport::Outbox(_) => println!(
                    "test copy of {}{filled} to {to}: {reply}",
                    built.campaign.slug
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

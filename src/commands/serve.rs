//! `bulletin serve`: the subscriber pages over HTTP until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};

use crate::assets::Templates;
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::dispatch::Mailer;
use crate::links::Urls;
use crate::web::{self, AppState, Pages};

pub(crate) fn run(config: &Config, args: &ServeArgs) -> Result<ExitCode> {
    let listen = args.listen.clone().unwrap_or_else(|| config.listen.clone());
    let templates = Templates::load(&config.templates)?;
    let pages = Pages::new(&templates, &config.organisation).map_err(|e| anyhow!(e))?;
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let transport = super::setup::transport(config)?;
        let signer = super::setup::signer(config, &store, &transport).await?;
        let mailer =
            Mailer::new(transport, &config.bounce_domain()).with_dkim(super::setup::dkim(config)?);
        let webhooks = webhooks(config)?;
        let enabled = webhooks.enabled();
        let state = AppState::new(
            store,
            signer,
            Urls::new(&config.base_url),
            pages,
            Some(mailer),
            config.sender.from.clone(),
        )
        .with_webhooks(webhooks);
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listen on {listen}"))?;
        println!(
            "serving on http://{} (links use {})",
            listener.local_addr()?,
            config.base_url
        );
        if !enabled.is_empty() {
            println!("webhooks on: /webhooks/{}", enabled.join(", /webhooks/"));
        }
        let limits = web::Limits {
            header_timeout: Duration::from_secs(config.serve.header_timeout_secs),
            idle_timeout: Duration::from_secs(config.serve.idle_timeout_secs),
            max_connections: config.serve.max_connections,
        };
        web::serve_with(listener, state, limits, super::setup::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The `[webhooks.*]` sections as the web layer takes them; a section whose
/// secret is missing from the environment is an error naming both.
fn webhooks(config: &Config) -> Result<web::webhooks::Settings> {
    let file = config
        .file
        .as_ref()
        .map_or("bulletin.toml".into(), |f| f.display().to_string());
    let hooks = &config.webhooks;
    let mut settings = web::webhooks::Settings::new(crate::store::SoftRule::from_settings(
        config.bounces.soft_limit,
        config.bounces.soft_window_days,
    ));
    if let Some(postmark) = &hooks.postmark {
        let password = config.postmark_password.as_deref().ok_or_else(|| {
            anyhow!("[webhooks.postmark] in {file} needs BULLETIN_POSTMARK_PASSWORD (the basic-auth password set at Postmark)")
        })?;
        settings = settings.postmark(&postmark.user, password);
    }
    if let Some(mailgun) = &hooks.mailgun {
        let key = config.mailgun_signing_key.as_deref().ok_or_else(|| {
            anyhow!("[webhooks.mailgun] in {file} needs BULLETIN_MAILGUN_SIGNING_KEY (the HTTP webhook signing key Mailgun shows)")
        })?;
        settings = settings.mailgun(key, mailgun.max_age_secs);
    }
    if let Some(sendgrid) = &hooks.sendgrid {
        settings = settings
            .sendgrid(&sendgrid.public_key, sendgrid.max_age_secs)
            .map_err(|e| anyhow!("{file}: {e}"))?;
    }
    if let Some(ses) = &hooks.ses {
        settings = settings.ses(web::webhooks::Ses::new(
            &ses.topic_arn,
            web::webhooks::CertificateCache::new(ses.certificates.clone()),
        ));
    }
    Ok(settings)
}

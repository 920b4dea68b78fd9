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
        let mailer = Mailer::new(transport, &config.bounce_domain());
        let state = AppState::new(
            store,
            signer,
            Urls::new(&config.base_url),
            pages,
            Some(mailer),
            config.sender.from.clone(),
        );
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listen on {listen}"))?;
        println!(
            "serving on http://{} (links use {})",
            listener.local_addr()?,
            config.base_url
        );
        let limits = web::Limits {
            header_timeout: Duration::from_secs(config.serve.header_timeout_secs),
            idle_timeout: Duration::from_secs(config.serve.idle_timeout_secs),
            max_connections: config.serve.max_connections,
        };
        web::serve_with(listener, state, limits, super::setup::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

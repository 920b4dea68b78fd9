//! `bulletin preview`: serve the rendered campaign on loopback and re-render
//! when the campaign file or a template changes.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::assets;
use crate::cli::PreviewArgs;
use crate::config::Config;
use crate::web::preview::{Rendered, Source};

pub(crate) fn run(config: &Config, args: &PreviewArgs) -> Result<ExitCode> {
    let addr: std::net::SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen {}: not an address such as 127.0.0.1:8025",
            args.listen
        )
    })?;
    if !addr.ip().is_loopback() {
        anyhow::bail!("--listen {addr}: preview serves on loopback only (127.0.0.1 or [::1])");
    }
    let config_r = config.clone();
    let path_r = args.campaign.clone();
    let render = move || -> Result<Rendered, String> {
        let built =
            super::compile::compile_file(&config_r, &path_r).map_err(|e| format!("{e:#}"))?;
        let file = path_r.display().to_string();
        let body = super::compile::sample(&config_r, &built);
        Ok(Rendered {
            subject: body.subject,
            html: body.html,
            text: body.text,
            warnings: built
                .compiled
                .warnings
                .iter()
                .map(|w| super::compile::format_warning(&file, w))
                .collect(),
        })
    };
    let templates = config.templates.clone();
    let path_v = args.campaign.clone();
    let version = move || assets::newest_change(&[&path_v], &templates);
    let source = Source {
        render: Arc::new(render),
        version: Arc::new(version),
    };
    let rt = super::runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        println!(
            "previewing {} at http://{}/ (Ctrl-C to stop)",
            args.campaign.display(),
            listener.local_addr()?
        );
        crate::web::preview::serve(listener, source, super::setup::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

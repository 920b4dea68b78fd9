//! `bulletin bounces imap [--once]`: the loop around the `[bounces.imap]`
//! mailbox. Each unseen message goes through [`Ingest::ingest`] (the same
//! parsing, matching and rules as `bounces ingest`); only after its outcome
//! is committed is a report marked seen and moved to the processed folder,
//! and other mail is marked checked and left where it is. Without `--once`
//! it stays connected (IDLE, else polling) and reconnects with backoff;
//! SIGTERM finishes the message in hand.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;

use super::Ingest;
use crate::cli::EX_TEMPFAIL;
use crate::commands::setup;
use crate::config::Config;
use crate::imap::Mailbox;

/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What one pass over the mailbox did.
#[derive(Default)]
struct Pass {
    filed: usize,
    kept: usize,
    failed: usize,
}

pub(super) async fn run(config: &Config, ctx: &Ingest, once: bool) -> Result<ExitCode> {
    let Some(access) = setup::imap_access(config)? else {
        anyhow::bail!(
            "no [bounces.imap] in {}: add url = \"imaps://USER@HOST:993/INBOX\" and set BULLETIN_IMAP_PASSWORD",
            setup::config_file_name(config)
        );
    };
    let setup::ImapAccess {
        url,
        password,
        processed,
        roots,
        poll,
    } = &access;
    let stop = setup::stop_on_signal();
    let open = || Mailbox::open(url, password, processed, roots, setup::IMAP_CONNECT_TIMEOUT);
    if once {
        let mut mailbox = match open().await {
            Ok(m) => m,
            Err(e) if e.is_transient() => {
                eprintln!("bulletin: {e}");
                return Ok(ExitCode::from(EX_TEMPFAIL));
            }
            Err(e) => return Err(e.into()),
        };
        let result = drain(&mut mailbox, ctx, &stop, processed).await;
        mailbox.close().await;
        return match result {
            Ok(pass) => Ok(summary(&pass, &url.mailbox)),
            Err(e) => {
                eprintln!("bulletin: {e}");
                Ok(ExitCode::from(EX_TEMPFAIL))
            }
        };
    }
    let mut backoff = Duration::from_secs(1);
    while !*stop.borrow() {
        let error = match open().await {
            Ok(mut mailbox) => {
                backoff = Duration::from_secs(1);
                match watch_mailbox(&mut mailbox, ctx, &stop, processed, *poll).await {
                    Ok(()) => {
                        mailbox.close().await;
                        break;
                    }
                    Err(e) => e,
                }
            }
            Err(e) if e.is_permanent() => return Err(e.into()),
            Err(e) => e,
        };
        eprintln!("bulletin: {error}; reconnecting in {}s", backoff.as_secs());
        let mut stopped = stop.clone();
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    Ok(ExitCode::SUCCESS)
}

/// Processes what is there, then waits for more, until the stop signal.
async fn watch_mailbox(
    mailbox: &mut Mailbox,
    ctx: &Ingest,
    stop: &watch::Receiver<bool>,
    processed: &str,
    poll: Duration,
) -> crate::imap::Result<()> {
    loop {
        let pass = drain(mailbox, ctx, stop, processed).await?;
        if pass.filed + pass.kept + pass.failed > 0 {
            summary(&pass, "the inbox");
        }
        if *stop.borrow() {
            return Ok(());
        }
        let mut stopped = stop.clone();
        mailbox
            .wait(poll, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await?;
    }
}

/// Takes each unread message in turn: a report is filed once its outcome is
/// committed, other mail is kept; a message that fails stays unread for the
/// next pass. Stops between messages when the stop signal is on.
async fn drain(
    mailbox: &mut Mailbox,
    ctx: &Ingest,
    stop: &watch::Receiver<bool>,
    processed: &str,
) -> crate::imap::Result<Pass> {
    let mut pass = Pass::default();
    for uid in mailbox.unread().await? {
        if *stop.borrow() {
            break;
        }
        let Some(raw) = mailbox.fetch(uid).await? else {
            continue;
        };
        match ctx.ingest(&raw, "imap").await {
            Ok(done) if done.report => {
                mailbox.file(uid).await?;
                println!("UID {uid}: {} (moved to {processed})", done.line);
                pass.filed += 1;
            }
            Ok(done) => {
                mailbox.keep(uid).await?;
                println!("UID {uid}: {} (left in the inbox)", done.line);
                pass.kept += 1;
            }
            Err(e) => {
                eprintln!("bulletin: UID {uid}: {e:#} (left unread for the next run)");
                pass.failed += 1;
            }
        }
    }
    Ok(pass)
}

/// Prints what a pass did; exit 1 when a message failed.
fn summary(pass: &Pass, mailbox: &str) -> ExitCode {
    println!(
        "{} filed, {} left in {mailbox}, {} failed",
        pass.filed, pass.kept, pass.failed
    );
    if pass.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

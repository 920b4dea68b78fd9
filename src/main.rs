//! The `bulletin` binary: parse the command line, run the command, print the
//! error once with a `bulletin:` prefix, and pick the exit code
//! (0 success, 1 finished with some failures, 2 error, 75 for `bounces
//! ingest` so that the MTA retries, and for `dispatch` when the database
//! cannot be reached or stays locked, so that cron's next run retries).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bulletin::cli::Cli::parse();
    let exit_code = |transient| cli.command.error_exit_code(transient);
    let (permanent_exit_code, transient_exit_code) = (exit_code(false), exit_code(true));
    bulletin::commands::init_tracing();
    match bulletin::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("bulletin: {err:#}");
            ExitCode::from(match is_transient(&err) {
                true => transient_exit_code,
                false => permanent_exit_code,
            })
        }
    }
}

/// An error that retrying later may cure: the database server could not
/// be reached, or another process held the database too long.
fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<bulletin::store::Error>()
            .is_some_and(bulletin::store::Error::is_transient)
    })
}

/// A closed pipe (`bulletin subscribers export | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

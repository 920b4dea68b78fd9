//! The `bulletin` binary: parse the command line, run the command, print the
//! error once with a `bulletin:` prefix, and pick the exit code
//! (0 success, 1 finished with some failures, 2 error, 75 for `bounces
//! ingest` so that the MTA retries).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bulletin::cli::Cli::parse();
    let error_exit_code = cli.command.error_exit_code();
    bulletin::commands::init_tracing();
    match bulletin::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("bulletin: {err:#}");
            ExitCode::from(error_exit_code)
        }
    }
}

/// A closed pipe (`bulletin subscribers export | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

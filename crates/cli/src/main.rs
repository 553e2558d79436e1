//! `aetherflow`: the command-line face of the engine. Only glue lives here: argument parsing,
//! files and pipes, progress bars and the words people read. Exit codes are listed in `--help`
//! and in [`exit`].

mod cli;
mod commands;
mod exit;
mod files;
mod progress;
mod seed;
mod store_url;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if exit::is_broken_pipe(&err) {
                // The reader went away (`aetherflow decompress x.af - | head`): not an error.
                return ExitCode::from(exit::SUCCESS);
            }
            eprintln!("aetherflow: error: {err:#}");
            ExitCode::from(exit::code_for(&err))
        }
    }
}

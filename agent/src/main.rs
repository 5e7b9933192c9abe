//! lostwrite's agent: `agent run` and `agent check`.

mod btf;
mod check;
mod cli;
mod correlate;
mod events;
mod go_runtime;
mod http;
mod k8s;
mod listeners;
mod metrics;
mod pipeline;
mod privileges;
mod probes;
mod report;
mod run;
mod tracefs;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::{EnvFilter, fmt};

use crate::{
    cli::{Cli, Command},
    report::LogFormat,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Run(a) => a.log_format,
        Command::Check(_) => LogFormat::Text,
    };
    init_logging(format);
    match cli.command {
        Command::Run(args) => match run::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // One line, every cause, no backtrace.
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check(args) => {
            // A report for a terminal or a filter: `agent check | head` ends quietly, as any
            // filter does, instead of panicking on the closed pipe.
            // SAFETY: set before any thread starts; SIG_DFL is always a valid disposition.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            check::check(&args)
        }
    }
}

/// Diagnostics go to stderr (stdout carries the incident log). `RUST_LOG` overrides the level;
/// the eBPF programs' aya-log records arrive through the `log` bridge.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

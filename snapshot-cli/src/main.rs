//! `cowsnap`, the operator CLI of cowstore.
//!
//! Each subcommand lives in its own module; they all open the store the same
//! way (`store::open`) and print through `output::Output`. Failures map to
//! exit codes in `failure`.

mod cli;
mod config;
mod daemon;
mod export;
mod failure;
mod group;
mod import;
mod maintenance;
mod output;
mod progress;
mod schedule;
mod snapshots;
mod store;
mod volumes;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use output::Output;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and succeed; every other parse
            // failure is a usage error (exit 2).
            let _ = e.print();
            return if e.use_stderr() {
                failure::Failure::Usage.exit_code()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose);
    let out = Output { json: cli.json };
    match run(cli, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = failure::classify(&e);
            if out.json {
                let doc = serde_json::json!({
                    "ok": false,
                    "error": format!("{e:#}"),
                    "kind": format!("{kind:?}").to_lowercase(),
                });
                println!("{doc}");
            }
            eprintln!("cowsnap: error: {e:#}");
            kind.exit_code()
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli, out: Output) -> anyhow::Result<()> {
    let store_flag = cli.store.as_deref();
    match cli.command {
        Command::Init(args) => store::init(store_flag, args, out),
        Command::Import(args) => import::run(store_flag, args, out),
        Command::Export(args) => export::run(store_flag, args, out),
        Command::Volume(cmd) => volumes::run(store_flag, cmd, out),
        Command::Snapshot(cmd) => snapshots::run(store_flag, cmd, out),
        Command::Clone(args) => snapshots::clone(store_flag, args, out),
        Command::Restore(args) => snapshots::restore(store_flag, args, out),
        Command::Gc => maintenance::gc(store_flag, out),
        Command::Verify(args) => maintenance::verify(store_flag, args, out),
        Command::Du => maintenance::du(store_flag, out),
        Command::Hydrate(args) => maintenance::hydrate(store_flag, args, out),
        Command::Schedule(args) => schedule::run(store_flag, args, out),
    }
}

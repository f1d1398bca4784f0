//! `warren-admin`: operations on a deployment's RabbitMQ topology (see
//! `warren_gateway::admin`).

#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use clap::Parser;
use warren_gateway::admin::{Cli, Command, remove_namespace};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::RemoveNamespace(args) => match remove_namespace(&args).await {
            Ok(removed) => {
                println!(
                    "removed {} queue(s): {}",
                    removed.queues.len(),
                    removed.queues.join(", ")
                );
                println!(
                    "removed {} exchange(s): {}",
                    removed.exchanges.len(),
                    removed.exchanges.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("warren-admin: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

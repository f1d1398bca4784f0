//! The `worker` binary: the worker library with the built-in handlers.

use std::process::ExitCode;

use clap::Parser;
use warren_shared::{shutdown, telemetry};
use warren_worker::{Worker, WorkerConfig, handlers};

#[tokio::main]
async fn main() -> ExitCode {
    let config = WorkerConfig::parse();
    telemetry::init(config.telemetry.log_format);
    match handlers::register(Worker::builder()).build(config) {
        Ok(worker) => match worker.run(shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "worker cannot run");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            tracing::error!(%error, "worker cannot start");
            ExitCode::FAILURE
        }
    }
}

//! The `api-gateway` binary: read configuration, start logging (and span export), run until
//! SIGTERM/SIGINT, then send the spans still queued.

use std::process::ExitCode;

use clap::Parser;
use warren_gateway::{Application, GatewayConfig};
use warren_shared::{shutdown, telemetry};

/// mimalloc instead of glibc's allocator: a job's path allocates many small, short-lived
/// buffers on several threads, where glibc's `malloc`/`free` (and its consolidation of freed
/// chunks) took a tenth of the process's CPU in `perf` (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = GatewayConfig::parse();
    let format = config.telemetry.log_format;
    telemetry::run_with_export(format, "warren-gateway", || run(config)).await
}

async fn run(config: GatewayConfig) -> ExitCode {
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(%error, "gateway cannot start");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "gateway stopped with an error");
            ExitCode::FAILURE
        }
    }
}

//! The `worker` binary: the worker library with the built-in handlers, and span export when
//! the OpenTelemetry variables ask for it (the spans still queued are sent after SIGTERM).

use std::process::ExitCode;

use clap::Parser;
use warren_shared::{shutdown, telemetry};
use warren_worker::{Worker, WorkerConfig, handlers};

/// mimalloc instead of glibc's allocator: a job's path allocates many small, short-lived
/// buffers on several threads, where glibc's `malloc`/`free` (and its consolidation of freed
/// chunks) took a tenth of the process's CPU in `perf` (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = WorkerConfig::parse();
    let format = config.telemetry.log_format;
    telemetry::run_with_export(format, "warren-worker", || run(config)).await
}

async fn run(config: WorkerConfig) -> ExitCode {
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

//! A worker binary with a job type of its own: the README's "Add a job type" example.
//!
//! ```text
//! cargo run -p warren-worker --example custom_handler
//! ```

use serde::Deserialize;
use serde_json::json;
use warren_worker::{HandlerResult, JobContext, Worker, WorkerConfig};

#[derive(Deserialize)]
struct Resize {
    width: u32,
}

/// `image.resize` (`{"width": N}`). A payload of another shape fails the job with a clear
/// `invalid_payload` error.
async fn resize(context: JobContext) -> HandlerResult {
    let Resize { width } = context.payload_as()?;
    context.progress(50, "resizing").await;
    Ok(json!({"width": width}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    let config = WorkerConfig::parse();
    warren_shared::telemetry::init(config.telemetry.log_format);
    let worker = Worker::builder()
        .handler("image.resize", resize)
        .build(config)?;
    worker.run(warren_shared::shutdown::signal()).await?;
    Ok(())
}

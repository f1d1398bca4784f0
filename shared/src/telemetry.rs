//! Log setup for both binaries: `RUST_LOG` filters (default `info`, without lapin's own lines),
//! `WARREN_LOG_FORMAT`
//! chooses human-readable or JSON lines. JSON lines carry the fields of every enclosing span,
//! so a job's `job_id` appears on each line written while it is handled. With the
//! OpenTelemetry variables set, the same spans are exported over OTLP ([`crate::otel`]).

use tracing::Level;
use tracing_subscriber::{
    EnvFilter,
    filter::{LevelFilter, Targets},
    fmt,
    prelude::*,
};

use crate::{
    config::LogFormat,
    otel::{OtelError, OtelSettings, Tracing},
};

/// Installs the global subscriber (logs only). Calling it again (as tests do) keeps the first.
pub fn init(format: LogFormat) {
    install(format, None);
}

/// Installs the global subscriber with OTLP export when the OpenTelemetry variables ask for
/// it (`service` is the default `OTEL_SERVICE_NAME`). Keep the answer and call
/// [`Tracing::shutdown`] at the end of a graceful shutdown.
///
/// # Errors
/// An OpenTelemetry variable Warren cannot honour, or an exporter that cannot be set up; logs
/// are installed anyway, so the caller can report it.
pub fn init_with_export(format: LogFormat, service: &str) -> Result<Option<Tracing>, OtelError> {
    let tracing = match OtelSettings::from_env(service) {
        Ok(Some(settings)) => match Tracing::start(&settings) {
            Ok(tracing) => Some(tracing),
            Err(error) => {
                install(format, None);
                return Err(error);
            }
        },
        Ok(None) => None,
        Err(error) => {
            install(format, None);
            return Err(error.into());
        }
    };
    install(format, tracing.as_ref());
    if let Some(tracing) = &tracing {
        tracing::info!(?tracing, "exporting spans over OTLP");
    }
    Ok(tracing)
}

/// How long the spans still queued at shutdown may take to reach the collector.
const EXPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A binary's whole life: installs logs and span export ([`init_with_export`], `service` the
/// default `OTEL_SERVICE_NAME`), runs `run`, then sends the spans still queued. A bad
/// OpenTelemetry variable stops the process before `run`, naming it.
pub async fn run_with_export<F>(
    format: LogFormat,
    service: &str,
    run: impl FnOnce() -> F,
) -> std::process::ExitCode
where
    F: Future<Output = std::process::ExitCode>,
{
    let export = match init_with_export(format, service) {
        Ok(export) => export,
        Err(error) => {
            tracing::error!(%error, "{service} cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = run().await;
    if let Some(export) = export {
        // The export thread is waited for off the runtime's threads.
        let flushed = tokio::task::spawn_blocking(move || export.shutdown(EXPORT_GRACE)).await;
        drop(flushed);
    }
    code
}

fn install(format: LogFormat, export: Option<&Tracing>) {
    // lapin logs every returned (unroutable) message at WARN with its whole body, and each
    // failed connection attempt as three ERROR lines; Warren reports both itself (a 422 to the
    // client; one line naming WARREN_AMQP_URL, the address and the cause, repeated calmly), so
    // lapin's lines are off by default (`RUST_LOG=info,lapin=debug` shows them).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=off"));
    // `RUST_LOG` filters the log lines only: exported spans are every `info` span (not
    // lapin's), whatever the log level.
    let spans = Targets::new()
        .with_default(Level::INFO)
        .with_target("lapin", LevelFilter::OFF);
    let registry = tracing_subscriber::registry().with(
        export
            .map(Tracing::layer)
            .map(|layer| layer.with_filter(spans)),
    );
    let result = match format {
        LogFormat::Pretty => registry
            .with(fmt::layer().with_target(true).with_filter(filter))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_filter(filter),
            )
            .try_init(),
    };
    // An error only means a subscriber is already installed, which is fine.
    drop(result);
}

//! Log setup for both binaries: `RUST_LOG` filters (default `info`, without lapin's own lines),
//! `WARREN_LOG_FORMAT`
//! chooses human-readable or JSON lines. JSON lines carry the fields of every enclosing span,
//! so a job's `job_id` appears on each line written while it is handled.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it again (as tests do) keeps the first one.
pub fn init(format: LogFormat) {
    // lapin logs every returned (unroutable) message at WARN with its whole body, and each
    // failed connection attempt as three ERROR lines; Warren reports both itself (a 422 to the
    // client; one line naming WARREN_AMQP_URL, the address and the cause, repeated calmly), so
    // lapin's lines are off by default (`RUST_LOG=info,lapin=debug` shows them).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=off"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Pretty => registry.with(fmt::layer().with_target(true)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true),
            )
            .try_init(),
    };
    // An error only means a subscriber is already installed, which is fine.
    drop(result);
}

//! Prometheus plumbing both binaries share: the label sets, the duration buckets and the
//! text rendering. Each binary registers its own series (see their `metrics` modules); names
//! start with `warren_` and counters end with `_total`.

use prometheus_client::{encoding::EncodeLabelSet, metrics::histogram::exponential_buckets};
pub use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Series split by job type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job type.
    pub job_type: String,
}

/// Series split by job type and outcome status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The job type.
    pub job_type: String,
    /// `succeeded`, `failed` or `cancelled`.
    pub status: &'static str,
}

/// Series split by a reason (dead letters).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why, as a short stable word.
    pub reason: String,
}

/// Series split by a store operation (`insert`, `apply_events`, …).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The operation, as its method is named.
    pub operation: &'static str,
}

/// Series split by the way a store did something (e.g. `copy` or `locked` for applied events).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// The path taken.
    pub path: String,
}

/// A histogram of durations in seconds, from 0.5 ms to about 4.5 min.
#[must_use]
pub fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 20))
}

/// A family of duration histograms.
#[must_use]
pub fn duration_family<L>() -> Family<L, Histogram>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(duration_histogram)
}

/// The registry in the text exposition format.
#[must_use]
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(%error, "cannot render metrics");
    }
    text
}

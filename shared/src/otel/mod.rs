//! Traces over OTLP. When the standard OpenTelemetry variables name a collector
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, see [`OtelSettings`]), the gateway's and the worker's
//! tracing spans are exported to it over HTTP/protobuf, each process under its
//! `OTEL_SERVICE_NAME`; unset, no layer is installed and nothing is exported or slower.
//!
//! One job is one trace: the `traceparent` a span's context gives ([`context_of`]) goes into
//! the job message and the events, and the receiving side makes it the parent of its own span
//! ([`set_parent`]). Without export, the same functions fall back to [`TraceContext`]'s own
//! ids, so logs still carry one `trace_id` per job.
//!
//! Spans go through a bounded queue to one export thread ([`export`]): a full queue drops
//! spans rather than waiting, and `warren_trace_spans_dropped_total{reason}` counts them.
//! [`Tracing::shutdown`] exports what is queued, so spans of the last jobs before a SIGTERM
//! reach the collector.

mod export;
mod settings;

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    Context,
    trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
    },
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use prometheus_client::metrics::{counter::Counter, family::Family};
pub use settings::{OtelSettingError, OtelSettings};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{metrics::ReasonLabels, trace::TraceContext};

/// Whether spans are exported in this process (set once by [`Tracing::start`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

static DROPPED: LazyLock<Family<ReasonLabels, Counter>> = LazyLock::new(Family::default);

/// Spans that never reached the collector, by reason (`queue_full`, `export_failed`,
/// `shut_down`): one series per process, to register in its metrics.
#[must_use]
pub fn spans_dropped() -> Family<ReasonLabels, Counter> {
    DROPPED.clone()
}

fn dropped(reason: &str, spans: u64) {
    DROPPED
        .get_or_create(&ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc_by(spans);
}

/// Why export could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// A variable Warren cannot honour.
    #[error(transparent)]
    Setting(#[from] OtelSettingError),
    /// The exporter could not be built.
    #[error("cannot set up the OTLP exporter for {url}: {reason}")]
    Exporter {
        /// The collector's traces URL.
        url: String,
        /// What failed.
        reason: String,
    },
}

/// The export of one process's spans; [`Tracing::shutdown`] sends what is queued.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    url: String,
}

impl Tracing {
    /// Builds the exporter for `settings`; [`Tracing::layer`] is the tracing layer to install.
    ///
    /// # Errors
    /// The exporter or its thread cannot be set up.
    pub fn start(settings: &OtelSettings) -> Result<Self, OtelError> {
        let url = settings.traces_url.clone();
        let failed = |reason: String| OtelError::Exporter {
            url: url.clone(),
            reason,
        };
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        // reqwest is built without a TLS provider of its own (an https collector needs one).
        let _already = rustls::crypto::ring::default_provider().install_default();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(reqwest::Client::new())
            .with_endpoint(url.clone())
            .build()
            .map_err(|e| failed(e.to_string()))?;
        opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
        let processor = export::QueueProcessor::start(
            exporter,
            settings.max_queue,
            settings.max_batch,
            settings.schedule_delay,
        )
        .map_err(|e| failed(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampler.clone())
            .with_resource(resource)
            .build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Self { provider, url })
    }

    /// The tracing layer that turns spans into OpenTelemetry spans for this export.
    #[must_use]
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("warren"))
            .with_tracked_inactivity(false)
            .with_threads(false)
    }

    /// Exports every span queued so far, waiting up to `timeout`; spans ended later are
    /// dropped. Call once, at the end of a graceful shutdown.
    pub fn shutdown(&self, timeout: Duration) {
        match self.provider.shutdown_with_timeout(timeout) {
            Ok(()) => tracing::info!(url = %self.url, "spans exported; OTLP export stopped"),
            Err(error) => tracing::warn!(%error, url = %self.url,
                "not every span could be exported before shutting down"),
        }
    }
}

/// Whether spans are exported in this process.
#[must_use]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Makes `trace` (from another process) the parent of `span`, which must not have been
/// entered yet. Does nothing without export.
pub fn set_parent(span: &Span, trace: &TraceContext) {
    if !enabled() {
        return;
    }
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(trace.trace_id()),
        SpanId::from_hex(trace.span_id()),
    ) else {
        return;
    };
    let flags = if trace.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    let _ = span.set_parent(Context::new().with_remote_span_context(remote));
}

/// Parents `span` (not entered yet) on `trace` unless the current span already is in that
/// trace, as when a publish happens inside the request that asked for it.
pub fn continue_in(span: &Span, trace: &TraceContext) {
    if !enabled() {
        return;
    }
    let current = context_of(&Span::current());
    if current.is_none_or(|current| current.trace_id() != trace.trace_id()) {
        set_parent(span, trace);
    }
}

/// `span`'s own context, to pass on as the parent of what it causes elsewhere; `None` without
/// export (the caller falls back to [`TraceContext::child`]).
#[must_use]
pub fn context_of(span: &Span) -> Option<TraceContext> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let own = context.span();
    let own = own.span_context();
    own.is_valid().then(|| {
        TraceContext::from_ids(
            u128::from_be_bytes(own.trace_id().to_bytes()),
            u64::from_be_bytes(own.span_id().to_bytes()),
            own.is_sampled(),
        )
    })
}

/// The context to hand to the next hop from inside `span`: its own with export, else a child
/// of `trace` (same trace id, new span id).
#[must_use]
pub fn next_hop(span: &Span, trace: &TraceContext) -> TraceContext {
    context_of(span).unwrap_or_else(|| trace.child())
}

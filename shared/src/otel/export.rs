//! The span processor between the tracing layer and the OTLP exporter: a bounded queue and one
//! export thread. A finished span is handed over without waiting (a full queue drops it and
//! counts it), so a slow or unreachable collector never slows a job; the thread sends batches
//! when one is full or the schedule delay passed, and everything queued on flush or shutdown.

use std::{
    sync::{
        Mutex, PoisonError,
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{Span, SpanData, SpanExporter, SpanProcessor},
};

use super::dropped;

/// What the export thread is asked to do, in order.
enum Message {
    Span(Box<SpanData>),
    /// Export everything before this message, then answer.
    Flush(SyncSender<()>),
    /// Export everything before this message, shut the exporter down, answer and stop.
    Shutdown(SyncSender<()>),
}

/// The processor installed in the tracer provider.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    queue: SyncSender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Span(_) => "Span",
            Self::Flush(_) => "Flush",
            Self::Shutdown(_) => "Shutdown",
        })
    }
}

impl QueueProcessor {
    /// Starts the export thread for `exporter`.
    ///
    /// # Errors
    /// The thread or its runtime cannot be started.
    pub(super) fn start<E: SpanExporter + 'static>(
        exporter: E,
        max_queue: usize,
        max_batch: usize,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let (queue, spans) = mpsc::sync_channel(max_queue);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let mut export = Export {
                    exporter,
                    runtime,
                    batch: Vec::with_capacity(max_batch),
                    failures: 0,
                };
                export.run(&spans, max_batch, delay);
            })?;
        Ok(Self {
            queue,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Sends `message` to the thread and waits up to `timeout` for its answer.
    fn ask(
        &self,
        make: impl FnOnce(SyncSender<()>) -> Message,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (answer, answered) = mpsc::sync_channel(1);
        self.queue
            .send(make(answer))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answered
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => dropped("queue_full", 1),
            Err(TrySendError::Disconnected(_)) => dropped("shut_down", 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Message::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        let answer = self.ask(Message::Shutdown, timeout);
        if answer.is_ok() {
            let _ = thread.join();
        }
        answer
    }
}

/// The export thread's state.
struct Export<E> {
    exporter: E,
    runtime: tokio::runtime::Runtime,
    batch: Vec<SpanData>,
    /// Failed exports in a row (logged at the first, then every 100th).
    failures: u64,
}

impl<E: SpanExporter> Export<E> {
    fn run(&mut self, spans: &mpsc::Receiver<Message>, max_batch: usize, delay: Duration) {
        let mut due = Instant::now() + delay;
        loop {
            match spans.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(Message::Span(span)) => {
                    self.batch.push(*span);
                    if self.batch.len() >= max_batch {
                        self.send();
                        due = Instant::now() + delay;
                    }
                }
                Ok(Message::Flush(answer)) => {
                    self.send();
                    let _ = answer.send(());
                }
                Ok(Message::Shutdown(answer)) => {
                    self.send();
                    let _ = self.exporter.shutdown();
                    let _ = answer.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.send();
                    due = Instant::now() + delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.send();
                    return;
                }
            }
        }
    }

    /// Exports the batch. The exporter's own spans and logs (reqwest, hyper) are silenced
    /// here, so exporting never makes more spans to export.
    fn send(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let spans = batch.len() as u64;
        let exporter = &self.exporter;
        let runtime = &self.runtime;
        let result =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::new(), || {
                runtime.block_on(exporter.export(batch))
            });
        match result {
            Ok(()) => self.failures = 0,
            Err(error) => {
                dropped("export_failed", spans);
                if self.failures.is_multiple_of(100) {
                    tracing::warn!(%error, spans, failures_in_a_row = self.failures + 1,
                        "cannot export spans to the OTLP collector (OTEL_EXPORTER_OTLP_ENDPOINT); \
                         they are dropped and counted in warren_trace_spans_dropped_total; jobs \
                         are not affected");
                }
                self.failures += 1;
            }
        }
    }
}

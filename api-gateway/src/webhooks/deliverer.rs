//! The deliverer: every gateway runs one. It claims due callbacks from the store (woken when
//! a job with a callback finishes here, and every half second for other gateways' and retries),
//! sends each on its own task, and records the attempt with the state [`after_attempt`] plans.
//! A finished workflow's callback goes the same way, with the workflow resource as its body.
//!
//! Deliveries never hold up job processing or submits: they run on their own tasks, bounded
//! by `WARREN_WEBHOOK_CONCURRENCY` in all and `WARREN_WEBHOOK_HOST_CONCURRENCY` per host, so a
//! slow or dead receiver takes at most its host's share. Redirects are not followed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::Utc;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::{Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use warren_shared::{
    otel,
    trace::{TRACEPARENT, TraceContext},
};

use super::{Answer, WebhookConfig, after_attempt, guard};
use crate::{
    metrics::GatewayMetrics,
    model::{Callback, Delivery, Job, Workflow},
    store::{CallbackStore, StepStatuses, WorkflowStore},
    watch::Watchers,
};

/// How often the deliverer looks for due callbacks when nothing woke it.
const POLL: Duration = Duration::from_millis(500);
/// Most callbacks claimed per store call.
const BATCH: usize = 64;
/// How often the pending gauge is read from the store.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// Sends callbacks; shared by the delivery tasks.
pub struct Deliverer {
    store: Arc<dyn CallbackStore>,
    workflows: Arc<dyn WorkflowStore>,
    client: reqwest::Client,
    config: WebhookConfig,
    metrics: Arc<GatewayMetrics>,
    slots: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Wakes the loop when a slot frees up, or a retry planned here comes due sooner than
    /// the next poll.
    wake: Arc<Notify>,
}

impl Deliverer {
    /// A deliverer with its own HTTP client: no redirects, the attempt timeout, and DNS that
    /// refuses private addresses (see [`guard`]).
    pub fn new(
        store: Arc<dyn CallbackStore>,
        workflows: Arc<dyn WorkflowStore>,
        config: WebhookConfig,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<Self, String> {
        super::install_tls_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout())
            .dns_resolver(guard::GuardedResolver {
                allow_private: config.allow_private,
            })
            .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("cannot build the webhook HTTP client: {error}"))?;
        let slots = Arc::new(Semaphore::new(config.concurrency as usize));
        Ok(Self {
            store,
            workflows,
            client,
            config,
            metrics,
            slots,
            hosts: Mutex::default(),
            wake: Arc::default(),
        })
    }

    /// Claims and sends due callbacks until `stop`, then waits for attempts in flight (each
    /// bounded by the attempt timeout).
    pub async fn run(self: Arc<Self>, watchers: Arc<Watchers>, stop: CancellationToken) {
        let tasks = TaskTracker::new();
        let mut counted_at: Option<Instant> = None;
        loop {
            self.claim_and_send(&tasks).await;
            if counted_at.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                if let Ok(pending) = self.store.count_pending_callbacks().await {
                    self.metrics
                        .webhook_pending
                        .set(i64::try_from(pending).unwrap_or(i64::MAX));
                }
                counted_at = Some(Instant::now());
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = watchers.callback_due() => {}
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Claims as many due callbacks as there are free slots and starts sending each.
    async fn claim_and_send(self: &Arc<Self>, tasks: &TaskTracker) {
        loop {
            let room = self.slots.available_permits().min(BATCH);
            if room == 0 {
                return;
            }
            let now = Utc::now();
            let lease = chrono::Duration::from_std(self.config.lease()).unwrap_or_default();
            let claimed = match self.store.claim_callbacks(now, now + lease, room).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim due webhook deliveries; trying again shortly");
                    return;
                }
            };
            let mut full = claimed.len() == room;
            for job in claimed {
                // Only this loop takes slots, so the room counted above is still free.
                let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                    return;
                };
                let this = Arc::clone(self);
                tasks.spawn(async move {
                    this.deliver(job).await;
                    drop(slot);
                    // A free slot may take the next due callback at once.
                    this.wake.notify_one();
                });
            }
            let room = self.slots.available_permits().min(BATCH);
            if room > 0 {
                let claimed = match self
                    .workflows
                    .claim_workflow_callbacks(now, now + lease, room)
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::warn!(%error, "cannot claim due workflow webhooks; trying again shortly");
                        Vec::new()
                    }
                };
                full |= claimed.len() == room;
                for (workflow, statuses) in claimed {
                    let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                        return;
                    };
                    let this = Arc::clone(self);
                    tasks.spawn(async move {
                        this.deliver_workflow(workflow, statuses).await;
                        drop(slot);
                        this.wake.notify_one();
                    });
                }
            }
            if !full {
                return;
            }
        }
    }

    /// The semaphore that bounds deliveries to `host`.
    fn host_slots(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let per_host = self.config.host_concurrency as usize;
        Arc::clone(
            hosts
                .entry(host.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(per_host))),
        )
    }

    /// One attempt for a job: send, then record it with the state it leads to; in a client
    /// span that joins the job's trace (that of its outcome).
    async fn deliver(&self, job: Job) {
        let span = tracing::info_span!("webhook", job_id = %job.id, job_type = %job.job_type,
            webhook_id = tracing::field::Empty, attempt = tracing::field::Empty,
            otel.kind = "client", http.request.method = "POST",
            http.response.status_code = tracing::field::Empty);
        let outcome = job.callback.as_ref().and_then(|c| c.traceparent.as_deref());
        if let Some(trace) = outcome.and_then(TraceContext::parse) {
            otel::set_parent(&span, &trace);
        }
        self.deliver_job(job).instrument(span).await;
    }

    async fn deliver_job(&self, job: Job) {
        let (Some(url), Some(callback)) = (job.callback_url.as_deref(), job.callback.as_deref())
        else {
            return;
        };
        let body = serde_json::to_vec(&job).map_err(|e| format!("cannot encode the job: {e}"));
        let (delivery, next) = self.attempt(url, callback, body, job.finished_at).await;
        if let Err(error) = self.store.record_delivery(job.id, &delivery, &next).await {
            tracing::error!(%error, "cannot record a webhook attempt; it is sent again once its lease runs out");
            return;
        }
        self.wake_for_retry(next.due_at());
    }

    /// One attempt for a finished workflow (its resource as the body).
    #[tracing::instrument(name = "webhook", skip_all,
        fields(workflow_id = %workflow.id, webhook_id, attempt))]
    async fn deliver_workflow(&self, workflow: Workflow, statuses: StepStatuses) {
        let (Some(url), Some(callback)) =
            (workflow.callback_url.as_deref(), workflow.callback.as_ref())
        else {
            return;
        };
        let body = serde_json::to_vec(&workflow.view(&statuses))
            .map_err(|e| format!("cannot encode the workflow: {e}"));
        let (_, next) = self
            .attempt(url, callback, body, workflow.finished_at)
            .await;
        if let Err(error) = self
            .workflows
            .record_workflow_callback(workflow.id, &next)
            .await
        {
            tracing::error!(%error, "cannot record a workflow webhook attempt; it is sent again once its lease runs out");
            return;
        }
        self.wake_for_retry(next.due_at());
    }

    /// Sends `body` to `url` for `callback`'s next attempt; the attempt and the callback's
    /// state after it.
    async fn attempt(
        &self,
        url: &str,
        callback: &Callback,
        body: Result<Vec<u8>, String>,
        finished_at: Option<chrono::DateTime<Utc>>,
    ) -> (Delivery, Callback) {
        let span = tracing::Span::current();
        span.record("webhook_id", callback.webhook_id.as_str());
        span.record("attempt", callback.attempts + 1);
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let host_slots = self.host_slots(&host);
        let _host_slot = host_slots.acquire().await;
        let at = Utc::now();
        let started = Instant::now();
        let answer = match body {
            Ok(body) => self.send(body, url, callback).await,
            Err(why) => Answer::Failed(why),
        };
        let elapsed = started.elapsed();
        crate::fault::pause_point("after_webhook_send").await;
        let next = after_attempt(callback, &answer, &self.config.retry_delays, Utc::now());
        let (status_code, error) = match answer {
            Answer::Status(code) => (Some(code), None),
            Answer::Failed(why) => (None, Some(why)),
        };
        let delivery = Delivery {
            webhook_id: callback.webhook_id.clone(),
            attempt: next.attempts,
            at,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            status_code,
            error,
            callback_state: next.state,
            next_attempt_at: next.next_attempt_at,
        };
        tracing::info!(%host, status_code = ?delivery.status_code, error = ?delivery.error,
            outcome = next.state.as_str(), next_attempt_at = ?next.next_attempt_at,
            duration_ms = delivery.duration_ms, "webhook attempt");
        let lag = finished_at.map(|finished| Utc::now() - finished);
        self.metrics.webhook_attempted(next.state, elapsed, lag);
        (delivery, next)
    }

    /// Makes the loop look again when a retry is due before its next poll would.
    fn wake_for_retry(&self, due: Option<chrono::DateTime<Utc>>) {
        let Some(wait) = due.and_then(|due| (due - Utc::now()).to_std().ok()) else {
            return;
        };
        if wait < POLL {
            let wake = Arc::clone(&self.wake);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                wake.notify_one();
            });
        }
    }

    /// Signs and POSTs `body` (a job or workflow resource); what came back.
    async fn send(&self, body: Vec<u8>, url: &str, callback: &Callback) -> Answer {
        let Some(secret) = &self.config.secret else {
            return Answer::Failed(
                "WARREN_WEBHOOK_SECRET is not set, so the delivery cannot be signed; set it and \
                 restart the gateway"
                    .into(),
            );
        };
        let url = match guard::parse(url) {
            Ok(url) => url,
            Err(why) => return Answer::Failed(format!("callback_url {why}")),
        };
        // Names are checked by the client's resolver; an address literal is checked here.
        if let Err(why) = guard::check_literal(&url, self.config.allow_private) {
            return Answer::Failed(why);
        }
        let timestamp = Utc::now().timestamp();
        let signature = secret.sign(&callback.webhook_id, timestamp, &body);
        // The receiver may continue the trace: a child of this attempt's span (or of the
        // job's outcome without export).
        let span = tracing::Span::current();
        let outcome = callback
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse);
        let trace = otel::context_of(&span).or_else(|| outcome.map(|t| t.child()));
        let mut request = self.client.post(url);
        if let Some(trace) = trace {
            request = request.header(TRACEPARENT, trace.header());
        }
        let sent = request
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &callback.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                span.record("http.response.status_code", response.status().as_u16());
                Answer::Status(response.status().as_u16())
            }
            Err(error) => Answer::Failed(self.describe(&error)),
        }
    }

    /// Why a request got no answer, in words an operator can act on.
    fn describe(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            return format!(
                "no answer within {} ms (WARREN_WEBHOOK_TIMEOUT_MS)",
                self.config.timeout_ms
            );
        }
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

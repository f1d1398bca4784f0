//! Webhooks: when a job with a `callback_url` finishes, Warren POSTs the job resource to it,
//! signed as Standard Webhooks 1.0 says.
//!
//! The pending delivery lives in the store, on the job's record ([`Callback`]): the store
//! arms it in the same write that makes the job terminal, so a crash cannot lose it. Every
//! gateway runs a [`deliverer`] that claims due callbacks (a lease, so two gateways do not
//! send the same attempt), sends them, records each attempt ([`Delivery`]) and plans the next
//! one with [`after_attempt`], a pure function tested rule by rule.
//!
//! - [`signing`]: the `whsec_` secret and the `v1,` signature;
//! - [`guard`]: the SSRF guard (which URLs and addresses may be called);
//! - [`policy`]: which `callback_url`s a submit may give;
//! - [`deliverer`]: the loop that claims, sends and records.

pub mod deliverer;
pub mod guard;
pub mod policy;
pub mod signing;

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use policy::CallbackPolicy;
pub use signing::Secret;

use crate::model::{Callback, CallbackState};

/// Installs rustls' `ring` crypto provider for the process, if none is yet. The gateway's
/// `reqwest` has TLS without a built-in provider (aws-lc would cost minutes of C compiling),
/// and Cargo unifies features: in this workspace every `reqwest::Client` built before a
/// provider is installed panics, so anything that builds one (tests, the bench, examples)
/// calls this first.
pub fn install_tls_provider() {
    // An error only means a provider is installed already.
    let _already = rustls::crypto::ring::default_provider().install_default();
}

/// What one attempt got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The receiver answered with this HTTP status.
    Status(u16),
    /// No answer: the message says why (timeout, connection refused, refused address).
    Failed(String),
}

/// The callback after an attempt that got `answer` at `now`: a 2xx delivers it, `410 Gone`
/// gives up at once, anything else is retried after the next of `delays` until they run out
/// (so a delivery makes at most `delays.len() + 1` attempts).
#[must_use]
pub fn after_attempt(
    callback: &Callback,
    answer: &Answer,
    delays: &[Duration],
    now: DateTime<Utc>,
) -> Callback {
    let attempts = callback.attempts.saturating_add(1);
    let retry_in = usize::try_from(callback.attempts)
        .ok()
        .and_then(|made| delays.get(made))
        .and_then(|delay| chrono::Duration::from_std(*delay).ok());
    let (state, next_attempt_at) = match answer {
        Answer::Status(code) if (200..300).contains(code) => (CallbackState::Delivered, None),
        Answer::Status(410) => (CallbackState::GivenUp, None),
        _ => match retry_in {
            Some(delay) => (CallbackState::Pending, Some(now + delay)),
            None => (CallbackState::GivenUp, None),
        },
    };
    Callback {
        state,
        webhook_id: callback.webhook_id.clone(),
        attempts,
        next_attempt_at,
        traceparent: callback.traceparent.clone(),
    }
}

/// The webhook settings (`WARREN_WEBHOOK_*`).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookConfig {
    /// The signing secret, `whsec_` + base64 of 24 to 64 random bytes (unset: jobs with a
    /// `callback_url` are refused, since their deliveries could not be signed).
    #[arg(
        id = "webhook_secret",
        long = "webhook-secret",
        env = "WARREN_WEBHOOK_SECRET",
        value_name = "WARREN_WEBHOOK_SECRET",
        value_parser = warren_shared::config::SecretParser(Secret::parse),
        hide_env_values = true
    )]
    pub secret: Option<Secret>,

    /// How long one attempt waits for the receiver's answer.
    #[arg(
        id = "webhook_timeout_ms",
        long = "webhook-timeout-ms",
        env = "WARREN_WEBHOOK_TIMEOUT_MS",
        value_name = "WARREN_WEBHOOK_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=300_000)
    )]
    pub timeout_ms: u64,

    /// Waits between attempts (comma list); after the last, the delivery is given up. The
    /// default is Svix's schedule: 8 attempts over about 27 hours.
    #[arg(
        id = "webhook_retry_delays",
        long = "webhook-retry-delays",
        env = "WARREN_WEBHOOK_RETRY_DELAYS",
        value_name = "WARREN_WEBHOOK_RETRY_DELAYS",
        default_value = "5s,5m,30m,2h,5h,10h,10h",
        value_delimiter = ',',
        value_parser = warren_shared::config::parse_delay
    )]
    pub retry_delays: Vec<Duration>,

    /// Allow callbacks to loopback, private, link-local and metadata addresses (local
    /// development and tests only).
    #[arg(
        id = "webhook_allow_private",
        long = "webhook-allow-private",
        env = "WARREN_WEBHOOK_ALLOW_PRIVATE",
        value_name = "WARREN_WEBHOOK_ALLOW_PRIVATE",
        default_value = "false",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_private: bool,

    /// Deliveries one gateway sends at once, to all receivers.
    #[arg(
        id = "webhook_concurrency",
        long = "webhook-concurrency",
        env = "WARREN_WEBHOOK_CONCURRENCY",
        value_name = "WARREN_WEBHOOK_CONCURRENCY",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub concurrency: u32,

    /// Deliveries one gateway sends at once to one host.
    #[arg(
        id = "webhook_host_concurrency",
        long = "webhook-host-concurrency",
        env = "WARREN_WEBHOOK_HOST_CONCURRENCY",
        value_name = "WARREN_WEBHOOK_HOST_CONCURRENCY",
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub host_concurrency: u32,
}

impl WebhookConfig {
    /// One attempt's time limit.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// How long a claimed callback is held before another gateway may take it (its sender
    /// died): long enough for every claimed attempt to wait its turn for its host and run,
    /// plus one more timeout for recording it.
    #[must_use]
    pub fn lease(&self) -> Duration {
        let rounds = self.concurrency.div_ceil(self.host_concurrency).max(1);
        self.timeout() * (rounds + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAYS: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(300)];

    fn pending(attempts: u32) -> Callback {
        Callback {
            attempts,
            ..Callback::due_now(Utc::now())
        }
    }

    #[test]
    fn a_2xx_delivers() {
        for code in [200, 202, 204, 299] {
            let after = after_attempt(&pending(0), &Answer::Status(code), &DELAYS, Utc::now());
            assert_eq!(after.state, CallbackState::Delivered, "{code}");
            assert_eq!((after.attempts, after.next_attempt_at), (1, None));
        }
    }

    #[test]
    fn gone_gives_up_at_once() {
        let after = after_attempt(&pending(0), &Answer::Status(410), &DELAYS, Utc::now());
        assert_eq!(after.state, CallbackState::GivenUp);
        assert_eq!(after.next_attempt_at, None);
    }

    #[test]
    fn other_answers_retry_after_the_next_delay() {
        let now = Utc::now();
        let answers = [
            Answer::Status(500),
            Answer::Status(301),
            Answer::Status(404),
            Answer::Failed("timed out".into()),
        ];
        for answer in answers {
            let first = after_attempt(&pending(0), &answer, &DELAYS, now);
            assert_eq!(first.state, CallbackState::Pending, "{answer:?}");
            assert_eq!(
                first.next_attempt_at,
                Some(now + chrono::Duration::seconds(5))
            );
            let second = after_attempt(&first, &answer, &DELAYS, now);
            assert_eq!(
                second.next_attempt_at,
                Some(now + chrono::Duration::seconds(300))
            );
            assert_eq!(second.attempts, 2);
        }
    }

    #[test]
    fn the_attempt_after_the_last_delay_gives_up() {
        let after = after_attempt(&pending(2), &Answer::Status(500), &DELAYS, Utc::now());
        assert_eq!(after.state, CallbackState::GivenUp);
        assert_eq!(after.attempts, 3);
    }

    #[test]
    fn the_webhook_id_stays_across_attempts() {
        let first = pending(0);
        let after = after_attempt(&first, &Answer::Status(500), &DELAYS, Utc::now());
        assert_eq!(after.webhook_id, first.webhook_id);
        assert!(first.webhook_id.starts_with("msg_"));
    }

    #[test]
    fn only_a_pending_callback_is_due() {
        let delivered = Callback {
            state: CallbackState::Delivered,
            ..pending(1)
        };
        assert_eq!(delivered.due_at(), None);
        assert!(pending(0).due_at().is_some());
    }
}

//! A job type's flow settings (`paused`, `max_running`, `rate_limit`) as stored, and the body
//! of `PATCH /v1/queues/{type}` with its validation: each field may be absent (unchanged),
//! `null` (removed) or a value, and an out-of-range value is refused naming the field.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use warren_shared::{
    JobType,
    flow::{MAX_RATE_JOBS, MAX_RATE_PER_SECOND, MAX_RUNNING, RATE_SECONDS, RateLimit, TypeFlow},
};

use super::SpecError;

/// One type's settings, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// The job type.
    pub job_type: JobType,
    /// No new starts while set.
    pub paused: bool,
    /// At most this many running at once, across all workers.
    pub max_running: Option<u32>,
    /// At most this many starts per window, across all workers.
    pub rate_limit: Option<RateLimit>,
    /// Grows with every change (from one counter for all types).
    pub generation: u64,
    /// The generation of the slot tokens in force: the one at which `max_running` was last
    /// set (a pause or a rate change leaves the tokens valid).
    pub slots_epoch: u64,
    /// The epoch whose slot tokens are published (`None`: not yet).
    pub slots_generation: Option<u64>,
    /// The last rate window refilled.
    pub refilled_window: Option<u64>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl QueueSettings {
    /// A type's settings before any change: no limits.
    #[must_use]
    pub fn unset(job_type: JobType) -> Self {
        Self {
            job_type,
            paused: false,
            max_running: None,
            rate_limit: None,
            generation: 0,
            slots_epoch: 0,
            slots_generation: None,
            refilled_window: None,
            updated_at: Utc::now(),
        }
    }

    /// What the workers get.
    #[must_use]
    pub fn for_workers(&self) -> TypeFlow {
        TypeFlow {
            paused: self.paused,
            max_running: self.max_running,
            rate_limit: self.rate_limit,
            generation: self.slots_epoch,
        }
    }

    /// `update` applied under `generation` (the store's next): a new `max_running` starts a
    /// new slot epoch, a new `rate_limit` a new round of windows.
    #[must_use]
    pub fn with(mut self, update: &FlowUpdate, generation: u64) -> Self {
        if let Some(paused) = update.paused {
            self.paused = paused;
        }
        if let Some(max_running) = update.max_running {
            self.max_running = max_running;
            self.slots_epoch = generation;
            self.slots_generation = None;
        }
        if let Some(rate_limit) = update.rate_limit {
            self.rate_limit = rate_limit;
            self.refilled_window = None;
        }
        self.generation = generation;
        self.updated_at = Utc::now();
        self
    }
}

/// The body of `PATCH /v1/queues/{type}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"paused": true, "max_running": 5, "rate_limit": {"jobs": 10, "per_seconds": 1}}))]
pub struct FlowChange {
    /// Stop (`true`) or resume (`false`) new starts of the type; running jobs finish.
    #[serde(default)]
    pub paused: Option<bool>,
    /// At most this many of the type running at once across all workers, 1 to 1,000;
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub max_running: Option<Option<u64>>,
    /// At most `jobs` starts per `per_seconds` window across all workers; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
}

/// A field that is there, `null` or not: `Some(None)` for `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A checked [`FlowChange`]: `None` leaves a setting as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FlowUpdate {
    /// New `paused`.
    pub paused: Option<bool>,
    /// New `max_running` (`Some(None)` removes it).
    pub max_running: Option<Option<u32>>,
    /// New `rate_limit` (`Some(None)` removes it).
    pub rate_limit: Option<Option<RateLimit>>,
}

impl FlowChange {
    /// Checks every field.
    ///
    /// # Errors
    /// The first field out of range, saying what is allowed.
    pub fn validate(self) -> Result<FlowUpdate, SpecError> {
        let max_running = match self.max_running {
            Some(Some(n)) => {
                let n = u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=MAX_RUNNING).contains(n))
                    .ok_or_else(|| SpecError {
                        field: "max_running",
                        message: format!(
                            "must be between 1 and {MAX_RUNNING}, got {n} (to stop starts, pause the type; null removes the limit)"
                        ),
                    })?;
                Some(Some(n))
            }
            other => other.map(|_| None),
        };
        if let Some(Some(rate)) = self.rate_limit {
            if !(1..=MAX_RATE_JOBS).contains(&rate.jobs) {
                return Err(SpecError {
                    field: "rate_limit.jobs",
                    message: format!("must be between 1 and {MAX_RATE_JOBS}, got {}", rate.jobs),
                });
            }
            let (shortest, longest) = RATE_SECONDS;
            if !(rate.per_seconds.is_finite() && (shortest..=longest).contains(&rate.per_seconds)) {
                return Err(SpecError {
                    field: "rate_limit.per_seconds",
                    message: format!(
                        "must be between {shortest} and {longest} seconds, got {}",
                        rate.per_seconds
                    ),
                });
            }
            let per_second = f64::from(rate.jobs) / rate.per_seconds;
            if per_second > MAX_RATE_PER_SECOND {
                return Err(SpecError {
                    field: "rate_limit",
                    message: format!(
                        "at most {MAX_RATE_PER_SECOND} starts a second can be limited (each start takes a token message); {} per {} s is {per_second:.0} a second",
                        rate.jobs, rate.per_seconds
                    ),
                });
            }
        }
        Ok(FlowUpdate {
            paused: self.paused,
            max_running,
            rate_limit: self.rate_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn change(body: serde_json::Value) -> Result<FlowUpdate, SpecError> {
        serde_json::from_value::<FlowChange>(body)
            .unwrap()
            .validate()
    }

    #[test]
    fn absent_null_and_values_mean_unchanged_removed_and_set() {
        assert_eq!(change(json!({})).unwrap(), FlowUpdate::default());
        let update = change(json!({"max_running": null, "paused": true})).unwrap();
        assert_eq!(update.max_running, Some(None));
        assert_eq!(update.paused, Some(true));
        assert_eq!(update.rate_limit, None);
        let update =
            change(json!({"max_running": 5, "rate_limit": {"jobs": 10, "per_seconds": 1}}))
                .unwrap();
        assert_eq!(update.max_running, Some(Some(5)));
        let settings = QueueSettings::unset(JobType::parse("echo").unwrap()).with(&update, 1);
        assert_eq!((settings.generation, settings.slots_epoch), (1, 1));
        assert_eq!(settings.max_running, Some(5));
        assert_eq!(settings.rate_limit.unwrap().jobs, 10);
        let removed = settings.with(&change(json!({"rate_limit": null})).unwrap(), 2);
        assert_eq!(removed.rate_limit, None);
        assert_eq!(removed.max_running, Some(5));
        // The slot tokens of epoch 1 stay valid: only max_running starts a new epoch.
        assert_eq!((removed.generation, removed.slots_epoch), (2, 1));
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        for (body, field) in [
            (json!({"max_running": 0}), "max_running"),
            (json!({"max_running": 1_001}), "max_running"),
            (
                json!({"rate_limit": {"jobs": 1000, "per_seconds": 0.1}}),
                "rate_limit",
            ),
            (
                json!({"rate_limit": {"jobs": 0, "per_seconds": 1}}),
                "rate_limit.jobs",
            ),
            (
                json!({"rate_limit": {"jobs": 5, "per_seconds": 0}}),
                "rate_limit.per_seconds",
            ),
        ] {
            assert_eq!(change(body.clone()).unwrap_err().field, field, "{body}");
        }
    }
}

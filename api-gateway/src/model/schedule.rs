//! A recurring schedule: a cron pattern in a time zone that makes a normal job at each due
//! time. The record, and the pure rules of when it is due and what firing it does.
//!
//! - [`Cadence`]: the parsed pattern (5 fields, `@hourly`-style shortcuts, and a 6-field form
//!   with seconds first) in an IANA time zone; when it is next due. Daylight-saving changes
//!   follow croner's rules (the Open Cron Pattern Specification, as Vixie cron): a fixed time
//!   that falls in the skipped hour runs at the first minute after the gap (02:30 on the night
//!   clocks spring forward runs at 03:00), and one in a repeated hour runs once, at its first
//!   occurrence.
//! - [`plan`]: what one round does to a due schedule, as a pure function: the job to make (its
//!   id derived from the schedule and the due time, so one due time can never make two jobs,
//!   whichever gateway fires it and however often), the due times skipped because they are
//!   more than the misfire grace late (a gateway was down), and the next due time.
//!
//! The loop in every gateway that fires due schedules is the schedule service's.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::{Cron, parser::CronParser, parser::Seconds};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warren_shared::{JobId, JobType, Priority};

use super::{Job, RawJson};

/// A recurring schedule, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Schedule {
    /// The schedule's id.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// The tenant it belongs to, and the jobs it makes.
    #[schema(example = "default")]
    pub tenant: String,
    /// The cron pattern.
    #[schema(example = "0 6 * * 1")]
    pub cron: String,
    /// The IANA time zone the pattern is read in.
    #[schema(example = "Europe/Paris")]
    pub timezone: String,
    /// The type of the jobs it makes.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub job_type: JobType,
    /// The payload of the jobs it makes (any JSON value).
    #[schema(value_type = serde_json::Value)]
    pub payload: RawJson,
    /// `max_attempts` of the jobs it makes (the default if unset).
    pub max_attempts: Option<u32>,
    /// `timeout_ms` of the jobs it makes (the default if unset).
    pub timeout_ms: Option<u64>,
    /// `callback_url` of the jobs it makes.
    pub callback_url: Option<String>,
    /// The `priority` of its jobs.
    pub priority: Priority,
    /// A paused schedule makes no jobs.
    pub paused: bool,
    /// When it is next due (not while paused).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The due time of the last job it made.
    pub last_run_at: Option<DateTime<Utc>>,
    /// The last job it made.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub last_job_id: Option<JobId>,
    /// Due times skipped because they were more than the misfire grace late.
    pub misfires: u64,
    /// When the last skip was recorded.
    pub last_misfire_at: Option<DateTime<Utc>>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A cron pattern read in a time zone.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: Cron,
    zone: Tz,
}

impl Cadence {
    /// Parses `pattern` and `timezone`, saying which one is wrong and why.
    pub fn parse(pattern: &str, timezone: &str) -> Result<Self, (&'static str, String)> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| {
                ("cron", format!("{pattern:?} is not a cron pattern ({e}); use 5 fields such as \"0 6 * * 1\", a shortcut such as @hourly, or 6 fields with seconds first"))
            })?;
        let zone = Tz::from_str(timezone).map_err(|_| {
            (
                "timezone",
                format!("{timezone:?} is not an IANA time zone such as UTC or Europe/Paris"),
            )
        })?;
        Ok(Self { cron, zone })
    }

    /// The first due time strictly after `after`.
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }
}

/// What one round does to a due schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// The schedule with its next due time, last run and misfires updated.
    pub schedule: Schedule,
    /// The job to make, if a due time was within the misfire grace.
    pub job: Option<Job>,
    /// Due times skipped as too late.
    pub misfired: u64,
}

/// The id of the job a schedule makes for `due`: a UUIDv7 whose time is the due time and whose
/// other bits are a digest of the schedule id and the due time. Two gateways firing the same
/// due time make the same id, so the second insert is a no-op.
#[must_use]
pub fn fire_id(schedule: Uuid, due: DateTime<Utc>) -> JobId {
    let millis = u64::try_from(due.timestamp_millis()).unwrap_or(0);
    let mut hasher = Sha256::new();
    hasher.update(schedule.as_bytes());
    hasher.update(millis.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0_u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&digest[..10]);
    bytes[6] = 0x70 | (bytes[6] & 0x0f); // version 7
    bytes[8] = 0x80 | (bytes[8] & 0x3f); // RFC 4122 variant
    JobId::from(Uuid::from_bytes(bytes))
}

/// Fires `schedule` at `now`: every due time up to `now` is walked; the latest one is fired if
/// it is at most `grace` late, every other one is a misfire (missed due times are coalesced,
/// as Celery beat and cron do: a gateway back from a long outage does not fire a burst).
/// `make_job` builds the job for a due time (with the schedule's settings and the given id).
pub fn plan(
    schedule: &Schedule,
    now: DateTime<Utc>,
    grace: chrono::Duration,
    make_job: &dyn Fn(&Schedule, JobId) -> Option<Job>,
) -> Fired {
    let mut updated = schedule.clone();
    let Ok(cadence) = Cadence::parse(&schedule.cron, &schedule.timezone) else {
        // Stored schedules are validated; one that no longer parses stops rather than loops.
        updated.paused = true;
        updated.next_run_at = None;
        return Fired {
            schedule: updated,
            job: None,
            misfired: 0,
        };
    };
    let mut fire_at = None;
    let mut misfired = 0;
    let mut due = schedule.next_run_at;
    while let Some(at) = due.filter(|at| *at <= now) {
        let next = cadence.next_after(at);
        let latest = next.is_none_or(|next| next > now);
        if latest && now - at <= grace {
            fire_at = Some(at);
        } else {
            misfired += 1;
        }
        due = next;
    }
    updated.next_run_at = due;
    updated.updated_at = now;
    let job =
        fire_at.and_then(|at| make_job(schedule, fire_id(schedule.id, at)).map(|job| (at, job)));
    if let Some((at, job)) = &job {
        updated.last_run_at = Some(*at);
        updated.last_job_id = Some(job.id);
    }
    if misfired > 0 {
        updated.misfires += misfired;
        updated.last_misfire_at = Some(now);
    }
    Fired {
        schedule: updated,
        job: job.map(|(_, job)| job),
        misfired,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn a_daily_0230_in_paris_follows_the_daylight_saving_changes() {
        let cadence = Cadence::parse("30 2 * * *", "Europe/Paris").unwrap();
        // 29 March 2026: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist: 03:00 CEST.
        assert_eq!(
            cadence.next_after(utc(2026, 3, 28, 12, 0)),
            Some(utc(2026, 3, 29, 1, 0))
        );
        assert_eq!(
            cadence.next_after(utc(2026, 3, 29, 1, 0)),
            Some(utc(2026, 3, 30, 0, 30))
        );
        // 25 October 2026: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice: once,
        // at the first (CEST, 00:30 UTC); the next day at 02:30 CET (01:30 UTC).
        assert_eq!(
            cadence.next_after(utc(2026, 10, 24, 12, 0)),
            Some(utc(2026, 10, 25, 0, 30))
        );
        assert_eq!(
            cadence.next_after(utc(2026, 10, 25, 0, 30)),
            Some(utc(2026, 10, 26, 1, 30))
        );
    }

    #[test]
    fn patterns_and_zones_are_checked_and_shortcuts_and_seconds_are_read() {
        assert_eq!(Cadence::parse("nope", "UTC").unwrap_err().0, "cron");
        assert_eq!(
            Cadence::parse("0 6 * * 1", "Mars/Olympus").unwrap_err().0,
            "timezone"
        );
        let hourly = Cadence::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            hourly.next_after(utc(2026, 1, 1, 5, 10)),
            Some(utc(2026, 1, 1, 6, 0))
        );
        let every_second = Cadence::parse("* * * * * *", "UTC").unwrap();
        let start = utc(2026, 1, 1, 0, 0);
        assert_eq!(
            every_second.next_after(start),
            Some(start + chrono::Duration::seconds(1))
        );
    }

    fn every_minute(next_run_at: DateTime<Utc>) -> Schedule {
        Schedule {
            tenant: "default".into(),
            id: Uuid::now_v7(),
            cron: "* * * * *".into(),
            timezone: "UTC".into(),
            job_type: JobType::parse("echo").unwrap(),
            payload: RawJson::from_value(&serde_json::json!({})),
            max_attempts: None,
            timeout_ms: None,
            callback_url: None,
            priority: Priority::Normal,
            paused: false,
            next_run_at: Some(next_run_at),
            last_run_at: None,
            last_job_id: None,
            misfires: 0,
            last_misfire_at: None,
            created_at: next_run_at,
            updated_at: next_run_at,
        }
    }

    /// A stand-in job maker: only the id matters to these rules.
    fn job_with(id: JobId) -> Option<Job> {
        let limits = crate::model::SpecLimits {
            default_timeout_ms: 1_000,
            max_timeout_ms: 1_000,
            max_delay: std::time::Duration::from_secs(1),
        };
        let valid = crate::model::JobSpec::new("echo", &serde_json::json!({}))
            .validate(&limits)
            .ok()?;
        Some(valid.into_job_of(id, crate::model::DEFAULT_TENANT, None))
    }

    #[test]
    fn missed_due_times_coalesce_into_the_latest_if_it_is_within_the_grace() {
        let schedule = every_minute(utc(2026, 1, 1, 12, 0));
        let now = utc(2026, 1, 1, 12, 5) + chrono::Duration::seconds(10);
        let make = |_: &Schedule, id: JobId| job_with(id);
        let fired = plan(&schedule, now, chrono::Duration::minutes(1), &make);
        let latest = utc(2026, 1, 1, 12, 5);
        assert_eq!(
            fired.job.map(|job| job.id),
            Some(fire_id(schedule.id, latest))
        );
        assert_eq!(fired.misfired, 5, "12:00 to 12:04 were skipped");
        assert_eq!(fired.schedule.next_run_at, Some(utc(2026, 1, 1, 12, 6)));
        assert_eq!(fired.schedule.last_run_at, Some(latest));
        assert_eq!(fired.schedule.misfires, 5);
        assert_eq!(fired.schedule.last_misfire_at, Some(now));

        let too_late = plan(&schedule, now, chrono::Duration::seconds(5), &make);
        assert!(too_late.job.is_none());
        assert_eq!(too_late.misfired, 6);
        assert_eq!(too_late.schedule.last_run_at, None);

        let early = plan(
            &every_minute(utc(2026, 1, 1, 13, 0)),
            now,
            chrono::Duration::minutes(1),
            &make,
        );
        assert!(early.job.is_none());
        assert_eq!(early.misfired, 0);
    }

    #[test]
    fn fire_ids_are_time_ordered_uuid_v7_and_the_same_for_the_same_due_time() {
        let schedule = Uuid::now_v7();
        let at = utc(2026, 6, 1, 6, 0);
        let id = fire_id(schedule, at);
        assert_eq!(id, fire_id(schedule, at));
        assert_ne!(id, fire_id(Uuid::now_v7(), at));
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert!(fire_id(schedule, at + chrono::Duration::minutes(1)).as_uuid() > id.as_uuid());
    }
}

//! Firing recurring schedules: every gateway, several times a second, asks the store to fire
//! the schedules that are due. The store claims each due schedule for one gateway and writes
//! its job and its next due time together; the job's id is derived from the due time, so a
//! due time makes one job however many gateways fire. The jobs carry an outbox mark and are
//! published here; a gateway that dies before publishing leaves them to the relay.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use warren_shared::{JobId, metrics::ReasonLabels, trace::TraceContext};

use super::{ScheduleService, spec_of};
use crate::model::{Job, Schedule, SpecLimits, schedule::plan};

/// How often due schedules are looked for.
const EVERY: Duration = Duration::from_millis(250);

/// The job a schedule makes, with the given id: the schedule's settings, validated as a
/// submit would be (`None`, and a warning, if they no longer pass).
pub fn job_for(schedule: &Schedule, id: JobId, limits: &SpecLimits) -> Option<Job> {
    match spec_of(schedule).validate(limits) {
        Ok(valid) => {
            let mut job = valid.into_job_of(id, &schedule.tenant, None);
            job.schedule_id = Some(schedule.id);
            Some(job)
        }
        Err(error) => {
            tracing::warn!(schedule_id = %schedule.id, %error, "a schedule's job is invalid; not fired");
            None
        }
    }
}

/// Fires due schedules until `stop` is cancelled; a due time more than `grace` late is skipped.
pub async fn run(service: ScheduleService, grace: Duration, stop: CancellationToken) {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        fire_once(&service, grace).await;
    }
}

/// One round.
pub async fn fire_once(service: &ScheduleService, grace: chrono::Duration) {
    let now = Utc::now();
    let limits = service.jobs.limits();
    let make_job = |schedule: &Schedule, id: JobId| job_for(schedule, id, limits);
    let planner = |schedule: &Schedule| plan(schedule, now, grace, &make_job);
    let round = match service.store.fire_due(now, &planner).await {
        Ok(round) => round,
        Err(error) => {
            tracing::warn!(%error, "cannot fire schedules; retrying shortly");
            return;
        }
    };
    let count = |outcome: &str, n: u64| {
        let labels = ReasonLabels {
            reason: outcome.to_owned(),
        };
        service
            .jobs
            .metrics()
            .schedule_fires
            .get_or_create(&labels)
            .inc_by(n);
    };
    if round.misfired > 0 {
        tracing::warn!(
            misfired = round.misfired,
            "schedule due times skipped: more than the misfire grace late"
        );
        count("misfired", round.misfired);
    }
    for job in round.jobs {
        let id = job.id;
        tracing::info!(job_id = %id, job_type = %job.job_type, "schedule fired");
        count("fired", 1);
        if let Err(error) = service
            .jobs
            .publish(job, None, &TraceContext::new_root())
            .await
        {
            tracing::warn!(%error, job_id = %id, "a fired job was not published");
        }
    }
}

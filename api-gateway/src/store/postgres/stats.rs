//! The job list (`GET /v1/jobs`: a page newest first, filtered) and the counts for the queue
//! overview (`GET /v1/queues`: unfinished jobs by type and status through the status index,
//! and the ones finished since a time through the `finished_at` index, in one query).

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use warren_shared::JobType;

use super::{
    super::{Job, ListQuery, StoreError, TypeCount},
    rows, saturating_i64,
};

/// One page of `query`, newest first.
pub(super) async fn list(pool: &Pool, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(rows::LIST).await?;
    let status = query.status.map(|s| s.as_str());
    let job_type = query.job_type.as_ref().map(JobType::as_str);
    let before = query.before.map(|id| id.as_uuid());
    let limit = saturating_i64(query.limit);
    let tenant = query.tenant.as_deref();
    let rows = client
        .query(&statement, &[&status, &job_type, &before, &limit, &tenant])
        .await?;
    rows.iter().map(rows::from_row).collect()
}

const COUNT_BY_TYPE: &str = "
    SELECT job_type, status, count(*) FROM warren_jobs
     WHERE status IN ('scheduled', 'queued', 'running', 'retrying')
       AND ($1::text IS NULL OR tenant = $1)
     GROUP BY job_type, status
    UNION ALL
    SELECT job_type, status, count(*) FROM warren_jobs
     WHERE finished_at >= $2 AND ($1::text IS NULL OR tenant = $1)
     GROUP BY job_type, status";

pub(super) async fn count_by_type(
    pool: &Pool,
    tenant: Option<&str>,
    finished_since: DateTime<Utc>,
) -> Result<Vec<TypeCount>, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(COUNT_BY_TYPE).await?;
    let corrupt = |column: &str| StoreError::Corrupt(format!("unreadable {column} in warren_jobs"));
    client
        .query(&statement, &[&tenant, &finished_since])
        .await?
        .iter()
        .map(|row| {
            let job_type: String = row.try_get(0).map_err(|_| corrupt("job_type"))?;
            let status: String = row.try_get(1).map_err(|_| corrupt("status"))?;
            let count: i64 = row.try_get(2).map_err(|_| corrupt("count"))?;
            Ok(TypeCount {
                job_type: JobType::parse(job_type).map_err(|_| corrupt("job_type"))?,
                status: status.parse().map_err(|_| corrupt("status"))?,
                count: u64::try_from(count).unwrap_or(0),
            })
        })
        .collect()
}

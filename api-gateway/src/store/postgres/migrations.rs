//! The schema's migrations, applied at start in one transaction under an advisory lock, so
//! gateways starting together apply each one once.

use deadpool_postgres::Pool;

use super::super::StoreError;

/// The schema's versions, applied in order.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_jobs.sql")),
    (2, include_str!("../migrations/0002_outbox.sql")),
    (3, include_str!("../migrations/0003_scheduled.sql")),
    (4, include_str!("../migrations/0004_schedules.sql")),
    (5, include_str!("../migrations/0005_callbacks.sql")),
    (6, include_str!("../migrations/0006_tenants.sql")),
    (7, include_str!("../migrations/0007_error_history.sql")),
    (8, include_str!("../migrations/0008_schedule_id.sql")),
    (9, include_str!("../migrations/0009_workflows.sql")),
    (10, include_str!("../migrations/0010_priority.sql")),
    (11, include_str!("../migrations/0011_queue_settings.sql")),
];
/// The advisory lock that serialises migrations ("WARREN" in ASCII).
const MIGRATION_LOCK: i64 = 0x5741_5252_454e;
pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS warren_schema_migrations (
            version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM warren_schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if !applied.contains(version) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO warren_schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!(version, "database migration applied");
        }
    }
    tx.commit().await?;
    Ok(())
}

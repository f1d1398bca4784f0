//! The PostgreSQL store: shared by gateways, durable across restarts, consistent under
//! concurrent events, and ridden out while it is down. Rules both stores must follow
//! (idempotency keys, pagination, retention) run against both.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use futures_util::StreamExt;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use warren_gateway::{
    model::{Job, JobSpec, SpecLimits},
    store::{Applied, Ignored, Inserted, JobStore, KeyClaim, MemoryStore, PostgresStore},
};
use warren_shared::{JobEvent, JobId, JobStatus, V1, message, topology};
use warren_worker::{Worker, handlers};

use crate::{
    helpers::{DEADLINE, TestApp, TestSchema, spawn_app_with},
    proxy::Proxy,
};

async fn pg_app(url: &str, namespace: Option<&str>) -> TestApp {
    let (url, namespace) = (url.to_owned(), namespace.map(str::to_owned));
    spawn_app_with(move |config| {
        config.database_url = Some(url);
        if let Some(namespace) = namespace {
            config.broker.namespace = namespace;
        }
    })
    .await
}

fn new_job() -> Job {
    let limits = SpecLimits {
        default_timeout_ms: 1_000,
        max_timeout_ms: 10_000,
        max_delay: std::time::Duration::from_secs(86_400),
    };
    JobSpec::new("echo", &json!({}))
        .validate(&limits)
        .unwrap()
        .into_job()
}

fn event(id: JobId, status: JobStatus, seq: u64, at: chrono::DateTime<Utc>) -> JobEvent {
    JobEvent {
        traceparent: None,
        v: V1,
        id,
        job_type: "echo".parse().unwrap(),
        status,
        attempt: 1,
        seq,
        progress: None,
        result: None,
        error: None,
        next_attempt_at: None,
        worker: "test".into(),
        at,
    }
}

#[tokio::test]
async fn two_gateways_on_one_database_share_jobs_and_wake_each_others_waiters() {
    let schema = TestSchema::create().await;
    let mut first = pg_app(&schema.url(), None).await;
    let second = pg_app(&schema.url(), Some(&first.broker.namespace)).await;
    first
        .spawn_worker(Worker::builder().handler("sleep", handlers::sleep))
        .await;

    let id = first
        .submit_ok(&json!({"type": "sleep", "payload": {"ms": 300}}))
        .await;
    assert_eq!(second.job(&id).await["id"], id.as_str());
    let started = Instant::now();
    let job: Value = second
        .get(&format!("/v1/jobs/{id}?wait=10"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the long poll woke only at its deadline"
    );

    second.stop_processes().await;
    first.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_gateway_restart_keeps_every_job() {
    let schema = TestSchema::create().await;
    let mut app = pg_app(&schema.url(), None).await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;
    app.declare_idle_queue("held").await;
    let mut done = Vec::new();
    for n in 0..5 {
        done.push(app.submit_ok(&json!({"type": "echo", "payload": n})).await);
    }
    for id in &done {
        app.wait_for_status(id, "succeeded").await;
    }
    // One gateway: every job's events were applied from its copy of the record.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let applied_from_copies: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("warren_store_events_applied_total{path=\"copy\"} "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no copy-path series in {metrics}"));
    assert!(applied_from_copies >= 5, "{metrics}");
    // Every job's two store calls are timed: its insert and the apply of its outcome.
    for (operation, at_least) in [("insert", 5), ("apply_events", 1)] {
        let series =
            format!("warren_store_call_duration_seconds_count{{operation=\"{operation}\"}} ");
        let timed: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series}series in {metrics}"));
        assert!(timed >= at_least, "{operation}: {timed} calls timed");
    }
    let queued = app.submit_ok(&json!({"type": "held"})).await;
    let (namespace, job_types) = (app.broker.namespace.clone(), app.job_types.clone());
    app.stop_processes().await;

    let mut restarted = pg_app(&schema.url(), Some(&namespace)).await;
    restarted.job_types = job_types;
    for (n, id) in done.iter().enumerate() {
        let job = restarted.job(id).await;
        assert_eq!(
            (&job["status"], &job["result"]),
            (&json!("succeeded"), &json!(n))
        );
    }
    assert_eq!(restarted.job(&queued).await["status"], "queued");
    restarted.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn concurrent_conflicting_events_leave_exactly_one_outcome() {
    let schema = TestSchema::create().await;
    let store = Arc::new(PostgresStore::connect(&schema.url()).await.unwrap());
    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let job = new_job();
        ids.push(job.id);
        store.insert(job.clone(), None).await.unwrap();
        for (status, seq) in [(JobStatus::Succeeded, 2), (JobStatus::Failed, 3)] {
            let (store, event) = (store.clone(), event(job.id, status, seq, Utc::now()));
            tasks.push(tokio::spawn(async move {
                (event.status, store.apply_event(&event).await.unwrap())
            }));
        }
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (status, Applied::Updated(job)) => winners.push((job.id, status)),
            (_, Applied::Ignored(reason)) => assert_eq!(reason, Ignored::AlreadyTerminal),
            (_, Applied::UnknownJob) => panic!("the job exists"),
        }
    }
    assert_eq!(winners.len(), 20, "each job has exactly one outcome");
    for (id, status) in winners {
        let job = store.get(id).await.unwrap().unwrap();
        assert_eq!((job.status, job.version), (status, 1));
    }
    schema.drop_schema().await;
}

/// A job submitted through this gateway has its events applied from the gateway's copy of
/// its record, in one round trip; the row that writes is the row the locked path writes, and
/// a copy whose row has moved on (here: cancelled) is never written.
#[tokio::test]
async fn events_applied_from_a_copy_write_what_the_locked_path_writes() {
    let schema = TestSchema::create().await;
    let store = PostgresStore::connect(&schema.url()).await.unwrap();
    // Through the group committer the store keeps a copy; through `insert_batch`, none.
    let copied = new_job();
    store.insert(copied.clone(), None).await.unwrap();
    let read = new_job();
    let inserted = store.insert_batch(&[(read.clone(), None)]).await.unwrap();
    assert!(matches!(inserted[..], [Ok(Inserted::New)]));
    let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let mut events = Vec::new();
    for id in [copied.id, read.id] {
        let mut done = event(id, JobStatus::Succeeded, 2, at);
        done.result = Some(json!({"rows": [1, 2]}));
        events.extend([event(id, JobStatus::Running, 1, at), done]);
    }
    let applied = store.apply_events(&events).await.unwrap();
    assert!(
        applied.iter().all(|a| matches!(a, Applied::Updated(_))),
        "{applied:?}"
    );
    assert_eq!(store.apply_paths(), (2, 2), "(from copies, under locks)");
    let from_copy = store.get(copied.id).await.unwrap().unwrap();
    let mut from_lock = store.get(read.id).await.unwrap().unwrap();
    assert_eq!(
        (from_copy.status, from_copy.version),
        (JobStatus::Succeeded, 2)
    );
    (from_lock.id, from_lock.created_at) = (from_copy.id, from_copy.created_at);
    assert_eq!(from_copy, from_lock);

    let cancelled = new_job();
    store.insert(cancelled.clone(), None).await.unwrap();
    store.cancel(cancelled.id).await.unwrap();
    let late = event(cancelled.id, JobStatus::Succeeded, 1, at);
    store.apply_event(&late).await.unwrap();
    let job = store.get(cancelled.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Cancelled, "a stale copy was written");
    assert_eq!(
        store.apply_paths(),
        (2, 3),
        "the stale copy's event took the lock"
    );

    // An event the copy would ignore is decided on the row: all that job's events take the lock.
    let late_news = new_job();
    store.insert(late_news.clone(), None).await.unwrap();
    let events = [
        event(late_news.id, JobStatus::Succeeded, 2, at),
        event(late_news.id, JobStatus::Running, 1, at),
    ];
    let applied = store.apply_events(&events).await.unwrap();
    assert!(matches!(&applied[0], Applied::Updated(job) if job.status == JobStatus::Succeeded));
    assert_eq!(applied[1], Applied::Ignored(Ignored::AlreadyTerminal));
    assert_eq!(store.apply_paths(), (2, 5));
    schema.drop_schema().await;
}

#[tokio::test]
async fn gateways_starting_together_migrate_once() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    a.unwrap();
    b.unwrap();
    let (client, connection) = tokio_postgres::connect(&schema.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query("SELECT version FROM warren_schema_migrations", &[])
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        "each migration applied exactly once"
    );
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_store_outage_answers_503_and_events_wait_until_it_is_back() {
    let schema = TestSchema::create().await;
    let proxy = Proxy::to("127.0.0.1:5432").await;
    let mut app = pg_app(&schema.url_via(&proxy.addr.to_string()), None).await;
    app.spawn_worker(Worker::builder().handler("sleep", handlers::sleep))
        .await;
    let mut events = topology::subscribe_exclusive(
        &app.channel,
        app.topology().events_exchange(),
        "#",
        FieldTable::default(),
    )
    .await
    .unwrap();
    let id = app
        .submit_ok(&json!({"type": "sleep", "payload": {"ms": 200}}))
        .await;

    proxy.cut();
    let started = Instant::now();
    while app.get("/readyz").await.status() != 503 {
        assert!(started.elapsed() < DEADLINE, "/readyz never said 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.submit(&json!({"type": "sleep", "payload": {"ms": 1}}))
            .await
            .status(),
        503
    );
    // The worker finishes while the store is down; its outcome has to wait in RabbitMQ.
    let finished = async {
        while let Some(Ok(delivery)) = events.next().await {
            let event: JobEvent = message::decode(&delivery.data).unwrap();
            if event.id.to_string() == id && event.status == JobStatus::Succeeded {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, finished).await.unwrap();

    proxy.restore();
    // Right after the heal a read may still meet a pooled connection the cut broke (a 503 that
    // says try again, which is right); the job must succeed and readiness come back.
    let healed = Instant::now();
    loop {
        let response = app.get(&format!("/v1/jobs/{id}")).await;
        let status = response.status();
        if status == 200 {
            let job: Value = response.json().await.unwrap();
            if job["status"] == "succeeded" {
                break;
            }
        } else {
            assert_eq!(status, 503, "a read after the heal answered {status}");
        }
        assert!(
            healed.elapsed() < DEADLINE,
            "the job never succeeded after the heal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while app.get("/readyz").await.status() != 200 {
        assert!(
            healed.elapsed() < DEADLINE,
            "/readyz never came back to 200"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
    schema.drop_schema().await;
}

fn claim(key: &str, hash: &str) -> Option<KeyClaim> {
    Some(KeyClaim {
        key: key.to_owned(),
        request_hash: hash.to_owned(),
    })
}

/// Idempotency-key rules at the store: a key is stored with its job; the same key and hash
/// replay that job, another hash is a mismatch, and neither stores a second record; a
/// forgotten key is free again.
async fn key_rules(store: &dyn JobStore) {
    let (a, b) = (new_job(), new_job());
    let insert = |job: &Job, key, hash| store.insert(job.clone(), claim(key, hash));
    assert_eq!(insert(&a, "k", "h1").await.unwrap(), Inserted::New);
    assert_eq!(insert(&b, "k", "h1").await.unwrap(), Inserted::Replay(a.id));
    assert_eq!(insert(&b, "k", "h2").await.unwrap(), Inserted::KeyMismatch);
    assert!(
        store.get(b.id).await.unwrap().is_none(),
        "a replay stored a record"
    );
    let stored = store.get(a.id).await.unwrap().unwrap();
    assert!(
        stored.unconfirmed_since.is_some(),
        "a new record carries the outbox mark"
    );
    store.forget_key("k").await.unwrap();
    assert_eq!(insert(&b, "k", "h1").await.unwrap(), Inserted::New);
}

/// Retention at the store: only terminal jobs finished before the cutoff go.
async fn purge_rules(store: &dyn JobStore) {
    let (old, recent, unfinished) = (new_job(), new_job(), new_job());
    for job in [&old, &recent, &unfinished] {
        store.insert(job.clone(), None).await.unwrap();
    }
    let long_ago = Utc::now() - chrono::Duration::days(10);
    store
        .apply_event(&event(old.id, JobStatus::Succeeded, 1, long_ago))
        .await
        .unwrap();
    store
        .apply_event(&event(recent.id, JobStatus::Succeeded, 1, Utc::now()))
        .await
        .unwrap();
    let cutoff = Utc::now() - chrono::Duration::days(7);
    assert_eq!(store.purge(cutoff, cutoff).await.unwrap(), 1);
    assert!(store.get(old.id).await.unwrap().is_none());
    assert!(store.get(recent.id).await.unwrap().is_some());
    assert!(store.get(unfinished.id).await.unwrap().is_some());
}

#[tokio::test]
async fn both_stores_keep_the_idempotency_and_retention_rules() {
    let schema = TestSchema::create().await;
    let postgres = PostgresStore::connect(&schema.url()).await.unwrap();
    for store in [&MemoryStore::new() as &dyn JobStore, &postgres] {
        key_rules(store).await;
        purge_rules(store).await;
    }
    schema.drop_schema().await;
}

/// Same key and body → the same job and one message; another body → 422; a bad key → 400.
async fn idempotent_submits(app: &mut TestApp) {
    app.declare_idle_queue("held").await;
    let submit = |key: &'static str, body: Value| {
        app.client
            .post(format!("{}/v1/jobs", app.address))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let body = json!({"type": "held", "payload": {"order": 42}});
    let first = submit("order-42", body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = submit("order-42", body).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        app.queued_messages("held").await,
        1,
        "a replay published a second message"
    );

    let other = submit(
        "order-42",
        json!({"type": "held", "payload": {"order": 43}}),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 422);
    let bad = submit("has space", json!({"type": "held"})).await.unwrap();
    assert_eq!(bad.status(), 400);
}

/// Walks every page while new jobs arrive: each job that existed is seen exactly once.
async fn pagination(app: &mut TestApp) {
    app.declare_idle_queue("paged").await;
    let mut existing = Vec::new();
    for _ in 0..25 {
        existing.push(app.submit_ok(&json!({"type": "paged"})).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?type=paged&limit=10&cursor={c}"),
            None => "/v1/jobs?type=paged&limit=10".to_owned(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        app.submit_ok(&json!({"type": "paged"})).await; // a newcomer must not disturb the walk
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    existing.reverse();
    assert_eq!(seen, existing, "newest first, each exactly once");
    for bad in [
        "limit=0",
        "limit=501",
        "status=done",
        "cursor=nope",
        "type=Bad%20Type",
    ] {
        assert_eq!(
            app.get(&format!("/v1/jobs?{bad}")).await.status(),
            400,
            "{bad}"
        );
    }
    let queued: Value = app
        .get("/v1/jobs?status=queued&type=paged&limit=500")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 25 + 3);
}

#[tokio::test]
async fn idempotency_and_pagination_in_memory() {
    let mut app = spawn_app_with(|_| {}).await;
    idempotent_submits(&mut app).await;
    pagination(&mut app).await;
    app.stop().await;
}

#[tokio::test]
async fn idempotency_and_pagination_in_postgres() {
    let schema = TestSchema::create().await;
    let mut app = pg_app(&schema.url(), None).await;
    idempotent_submits(&mut app).await;
    pagination(&mut app).await;
    app.stop().await;
    schema.drop_schema().await;
}

/// The URL takes several hosts, as libpq's does: with `target_session_attrs=read-write` new
/// connections go to whichever host accepts writes (here the first host is down), which is how
/// a gateway follows a promoted standby (README, "The job store").
#[tokio::test]
async fn a_url_with_several_hosts_uses_the_one_that_takes_writes() {
    let schema = TestSchema::create().await;
    let single = schema.url();
    let rest = single.strip_prefix("postgresql://postgres@").unwrap();
    let (host_port, path) = rest.split_once('/').unwrap();
    let url = format!(
        "postgresql://postgres@127.0.0.1:1,{host_port}/{}&target_session_attrs=read-write",
        path
    );
    let store = PostgresStore::connect(&url).await.unwrap();
    let job = new_job();
    store.insert(job.clone(), None).await.unwrap();
    assert_eq!(store.get(job.id).await.unwrap().map(|j| j.id), Some(job.id));
    schema.drop_schema().await;
}

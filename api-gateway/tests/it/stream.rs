//! `GET /v1/jobs/{id}/events`: Server-Sent Events in order, resumable, closing at the end.

use chrono::Utc;
use serde_json::{Value, json};
use warren_shared::{JobEvent, JobStatus, JobType, Progress, V1};

use crate::helpers::{DEADLINE, TestApp, spawn_app};

/// One parsed SSE event.
#[derive(Debug)]
struct SseEvent {
    id: u64,
    name: String,
    job: Value,
}

/// Reads events off a streaming response.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn open(app: &TestApp, id: &str, last_event_id: Option<u64>) -> reqwest::Response {
        let mut request = app
            .client
            .get(format!("{}/v1/jobs/{id}/events", app.address));
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last.to_string());
        }
        request.send().await.unwrap()
    }

    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` once the server has closed the stream.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(str::trim)
                        .map(str::to_owned)
                };
                if let (Some(id), Some(name), Some(data)) =
                    (field("id:"), field("event:"), field("data:"))
                {
                    return Some(SseEvent {
                        id: id.parse().unwrap(),
                        name,
                        job: serde_json::from_str(&data).unwrap(),
                    });
                }
                continue; // a keep-alive comment
            }
            let chunk = tokio::time::timeout(DEADLINE, self.response.chunk())
                .await
                .unwrap()
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk?).unwrap());
        }
    }
}

fn event(id: &str, status: JobStatus, seq: u64, percent: Option<u8>) -> JobEvent {
    JobEvent {
        traceparent: None,
        v: V1,
        id: id.parse().unwrap(),
        job_type: JobType::parse("held").unwrap(),
        status,
        attempt: 1,
        seq,
        progress: percent.map(|percent| Progress {
            percent,
            message: None,
        }),
        result: (status == JobStatus::Succeeded).then(|| json!("done")),
        error: None,
        next_attempt_at: None,
        worker: "test".into(),
        at: Utc::now(),
    }
}

#[tokio::test]
async fn every_change_streams_in_order_and_the_stream_ends_after_the_terminal_one() {
    let mut app = spawn_app().await;
    app.declare_idle_queue("held").await;
    let id = app.submit_ok(&json!({"type": "held"})).await;
    let mut stream = SseReader::new(SseReader::open(&app, &id, None).await);

    let first = stream.next().await.unwrap();
    assert_eq!((first.id, first.name.as_str()), (0, "queued"));
    // A second `running` that says nothing new (a delayed announcement after a progress
    // report) is not a change: it streams nothing, so the next event still has id 3.
    let steps = [
        (
            event(&id, JobStatus::Running, 1, None),
            Some((1, "running")),
        ),
        (
            event(&id, JobStatus::Running, 2, Some(50)),
            Some((2, "running")),
        ),
        (event(&id, JobStatus::Running, 3, Some(50)), None),
        (
            event(&id, JobStatus::Succeeded, 4, Some(100)),
            Some((3, "succeeded")),
        ),
    ];
    for (step, expected) in steps {
        app.publish_event(&step).await;
        if let Some(expected) = expected {
            let got = stream.next().await.unwrap();
            assert_eq!((got.id, got.name.as_str()), expected, "{got:?}");
        }
    }
    assert_eq!(
        stream.next().await.map(|e| e.id),
        None,
        "the stream should end after succeeded"
    );
    app.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_without_repetition_and_a_seen_ending_is_204() {
    let mut app = spawn_app().await;
    app.declare_idle_queue("held").await;
    let id = app.submit_ok(&json!({"type": "held"})).await;
    let mut stream = SseReader::new(SseReader::open(&app, &id, None).await);
    stream.next().await.unwrap();
    app.publish_event(&event(&id, JobStatus::Running, 1, None))
        .await;
    let seen = stream.next().await.unwrap();
    drop(stream);

    app.publish_event(&event(&id, JobStatus::Running, 2, Some(50)))
        .await;
    app.publish_event(&event(&id, JobStatus::Succeeded, 3, Some(100)))
        .await;
    app.wait_for_status(&id, "succeeded").await;

    let mut resumed = SseReader::new(SseReader::open(&app, &id, Some(seen.id)).await);
    let mut ids = Vec::new();
    let mut last = None;
    while let Some(event) = resumed.next().await {
        ids.push(event.id);
        last = Some(event);
    }
    assert!(
        ids.iter().all(|&i| i > seen.id) && ids.is_sorted(),
        "{ids:?}"
    );
    let last = last.unwrap();
    assert_eq!(
        (last.name.as_str(), &last.job["result"]),
        ("succeeded", &json!("done"))
    );
    assert_eq!(last.job["progress"]["percent"], 100);

    let again = SseReader::open(&app, &id, Some(last.id)).await;
    assert_eq!(again.status(), 204);
    app.stop().await;
}

#[tokio::test]
async fn bad_ids_are_refused_before_streaming() {
    let app = spawn_app().await;
    let unknown = SseReader::open(&app, "0193a3f0-0000-7000-8000-000000000001", None).await;
    assert_eq!(unknown.status(), 404);
    let malformed = SseReader::open(&app, "nope", None).await;
    assert_eq!(malformed.status(), 400);
    app.stop().await;
}

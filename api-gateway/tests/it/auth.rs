//! API keys: open mode, `401`/`403`, revocation reaching another gateway, secrets kept only
//! as digests, and per-key rate limits with their headers.

use std::time::{Duration, Instant};

use reqwest::{Method, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warren_gateway::{GatewayConfig, auth::AdminKey};

use crate::helpers::{TestApp, TestSchema, spawn_app, spawn_app_with};

pub const ADMIN: &str = "test-admin-key-0123456789";

/// Turns keys on.
pub fn with_admin(config: &mut GatewayConfig) {
    config.admin_key = Some(AdminKey::parse(ADMIN).unwrap());
}

/// Keys on, and the PostgreSQL store at `url` (gateways sharing it share keys and jobs).
pub fn keys_on_postgres(url: &str) -> impl Fn(&mut GatewayConfig) + '_ {
    move |config| {
        with_admin(config);
        config.database_url = Some(url.to_owned());
    }
}

/// A request to `app` with `key` as its bearer (none when `None`).
pub async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let mut request = app.client.request(method, format!("{}{path}", app.address));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

/// Makes a key with the operator's key; returns its record, secret included.
pub async fn make_key(app: &TestApp, request: &Value) -> Value {
    let response = call(app, Method::POST, "/v1/keys", Some(ADMIN), Some(request)).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

#[tokio::test]
async fn open_mode_needs_no_key_and_files_jobs_under_default() {
    let mut app = spawn_app().await;
    app.declare_idle_queue("echo").await;
    let job: Value = app
        .submit(&json!({"type": "echo"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["tenant"], "default");
    let keys = call(&app, Method::GET, "/v1/keys", None, None).await;
    assert_eq!(keys.status(), 200, "the operator's routes are open too");
    app.stop().await;
}

#[tokio::test]
async fn with_an_admin_key_protected_routes_need_a_known_key_and_probes_stay_open() {
    let mut app = spawn_app_with(with_admin).await;
    app.declare_idle_queue("echo").await;
    let body = json!({"type": "echo"});
    for (key, why) in [
        (None, "no key"),
        (Some("wrong-key-wrong-key-wrong"), "wrong key"),
        (
            Some("wrn_0193a3f07c1a7b0e8f000123456789ab_made-up"),
            "unknown key id",
        ),
    ] {
        for (method, path) in [
            (Method::POST, "/v1/jobs"),
            (Method::GET, "/v1/jobs"),
            (
                Method::GET,
                "/report-status/0193a3f0-7c1a-7b0e-8f00-0123456789ab",
            ),
        ] {
            let response = call(&app, method.clone(), path, key, Some(&body)).await;
            assert_eq!(response.status(), 401, "{why}: {method} {path}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["type"], "urn:warren:problem:unauthorized");
        }
    }
    for path in ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"] {
        assert_eq!(app.get(path).await.status(), 200, "{path} stays open");
    }
    let accepted = call(&app, Method::POST, "/v1/jobs", Some(ADMIN), Some(&body)).await;
    assert_eq!(accepted.status(), 202, "the operator's key works");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"warren_http_refused_total{tenant="unknown",reason="unauthorized"} 9"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(ADMIN),
        "the key never shows in the metrics"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_read_only_key_reads_but_cannot_submit_cancel_or_manage_keys() {
    let mut app = spawn_app_with(with_admin).await;
    app.declare_idle_queue("echo").await;
    let reader = make_key(&app, &json!({"tenant": "acme", "rights": ["read"]})).await;
    let secret = reader["key"].as_str().unwrap();
    assert_eq!(reader["rights"], json!(["read"]));
    let submitted = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(secret),
        Some(&json!({"type": "echo"})),
    )
    .await;
    assert_eq!(submitted.status(), 403);
    let problem: Value = submitted.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("submit right"),
        "{problem}"
    );
    let path = "/v1/jobs/0193a3f0-7c1a-7b0e-8f00-0123456789ab/cancel";
    let cancelled = call(&app, Method::POST, path, Some(secret), None).await;
    assert_eq!(cancelled.status(), 403, "cancelling needs the cancel right");
    let keys = call(&app, Method::GET, "/v1/keys", Some(secret), None).await;
    assert_eq!(keys.status(), 403, "listing keys needs the admin right");
    let list = call(&app, Method::GET, "/v1/jobs", Some(secret), None).await;
    assert_eq!(list.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_another_gateway_within_a_second() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let a = spawn_app_with(keys_on_postgres(&url)).await;
    let b = spawn_app_with(keys_on_postgres(&url)).await;
    let key = make_key(&a, &json!({"tenant": "acme", "name": "ci"})).await;
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    assert_eq!(
        call(&b, Method::GET, "/v1/jobs", Some(secret), None)
            .await
            .status(),
        200
    );
    let listed: Value = call(&b, Method::GET, "/v1/keys", Some(ADMIN), None)
        .await
        .json()
        .await
        .unwrap();
    let shown = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(shown["name"], "ci");
    assert!(
        shown.get("key").is_none() && !listed.to_string().contains(secret),
        "{listed}"
    );

    let revoked = call(
        &a,
        Method::DELETE,
        &format!("/v1/keys/{id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(revoked.status(), 204);
    let revoked_at = Instant::now();
    assert_eq!(
        call(&a, Method::GET, "/v1/jobs", Some(secret), None)
            .await
            .status(),
        401,
        "at once where it was revoked"
    );
    loop {
        let status = call(&b, Method::GET, "/v1/jobs", Some(secret), None)
            .await
            .status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "gateway B still takes the revoked key after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await;
    b.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn keys_are_stored_only_as_digests() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let app = spawn_app_with(keys_on_postgres(&url)).await;
    let key = make_key(&app, &json!({"tenant": "acme"})).await;
    let secret = key["key"].as_str().unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT row_to_json(k)::text, secret_sha256 FROM warren_api_keys k",
            &[],
        )
        .await
        .unwrap();
    let (stored, digest): (String, Vec<u8>) = (row.get(0), row.get(1));
    // `wrn_<key id>_<random>`: the random part is base64url, which may itself hold `_`, so it
    // is everything after the second `_` (a piece after the last `_` can be a character or two
    // that the row holds by chance).
    let secret_part = secret.splitn(3, '_').nth(2).unwrap();
    assert_eq!(secret_part.len(), 43, "{secret}");
    assert!(
        !stored.contains(secret_part),
        "the secret is stored in clear: {stored}"
    );
    assert_eq!(digest, Sha256::digest(secret.as_bytes()).to_vec());
    app.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_key_past_its_rate_gets_429s_with_the_headers_and_succeeds_after_retry_after() {
    let app = spawn_app_with(with_admin).await;
    let key = make_key(
        &app,
        &json!({"tenant": "acme", "rate_per_sec": 5, "burst": 5}),
    )
    .await;
    let secret = key["key"].as_str().unwrap();
    let started = Instant::now();
    let responses = futures_util::future::join_all(
        (0..50).map(|_| call(&app, Method::GET, "/v1/jobs", Some(secret), None)),
    )
    .await;
    let took = started.elapsed().as_secs_f64();
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<_> = responses.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(ok + limited.len(), 50);
    // The burst, plus what the rate refilled while the 50 were answered.
    let allowed = 5 + (took * 5.0).ceil() as usize;
    assert!(
        (5..=allowed).contains(&ok),
        "{ok} of 50 got through (at most {allowed} may)"
    );
    let refused = limited.first().expect("some requests were limited");
    let headers = refused.headers();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(headers["ratelimit-policy"], r#""default";q=5;w=1"#);
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""default";r=0;t="#)
    );
    let allowed_headers = responses
        .iter()
        .find(|r| r.status() == 200)
        .unwrap()
        .headers();
    assert!(
        allowed_headers.contains_key("ratelimit"),
        "allowed answers carry the headers too"
    );

    // What a client does: wait as told, then try again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let again = call(&app, Method::GET, "/v1/jobs", Some(secret), None).await;
    assert_eq!(again.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let series = format!(
        r#"warren_http_refused_total{{tenant="acme",reason="rate_limited"}} {}"#,
        limited.len()
    );
    assert!(metrics.contains(&series), "{series} in {metrics}");
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_admin_manages_only_its_own_tenants_keys() {
    let app = spawn_app_with(with_admin).await;
    let admin = make_key(&app, &json!({"tenant": "acme", "rights": ["admin"]})).await;
    let secret = admin["key"].as_str().unwrap();
    let other = make_key(&app, &json!({"tenant": "globex"})).await;
    let made = call(
        &app,
        Method::POST,
        "/v1/keys",
        Some(secret),
        Some(&json!({"tenant": "globex"})),
    )
    .await;
    assert_eq!(made.status(), 403);
    let own = call(
        &app,
        Method::POST,
        "/v1/keys",
        Some(secret),
        Some(&json!({"tenant": "acme"})),
    )
    .await;
    assert_eq!(own.status(), 201);
    let listed: Value = call(&app, Method::GET, "/v1/keys", Some(secret), None)
        .await
        .json()
        .await
        .unwrap();
    let tenants: Vec<&Value> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["tenant"])
        .collect();
    assert!(
        tenants.iter().all(|t| *t == "acme") && tenants.len() == 2,
        "{listed}"
    );
    let path = format!("/v1/keys/{}", other["id"].as_str().unwrap());
    assert_eq!(
        call(&app, Method::DELETE, &path, Some(secret), None)
            .await
            .status(),
        404
    );
    let bad = call(
        &app,
        Method::POST,
        "/v1/keys",
        Some(ADMIN),
        Some(&json!({"tenant": "Not A Tenant"})),
    )
    .await;
    assert_eq!(bad.status(), 422);
    app.stop().await;
}

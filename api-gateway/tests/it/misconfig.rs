//! Misconfiguration tells the operator what to fix: PostgreSQL's own words and the address
//! (never the password) when the store cannot be opened, the broker named as unreachable, secrets
//! never echoed, and the SSRF refusal naming its development switch.

use clap::Parser;
use serde_json::{Value, json};
use warren_gateway::{Application, GatewayConfig};

use crate::helpers::{spawn_app_with, spawn_unready_app_with, test_broker, unique_namespace};

/// Why a gateway on `database_url` does not start.
async fn startup_error(database_url: &str) -> String {
    let mut config = GatewayConfig::with_broker(test_broker(&unique_namespace()));
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(database_url.to_owned());
    match Application::build(config).await {
        Ok(_) => panic!("a gateway started on {database_url}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_says_why_in_postgresqls_words_and_where() {
    let missing = startup_error("postgresql://postgres:s3cret@127.0.0.1:5432/no_such_db").await;
    assert!(
        missing.contains(r#"database "no_such_db" does not exist"#)
            && missing.contains("127.0.0.1:5432")
            && missing.contains("WARREN_DATABASE_URL")
            && !missing.contains("(a bug"),
        "{missing}"
    );
    assert!(
        !missing.contains("s3cret"),
        "the password is shown: {missing}"
    );

    let closed = startup_error("postgresql://postgres@127.0.0.1:1/test").await;
    assert!(
        closed.contains("127.0.0.1:1") && closed.to_lowercase().contains("refused"),
        "{closed}"
    );
}

#[tokio::test]
async fn a_submit_without_a_broker_says_it_is_unreachable() {
    let app = spawn_unready_app_with(|config| {
        config.broker.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".parse().unwrap();
        config.publish_timeout_ms = 2_000;
    })
    .await;
    let response = app.submit(&json!({"type": "echo"})).await;
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("unreachable") && detail.contains("WARREN_AMQP_URL"),
        "{detail}"
    );
    app.stop().await;
}

#[test]
fn rejected_secrets_are_named_never_echoed() {
    for (flag, value, variable) in [
        ("--admin-key", "short-secret", "WARREN_ADMIN_KEY"),
        (
            "--webhook-secret",
            "whsec_not!base64",
            "WARREN_WEBHOOK_SECRET",
        ),
    ] {
        let error = GatewayConfig::try_parse_from(["api-gateway", flag, value])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains(variable), "{error}");
        assert!(!error.contains(value), "the secret is echoed: {error}");
    }
}

#[tokio::test]
async fn a_private_callback_url_is_refused_naming_the_development_switch() {
    let app = spawn_app_with(|config| {
        config.webhooks.secret = Some(
            warren_gateway::webhooks::Secret::parse(
                "whsec_Y29udHJhY3QtdGVzdC1vbmx5LXNlY3JldC0xMjM0",
            )
            .unwrap(),
        );
    })
    .await;
    let response = app
        .submit(&json!({"type": "echo", "callback_url": "http://127.0.0.1:9/hook"}))
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("WARREN_WEBHOOK_ALLOW_PRIVATE"),
        "{problem}"
    );
    app.stop().await;
}

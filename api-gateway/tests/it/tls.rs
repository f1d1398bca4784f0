//! TLS to RabbitMQ and PostgreSQL: against a broker with only an AMQPS listener and a database
//! that refuses unencrypted connections, both started by `scripts/tls-services.sh` beside the
//! machine's own services with a CA made for the test: a job goes end to end; an untrusted CA,
//! a certificate for another host name and a plaintext attempt are each refused and said so;
//! `sslmode=require` encrypts without checking, as libpq's does.

use std::{path::PathBuf, process::Command, sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use warren_gateway::{
    Application, GatewayConfig,
    store::{PostgresStore, StoreOptions, Stores},
};
use warren_shared::{amqp, config::BrokerConfig, tls::TlsConfig};
use warren_worker::{Worker, WorkerConfig, handlers};

use crate::helpers::unique_namespace;

/// The TLS services of this test process, stopped and deleted when dropped.
struct TlsServices {
    dir: PathBuf,
    amqps_port: u16,
    pg_port: u16,
    dist_port: u16,
}

impl TlsServices {
    fn script(&self, command: &str) -> std::process::Output {
        Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls-services.sh"))
            .arg(command)
            .env("WARREN_TLS_DIR", &self.dir)
            .env("WARREN_TLS_AMQPS_PORT", self.amqps_port.to_string())
            .env("WARREN_TLS_PG_PORT", self.pg_port.to_string())
            .env("WARREN_TLS_DIST_PORT", self.dist_port.to_string())
            .env(
                "WARREN_TLS_NODE",
                format!("warrentls{}@localhost", std::process::id()),
            )
            .output()
            .unwrap()
    }

    /// Starts them, or says why it cannot (not root, or a server not installed).
    fn up() -> Option<Self> {
        let usable = Command::new("sh")
            .args(["-c", "[ \"$(id -u)\" = 0 ] && command -v rabbitmq-server && command -v openssl && ls /usr/lib/postgresql/*/bin/initdb"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !usable {
            eprintln!(
                "SKIPPED: needs root, rabbitmq-server, openssl and PostgreSQL's server binaries"
            );
            return None;
        }
        // Ports the kernel has just handed out, so suites running side by side do not collide.
        let [amqps_port, pg_port, dist_port] = free_ports();
        let services = Self {
            dir: std::env::temp_dir().join(format!("warren-tls-{}", std::process::id())),
            amqps_port,
            pg_port,
            dist_port,
        };
        let output = services.script("up");
        assert!(
            output.status.success(),
            "tls-services.sh up failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Some(services)
    }

    fn ca(&self) -> TlsConfig {
        TlsConfig {
            ca_file: Some(self.dir.join("ca.pem")),
            ..TlsConfig::default()
        }
    }

    fn amqps_url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.amqps_port)
    }

    fn pg_url(&self, host: &str, sslmode: &str) -> String {
        format!(
            "postgresql://postgres@{host}:{}/postgres?sslmode={sslmode}",
            self.pg_port
        )
    }
}

/// Three distinct ports free on 127.0.0.1 a moment ago (each bound to port 0, then released).
fn free_ports() -> [u16; 3] {
    let listeners = [(); 3].map(|()| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    listeners.map(|listener| listener.local_addr().unwrap().port())
}

impl Drop for TlsServices {
    fn drop(&mut self) {
        let _ = self.script("down");
    }
}

/// Why a store on `url` trusting `tls` does not open.
async fn store_error(url: &str, tls: TlsConfig) -> String {
    let options = StoreOptions {
        tls,
        ..StoreOptions::default()
    };
    match PostgresStore::connect_with(url, options).await {
        Ok(_) => panic!("the store opened on {url}"),
        Err(error) => error.to_string(),
    }
}

/// Why a connection to `url` trusting `tls` is not made.
async fn broker_error(url: &str, tls: TlsConfig) -> String {
    let mut broker = BrokerConfig::new(url, &unique_namespace()).unwrap();
    broker.tls = tls;
    let pool = amqp::connection_pool(&broker, "tls-test", 1).unwrap();
    match amqp::connection(&pool).await {
        Ok(_) => panic!("connected to {url}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn tls_to_rabbitmq_and_postgresql_runs_jobs_and_refuses_what_it_should() {
    let Some(services) = TlsServices::up() else {
        return;
    };

    // A job end to end: gateway and worker over AMQPS, the store with verify-full.
    let mut broker =
        BrokerConfig::new(&services.amqps_url("localhost"), &unique_namespace()).unwrap();
    broker.tls = services.ca();
    let mut config = GatewayConfig::with_broker(broker.clone());
    config.shutdown.shutdown_grace_secs = 5;
    let url = services.pg_url("localhost", "verify-full");
    let store = PostgresStore::connect_with(&url, config.store_options())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::with_parts(config, listener, Stores::from(Arc::new(store))).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(app.run_until_stopped(async {
        let _ = gateway_stopped.await;
    }));
    let mut worker_config = WorkerConfig::with_broker(broker);
    worker_config.metrics_addr = "127.0.0.1:0".parse().unwrap();
    worker_config.shutdown.shutdown_grace_secs = 5;
    let worker = Worker::builder()
        .handler("echo", handlers::echo)
        .build(worker_config)
        .unwrap();
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));
    let client = crate::helpers::http_client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        let response = client
            .post(format!("{base}/v1/jobs"))
            .header("prefer", "wait=10")
            .json(&json!({"type": "echo", "payload": {"over": "tls"}}))
            .send()
            .await
            .unwrap();
        // 422 until the worker has declared the echo queue, 503 until the gateway is connected.
        if response.status().is_success() {
            break response.json::<Value>().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no job accepted over TLS: {} {}",
            response.status(),
            response.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"over": "tls"}));
    let _ = stop_gateway.send(());
    gateway.await.unwrap().unwrap();
    let _ = stop_worker.send(());
    worker.await.unwrap().unwrap();

    // An untrusted CA is refused, and said so, on both links.
    let untrusted = store_error(
        &services.pg_url("localhost", "verify-full"),
        TlsConfig::default(),
    )
    .await;
    assert!(
        untrusted.contains("not signed by a CA") && untrusted.contains("WARREN_TLS_CA_FILE"),
        "{untrusted}"
    );
    let untrusted = broker_error(&services.amqps_url("localhost"), TlsConfig::default()).await;
    assert!(
        untrusted.contains("not signed by a CA") && untrusted.contains("WARREN_AMQP_URL"),
        "{untrusted}"
    );
    // A certificate for another name (it names localhost, not 127.0.0.1).
    let wrong_name = store_error(&services.pg_url("127.0.0.1", "verify-full"), services.ca()).await;
    assert!(
        wrong_name.contains("does not name the host"),
        "{wrong_name}"
    );
    let wrong_name = broker_error(&services.amqps_url("127.0.0.1"), services.ca()).await;
    assert!(
        wrong_name.contains("does not name the host"),
        "{wrong_name}"
    );
    // verify-ca checks the chain only, so the address is fine there.
    PostgresStore::connect_with(
        &services.pg_url("127.0.0.1", "verify-ca"),
        StoreOptions {
            tls: services.ca(),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    // `require` encrypts without checking the certificate, as libpq's does.
    PostgresStore::connect(&services.pg_url("127.0.0.1", "require"))
        .await
        .unwrap();
    // No silent downgrade: plaintext is refused by the server, AMQP to the TLS port fails.
    let plaintext = store_error(&services.pg_url("localhost", "disable"), services.ca()).await;
    assert!(plaintext.contains("no encryption"), "{plaintext}");
    let plaintext = broker_error(
        &format!("amqp://guest:guest@localhost:{}/%2f", services.amqps_port),
        TlsConfig::default(),
    )
    .await;
    assert!(plaintext.contains("cannot connect"), "{plaintext}");
}

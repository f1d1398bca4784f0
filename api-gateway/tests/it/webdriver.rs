//! A small W3C WebDriver client for the dashboard's browser test: enough to drive Debian's
//! headless Chromium through `chromedriver` (open a page, find, click, type, accept a
//! confirmation, read text, take a screenshot). A dozen JSON calls over the HTTP client the
//! tests already have, instead of a WebDriver crate and its dependencies.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::helpers::{DEADLINE, http_client};

/// The element reference key of the W3C protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where `chromedriver` is, if installed (Debian's `chromium-driver`).
pub fn chromedriver() -> Option<std::path::PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.exists())
}

/// A browser session, and the driver process behind it (killed on drop).
pub struct Browser {
    client: reqwest::Client,
    session: String,
    _driver: Child,
}

impl Browser {
    /// Starts `chromedriver` on a free port and a headless Chromium session of `width` ×
    /// `height` pixels.
    pub async fn start(driver: &std::path::Path, width: u32, height: u32) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let client = http_client();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while client.get(format!("{base}/status")).send().await.is_err() {
            assert!(started.elapsed() < DEADLINE, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            &format!("--window-size={width},{height}"),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": {"args": args}}}});
        let created: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"));
        Self {
            session: format!("{base}/session/{session}"),
            client,
            _driver: process,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Opens `url`.
    pub async fn open(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// The element `selector` matches, once there is one (failing at the deadline).
    pub async fn find(&self, selector: &str) -> String {
        let started = Instant::now();
        loop {
            let found = self
                .post(
                    "/element",
                    json!({"using": "css selector", "value": selector}),
                )
                .await;
            if let Some(id) = found[ELEMENT].as_str() {
                return id.to_owned();
            }
            assert!(started.elapsed() < DEADLINE, "nothing matches {selector}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the element `selector` matches.
    pub async fn text(&self, selector: &str) -> String {
        let id = self.find(selector).await;
        let text = self
            .call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the text of `selector` satisfies `done`; returns it.
    pub async fn wait_for_text(&self, selector: &str, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.text(selector).await;
            if done(&text) {
                return text;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{selector} still reads {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `selector` matches.
    pub async fn click(&self, selector: &str) {
        let id = self.find(selector).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Types `text` into the element `selector` matches.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let id = self.find(selector).await;
        self.post(&format!("/element/{id}/value"), json!({"text": text}))
            .await;
    }

    /// Accepts the confirmation dialog that is open (waiting for it to open).
    pub async fn accept_dialog(&self) {
        let started = Instant::now();
        loop {
            let answer = self.post("/alert/accept", json!({})).await;
            if answer.is_null() {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "no dialog opened: {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .unwrap()
    }

    /// Ends the session.
    pub async fn quit(self) {
        self.call(reqwest::Method::DELETE, "", None).await;
    }
}

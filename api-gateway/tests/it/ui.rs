//! The dashboard's doors, without a browser: the sign-in form for a request without a key,
//! the cookie that signing in sets, and the CSRF rule for changes the cookie authenticates.

use reqwest::{Method, redirect::Policy};
use serde_json::json;

use crate::{
    auth::{ADMIN, call, make_key, with_admin},
    helpers::{spawn_app, spawn_app_with},
};

#[tokio::test]
async fn without_a_key_the_dashboard_answers_401_with_a_sign_in_form_and_signing_in_sets_a_cookie()
{
    let mut app = spawn_app_with(with_admin).await;
    app.declare_idle_queue("echo").await;
    let page = app.get("/ui").await;
    assert_eq!(page.status(), 401);
    assert_eq!(page.headers()["www-authenticate"], "Bearer");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(page.text().await.unwrap().contains("name=\"key\""));

    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let login = |key: &str| {
        client
            .post(format!("{}/ui/login", app.address))
            .header("content-type", "application/x-www-form-urlencoded")
            // The test's keys need no percent-encoding.
            .body(format!("key={key}"))
            .send()
    };
    let refused = login("not-a-key-not-a-key").await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("unknown or revoked"));
    let signed_in = login(ADMIN).await.unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(ADMIN),
        "the cookie does not carry the key as plain text"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();

    let with_cookie = |method: Method, path: &str| {
        client
            .request(method, format!("{}{path}", app.address))
            .header("cookie", pair.clone())
    };
    let dashboard = with_cookie(Method::GET, "/ui").send().await.unwrap();
    assert_eq!(dashboard.status(), 200);
    assert!(
        dashboard
            .text()
            .await
            .unwrap()
            .contains("signed in as operator")
    );
    assert_eq!(
        with_cookie(Method::GET, "/v1/jobs")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let body = json!({"type": "echo"});
    let forged = with_cookie(Method::POST, "/v1/jobs")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        403,
        "a change by cookie without x-warren-ui is refused"
    );
    let from_page = with_cookie(Method::POST, "/v1/jobs")
        .header("x-warren-ui", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(from_page.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn a_key_without_the_read_right_is_shown_why_and_open_mode_needs_no_sign_in() {
    let app = spawn_app_with(with_admin).await;
    let writer = make_key(&app, &json!({"tenant": "acme", "rights": ["submit"]})).await;
    let page = call(&app, Method::GET, "/ui", writer["key"].as_str(), None).await;
    assert_eq!(page.status(), 403);
    assert!(page.text().await.unwrap().contains("read right"));
    app.stop().await;

    let open = spawn_app().await;
    let page = open.get("/ui").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("open mode"));
    for asset in ["/ui/app.js", "/ui/style.css"] {
        assert_eq!(open.get(asset).await.status(), 200, "{asset}");
    }
    open.stop().await;
}

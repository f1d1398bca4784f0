//! `/ui`: the jobs dashboard, served by the gateway with nothing loaded from outside.
//!
//! The page is static HTML, CSS and a small script, embedded in the binary; everything it shows
//! comes from the public API (`/v1/queues`, `/v1/jobs`, SSE), so it obeys the same rights and
//! tenancy as any client and adds no second way to read the store. The script builds the page
//! with `textContent` only (never `innerHTML`), and the Content-Security-Policy allows no inline
//! script, so an id or payload can never run as code.
//!
//! With keys on, a browser cannot send `Authorization` on a page load, so `/ui` answers a
//! request without a valid key with `401` and a sign-in form; signing in puts the key in an
//! HTTP-only, same-site cookie that the gateway accepts like the header
//! ([`super::auth::Credentials`]).

use axum::{
    Form, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::{
    AppState,
    auth::{Credentials, KEY_COOKIE, key_cookie},
    problem::ApiError,
};
use crate::{
    auth::{AuthError, Caller},
    model::Right,
};

const INDEX: &str = include_str!("index.html");
const LOGIN: &str = include_str!("login.html");
const APP_JS: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// What the dashboard's pages may load and do: only this origin, no inline script, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// The dashboard's routes (not part of the API, so not in `/openapi.json`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(page))
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route("/ui/style.css", get(|| async { asset(STYLE, "text/css") }))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// An HTML page with the dashboard's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-type", "text/html; charset=utf-8"),
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, for HTML text and attribute values.
#[must_use]
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The sign-in form, with `message` (already plain text) above it.
fn login_page(status: StatusCode, message: &str) -> Response {
    let mut response = html(status, LOGIN.replace("{{message}}", &escape(message)));
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The dashboard for `caller`.
fn dashboard(state: &AppState, caller: &Caller) -> Response {
    let management = state
        .management_url
        .as_deref()
        .map_or_else(String::new, |url| {
            format!(
                "<li><a href=\"{}\" rel=\"noreferrer\">RabbitMQ management</a></li>",
                escape(url)
            )
        });
    let session = if state.auth.is_open() {
        "<span>open mode: no API keys</span>".to_owned()
    } else {
        format!(
            "<span>signed in as {}</span> <form method=\"post\" action=\"/ui/logout\"><button \
             type=\"submit\">Sign out</button></form>",
            escape(caller.label())
        )
    };
    let body = INDEX
        .replace("{{management}}", &management)
        .replace("{{session}}", &session);
    html(StatusCode::OK, body)
}

/// `GET /ui`: the dashboard, or the sign-in form (`401`) without a valid key.
async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let identified = match Credentials::of(&headers) {
        Ok(presented) => state.auth.identify(presented.secret()).await,
        Err(why) => Err(AuthError::Denied(why)),
    };
    match identified {
        Ok(caller) if caller.allows(Right::Read) => dashboard(&state, &caller),
        Ok(_) => login_page(
            StatusCode::FORBIDDEN,
            "This key does not hold the read right the dashboard needs.",
        ),
        Err(AuthError::Denied(_))
            if Credentials::of(&headers).is_ok_and(|c| c.secret().is_none()) =>
        {
            login_page(StatusCode::UNAUTHORIZED, "")
        }
        Err(AuthError::Denied(why)) => login_page(StatusCode::UNAUTHORIZED, why),
        Err(AuthError::Store(error)) => ApiError::from(error).into_response(),
    }
}

/// The sign-in form's body.
#[derive(Deserialize)]
struct SignIn {
    key: String,
}

/// `POST /ui/login`: checks the key and keeps it in the dashboard's cookie.
async fn login(State(state): State<AppState>, Form(form): Form<SignIn>) -> Response {
    let key = form.key.trim();
    match state.auth.identify(Some(key)).await {
        Ok(_) => {
            let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response();
            if let Ok(cookie) = HeaderValue::from_str(&key_cookie(key)) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(AuthError::Denied(why)) => login_page(StatusCode::UNAUTHORIZED, why),
        Err(AuthError::Store(error)) => ApiError::from(error).into_response(),
    }
}

/// `POST /ui/logout`: forgets the cookie.
async fn logout() -> Response {
    let expired = format!("{KEY_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }
}

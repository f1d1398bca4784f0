//! The authentication layer in front of every route: which right a route needs, who the
//! caller is ([`crate::auth`]), and the key's rate limit. It hands handlers the
//! [`Caller`](crate::auth::Caller) as
//! an extension, records the tenant on the request's span, and counts refusals by tenant.
//!
//! `/healthz`, `/readyz`, `/metrics`, `/docs` and `/openapi.json` stay open, as do paths that
//! match no route (their `404` says nothing about jobs). A key comes in `Authorization: Bearer`
//! or, for the dashboard, in an HTTP-only cookie ([`Credentials`]).

use axum::{
    extract::{Request, State},
    http::{
        HeaderMap, HeaderValue, Method,
        header::{AUTHORIZATION, COOKIE},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tracing::Span;

use super::{AppState, problem::ApiError, route_of};
use crate::{
    auth::{AuthError, Caller, rate::Quota},
    model::Right,
};

/// Routes anyone may call, keys on or not. (The dashboard's page checks the key itself, to
/// answer a browser without one with a sign-in form; its assets hold no data.)
const OPEN_ROUTES: [&str; 11] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/openapi.json",
    "unmatched",
    "/ui",
    "/ui/app.js",
    "/ui/style.css",
    "/ui/login",
    "/ui/logout",
];

/// The right a route needs; `None` for the open ones.
#[must_use]
pub fn required_right(method: &Method, route: &str) -> Option<Right> {
    if OPEN_ROUTES.contains(&route) {
        return None;
    }
    Some(match route {
        _ if route.starts_with("/v1/keys") => Right::Admin,
        "/v1/dead-letters" => Right::Admin,
        "/v1/queues/{type}" if method == Method::PATCH => Right::Admin,
        "/v1/jobs/{id}/cancel" | "/v1/workflows/{id}/cancel" => Right::Cancel,
        // Re-driving is submitting again; a user lookup runs a job.
        "/v1/jobs/{id}/retry" | "/users/{id}" => Right::Submit,
        _ if method == Method::GET || method == Method::HEAD => Right::Read,
        _ => Right::Submit,
    })
}

/// Authenticates the request, checks the route's right and the key's rate limit, and hands
/// the caller on.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(right) = required_right(request.method(), route_of(&request)) else {
        return next.run(request).await;
    };
    if state.auth.is_open() {
        // Open mode: every request acts as the operator, whatever it carries (a key sent to
        // an open gateway is not checked, so it is not refused either); its jobs are the
        // default tenant's, and the log says so.
        Span::current().record("tenant", crate::model::DEFAULT_TENANT);
        request.extensions_mut().insert(Caller::operator());
        return next.run(request).await;
    }
    let metrics = state.jobs.metrics();
    let presented = match Credentials::of(request.headers()) {
        Ok(presented) => presented,
        Err(why) => {
            metrics.refused("unknown", "unauthorized");
            return ApiError::Unauthorized(why).into_response();
        }
    };
    if presented.needs_csrf_check(request.method(), request.headers()) {
        metrics.refused("unknown", "forbidden");
        return ApiError::Forbidden(
            "a request authenticated by the dashboard's cookie must carry the header \
             x-warren-ui: 1 (cross-site requests are refused)"
                .into(),
        )
        .into_response();
    }
    let caller = match state.auth.identify(presented.secret()).await {
        Ok(caller) => caller,
        Err(AuthError::Denied(why)) => {
            metrics.refused("unknown", "unauthorized");
            return ApiError::Unauthorized(why).into_response();
        }
        Err(AuthError::Store(error)) => return ApiError::from(error).into_response(),
    };
    Span::current().record("tenant", caller.label());
    if !caller.allows(right) {
        metrics.refused(caller.label(), "forbidden");
        return ApiError::Forbidden(format!(
            "this API key does not hold the {} right this route needs; use a key that does",
            right.as_str()
        ))
        .into_response();
    }
    let limit = caller
        .key()
        .and_then(|key| Some((key.id, key.rate_limit()?)));
    let quota = match limit {
        None => None,
        Some((id, (rate, burst))) => match state.auth.limiter.take(id, rate, burst) {
            Ok(quota) => Some(quota),
            Err(quota) => {
                metrics.refused(caller.label(), "rate_limited");
                let mut response = ApiError::TooManyRequests {
                    detail: format!(
                        "this API key is past its rate limit ({rate} requests per second, \
                         burst {burst}); retry after the Retry-After seconds"
                    ),
                    retry_after_secs: quota.retry_after_secs(),
                }
                .into_response();
                add_rate_headers(&mut response, &quota);
                return response;
            }
        },
    };
    let tenant = caller.label().to_owned();
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS {
        // A handler's 429 is the in-flight cap (the rate was checked above).
        metrics.refused(&tenant, "at_capacity");
    }
    if let Some(quota) = quota {
        add_rate_headers(&mut response, &quota);
    }
    response
}

/// The name of the dashboard's cookie: the key, base64url-encoded.
pub const KEY_COOKIE: &str = "warren_key";

/// The key a request presents, and where it came from.
#[derive(Debug, Default)]
pub struct Credentials {
    secret: Option<String>,
    from_cookie: bool,
}

impl Credentials {
    /// The key in `Authorization: Bearer <key>`, else in the dashboard's cookie. A malformed
    /// `Authorization` header is refused, whatever the cookie says.
    pub fn of(headers: &HeaderMap) -> Result<Self, &'static str> {
        if let Some(header) = headers.get(AUTHORIZATION) {
            let secret = header
                .to_str()
                .ok()
                .and_then(|value| value.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, secret)| secret.trim().to_owned())
                .ok_or("the Authorization header must read: Bearer <key>")?;
            return Ok(Self {
                secret: Some(secret),
                from_cookie: false,
            });
        }
        let cookie = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(KEY_COOKIE)?.strip_prefix('='))
            .and_then(|encoded| URL_SAFE_NO_PAD.decode(encoded).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok());
        Ok(Self {
            from_cookie: cookie.is_some(),
            secret: cookie,
        })
    }

    /// The key presented, if any.
    #[must_use]
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// A cookie travels with cross-site requests too: a change it authenticates must carry
    /// `x-warren-ui: 1`, which a cross-site form cannot set (and a cross-site script could only
    /// after a CORS preflight, which the gateway never answers).
    fn needs_csrf_check(&self, method: &Method, headers: &HeaderMap) -> bool {
        let safe = method == Method::GET || method == Method::HEAD;
        self.from_cookie && !safe && headers.get("x-warren-ui").is_none_or(|v| v != "1")
    }
}

/// The cookie that carries `secret` for the dashboard: HTTP only, same-site only, 12 hours.
#[must_use]
pub fn key_cookie(secret: &str) -> String {
    format!(
        "{KEY_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200",
        URL_SAFE_NO_PAD.encode(secret)
    )
}

/// The `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers).
fn add_rate_headers(response: &mut Response, quota: &Quota) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-policy", quota.policy_header()),
        ("ratelimit", quota.header()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

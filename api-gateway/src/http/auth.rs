//! The authentication layer in front of every route: which right a route needs, who the
//! caller is ([`crate::auth`]), and the key's rate limit. It hands handlers the
//! [`Caller`](crate::auth::Caller) as
//! an extension, records the tenant on the request's span, and counts refusals by tenant.
//!
//! `/healthz`, `/readyz`, `/metrics`, `/docs` and `/openapi.json` stay open, as do paths that
//! match no route (their `404` says nothing about jobs).

use axum::{
    extract::{Request, State},
    http::{HeaderValue, Method, header::AUTHORIZATION},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::Span;

use super::{AppState, problem::ApiError, route_of};
use crate::auth::{AuthError, keys::Right, rate::Quota};

/// Routes anyone may call, keys on or not.
const OPEN_ROUTES: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/openapi.json",
    "unmatched",
];

/// The right a route needs; `None` for the open ones.
#[must_use]
pub fn required_right(method: &Method, route: &str) -> Option<Right> {
    if OPEN_ROUTES.contains(&route) {
        return None;
    }
    Some(match route {
        _ if route.starts_with("/v1/keys") => Right::Admin,
        "/v1/jobs/{id}/cancel" => Right::Cancel,
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
    let Some(right) = required_right(request.method(), &route_of(&request)) else {
        return next.run(request).await;
    };
    let metrics = state.jobs.metrics();
    let caller = match state
        .auth
        .identify(request.headers().get(AUTHORIZATION))
        .await
    {
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

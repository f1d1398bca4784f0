//! The OpenAPI 3 description, generated from the handlers' `#[utoipa::path]` annotations as
//! they are registered (so the spec lists exactly the routes the router serves), served at
//! `/openapi.json`, and a `/docs` page that renders it without loading anything from outside.

use axum::{
    extract::State,
    http::header,
    response::{Html, IntoResponse},
};
use utoipa::OpenApi;

use super::{AppState, problem::Problem};
use crate::model::SpecLimits;

/// The document's header; paths and schemas are added as routes are registered.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warren",
        description = "A job gateway on RabbitMQ: submit jobs, answer synchronously when they are fast, \
                       and let clients poll, wait, stream or cancel when they are not.",
    ),
    tags(
        (name = "jobs", description = "Submitting and following jobs"),
        (name = "workflows", description = "Steps that depend on one another: batches, chains, fan-out and fan-in"),
        (name = "article", description = "The article's example routes"),
        (name = "schedules", description = "Recurring jobs"),
        (name = "keys", description = "API keys for tenants (the admin right)"),
        (name = "operations", description = "Probes, metrics and this description"),
    ),
    components(schemas(Problem))
)]
pub struct ApiDoc;

/// `GET /openapi.json`: this API's OpenAPI 3 description.
#[utoipa::path(get, path = "/openapi.json", operation_id = "getOpenApi", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json")))]
pub async fn spec(State(state): State<AppState>) -> impl IntoResponse {
    let document = state.openapi.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], document)
}

/// The document as JSON, with what utoipa's annotations cannot say:
/// - the webhook a job's (a workflow's) `callback_url` receives, as the `callbacks` of
///   `POST /v1/jobs` (`POST /v1/workflows`);
/// - that `run_at` and `delay_ms` exclude each other;
/// - this gateway's own limits (`WARREN_MAX_TIMEOUT_MS`, `WARREN_MAX_DELAY`) as maxima;
/// - the time zones a schedule takes, as an enum of the IANA names the server knows;
/// - with `keys_on` (`WARREN_ADMIN_KEY` set), the bearer scheme and which operations need it
///   (with their `401`, `403` and `429`); an open gateway's document declares none, as it
///   needs none.
#[must_use]
pub fn render(
    api: &utoipa::openapi::OpenApi,
    limits: &SpecLimits,
    keys_on: bool,
) -> Option<String> {
    let mut document = serde_json::to_value(api).ok()?;
    if keys_on {
        declare_security(&mut document)?;
    }
    describe_every_response(&mut document)?;
    let submit = document.pointer_mut("/paths/~1v1~1jobs/post")?;
    submit["callbacks"] = finished_callback("jobFinished", "job", "Job");
    let workflow = document.pointer_mut("/paths/~1v1~1workflows/post")?;
    workflow["callbacks"] = finished_callback("workflowFinished", "workflow", "WorkflowView");
    // The timeout of a workflow step has the same maximum as a job's.
    let step = document.pointer_mut("/components/schemas/StepSpec")?;
    step["properties"]["timeout_ms"]["maximum"] = limits.max_timeout_ms.into();
    let max_delay_ms = u64::try_from(limits.max_delay.as_millis()).unwrap_or(u64::MAX);
    let request = document.pointer_mut("/components/schemas/SubmitRequest")?;
    request["not"] = serde_json::json!({"required": ["run_at", "delay_ms"]});
    request["properties"]["timeout_ms"]["maximum"] = limits.max_timeout_ms.into();
    request["properties"]["delay_ms"]["maximum"] = max_delay_ms.into();
    // `null` (or no field) means UTC for a new schedule and "unchanged" for a change.
    let mut zones: Vec<serde_json::Value> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| tz.name().into())
        .collect();
    zones.push(serde_json::Value::Null);
    // Client generators name enum members after their values; `GMT+0`, `GMT-0` and `GMT0`
    // (and `Etc/GMT+1`, `Etc/GMT-1`) would collide, so each gets a name of its own.
    let names: Vec<String> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| enum_member_name(tz.name()))
        .collect();
    for schema in ["NewSchedule", "ScheduleChange"] {
        let properties =
            document.pointer_mut(&format!("/components/schemas/{schema}/properties"))?;
        properties["timezone"]["enum"] = serde_json::json!(zones);
        properties["timezone"]["x-enum-varnames"] = serde_json::json!(names);
        properties["timezone"]["type"] = serde_json::json!(["string", "null"]);
        properties["timeout_ms"]["maximum"] = limits.max_timeout_ms.into();
    }
    serde_json::to_string_pretty(&document).ok()
}

/// A time zone's member name for client generators (`x-enum-varnames`): upper snake case,
/// with a `+` or a `-` before a digit spelled out, so no two zones share one.
fn enum_member_name(zone: &str) -> String {
    let mut name = String::with_capacity(zone.len() + 8);
    let mut chars = zone.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '+' => name.push_str("_PLUS_"),
            '-' if chars.peek().is_some_and(char::is_ascii_digit) => name.push_str("_MINUS_"),
            c if c.is_ascii_alphanumeric() => name.push(c.to_ascii_uppercase()),
            _ => name.push('_'),
        }
    }
    let mut collapsed = String::with_capacity(name.len());
    for c in name.chars() {
        if !(c == '_' && collapsed.ends_with('_')) {
            collapsed.push(c);
        }
    }
    collapsed.trim_matches('_').to_owned()
}

/// Gives every response without a `description` (OpenAPI requires one; utoipa leaves it out
/// when an annotation names only a status and a body) its status's reason phrase.
fn describe_every_response(document: &mut serde_json::Value) -> Option<()> {
    for item in document.get_mut("paths")?.as_object_mut()?.values_mut() {
        for operation in item.as_object_mut()?.values_mut() {
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(serde_json::Value::as_object_mut)
            else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                if response.get("description").is_none() {
                    let phrase = status
                        .parse::<u16>()
                        .ok()
                        .and_then(|code| axum::http::StatusCode::from_u16(code).ok())
                        .and_then(|code| code.canonical_reason())
                        .unwrap_or("The answer");
                    response["description"] = phrase.into();
                }
            }
        }
    }
    Some(())
}

/// The bearer scheme, and on each operation whether it needs a key (as
/// [`super::auth::required_right`] decides) and the answers a key can lead to.
fn declare_security(document: &mut serde_json::Value) -> Option<()> {
    document["components"]["securitySchemes"] = serde_json::json!({"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "An API key: WARREN_ADMIN_KEY (the operator), or one made with POST /v1/keys. Needed only when the gateway has WARREN_ADMIN_KEY set."}});
    let problem = |description: &str| {
        serde_json::json!({"description": description, "content": {"application/problem+json":
            {"schema": {"$ref": "#/components/schemas/Problem"}}}})
    };
    for (path, item) in document.get_mut("paths")?.as_object_mut()? {
        for (method, operation) in item.as_object_mut()? {
            let method = axum::http::Method::from_bytes(method.to_uppercase().as_bytes()).ok()?;
            let Some(right) = super::auth::required_right(&method, path) else {
                operation["security"] = serde_json::json!([]);
                continue;
            };
            operation["security"] = serde_json::json!([{"bearer": []}]);
            let responses = operation.get_mut("responses")?.as_object_mut()?;
            responses.insert(
                "401".into(),
                problem("No API key, or an unknown or revoked one"),
            );
            responses.insert(
                "403".into(),
                problem(&format!("The API key lacks the `{}` right", right.as_str())),
            );
            responses.insert("429".into(), problem("The API key is past its rate limit (see `Retry-After`, `RateLimit-Policy` and `RateLimit`) or its cap on jobs in flight"));
        }
    }
    Some(())
}

/// The webhook Warren POSTs to `callback_url` when the job (or workflow: `what`, whose resource
/// is `schema`) finishes, as the callback named `name`.
fn finished_callback(name: &str, what: &str, schema: &str) -> serde_json::Value {
    let header = |name: &str, description: &str| {
        serde_json::json!({"name": name, "in": "header", "required": true,
            "description": description, "schema": {"type": "string"}})
    };
    let operation = serde_json::json!({"{$request.body#/callback_url}": {"post": {
        "summary": format!("The finished {what}"),
        "description": format!("When the {what} reaches a terminal status, Warren POSTs the {what} resource here, signed as Standard Webhooks 1.0 says. A 2xx ends the delivery; `410 Gone` stops it; anything else, a timeout or a refused connection is retried with growing delays (`WARREN_WEBHOOK_RETRY_DELAYS`). Redirects are not followed. Delivery is at-least-once: drop duplicates by `webhook-id`."),
        "parameters": [
            header("webhook-id", "The delivery's id, the same on every attempt"),
            header("webhook-timestamp", "Unix seconds when this attempt was signed"),
            header("webhook-signature", "`v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the bytes of WARREN_WEBHOOK_SECRET"),
        ],
        "requestBody": {"required": true,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}},
        "responses": {
            "2XX": {"description": "Delivered: no further attempts"},
            "410": {"description": "Gone: Warren stops delivering"},
            "default": {"description": "Retried later"},
        },
    }}});
    serde_json::json!({ name: operation })
}

/// `GET /docs`: a page that renders `/openapi.json`.
#[utoipa::path(get, path = "/docs", operation_id = "getDocs", tag = "operations",
    responses((status = 200, description = "An HTML page describing the API", content_type = "text/html")))]
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::enum_member_name;

    #[test]
    fn every_time_zone_gets_a_member_name_of_its_own() {
        let names: HashSet<String> = chrono_tz::TZ_VARIANTS
            .iter()
            .map(|tz| enum_member_name(tz.name()))
            .collect();
        assert_eq!(names.len(), chrono_tz::TZ_VARIANTS.len());
        assert_eq!(enum_member_name("Etc/GMT+1"), "ETC_GMT_PLUS_1");
        assert_eq!(enum_member_name("Etc/GMT-1"), "ETC_GMT_MINUS_1");
        assert_eq!(
            enum_member_name("America/Port-au-Prince"),
            "AMERICA_PORT_AU_PRINCE"
        );
    }
}

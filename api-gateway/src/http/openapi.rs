//! The OpenAPI 3 description, generated from the handlers' `#[utoipa::path]` annotations as
//! they are registered (so the spec lists exactly the routes the router serves), served at
//! `/openapi.json`, and a `/docs` page that renders it without loading anything from outside.

use axum::{
    extract::State,
    http::header,
    response::{Html, IntoResponse},
};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::AppState;

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
        (name = "article", description = "The article's example routes"),
        (name = "operations", description = "Probes, metrics and this description"),
    ),
    components(schemas(Problem))
)]
pub struct ApiDoc;

/// An error answer (RFC 9457 problem details), `application/problem+json`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URN naming the kind of problem, e.g. `urn:warren:problem:invalid-field`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
    /// The offending field, for invalid fields.
    pub field: Option<String>,
}

/// `GET /openapi.json`: this API's OpenAPI 3 description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json")))]
pub async fn spec(State(state): State<AppState>) -> impl IntoResponse {
    let document = state.openapi.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], document)
}

/// `GET /docs`: a page that renders `/openapi.json`.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "An HTML page describing the API", content_type = "text/html")))]
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

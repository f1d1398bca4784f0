//! `/v1/keys`: API keys (the `admin` right). `POST` makes one and shows its secret once,
//! `GET` lists them without secrets, `DELETE /v1/keys/{id}` revokes one. The operator
//! (`WARREN_ADMIN_KEY`) manages every tenant's keys; a tenant's key with the `admin` right
//! manages its own tenant's.

use axum::{
    Json,
    extract::{Extension, Path, State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use uuid::Uuid;

use super::{
    AppState,
    problem::{ApiError, Problem},
};
use crate::{
    auth::Caller,
    model::{ApiKey, NewKey},
};

/// A new key: its record and, this once, its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key's record.
    #[serde(flatten)]
    pub record: ApiKey,
    /// The secret to send as `Authorization: Bearer <key>`. Shown only now: Warren keeps
    /// only its SHA-256.
    #[schema(example = "wrn_0193a3f07c1a7b0e8f000123456789ab_q9J3...")]
    pub key: String,
}

/// Every key the caller manages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    /// Oldest first, revoked ones too (with `revoked_at`).
    pub keys: Vec<ApiKey>,
}

/// `POST /v1/keys`.
#[utoipa::path(post, path = "/v1/keys", operation_id = "createKey", tag = "keys",
    description = "Makes an API key for a tenant. The answer is the only time its secret (`key`) is shown.",
    request_body = NewKey,
    responses((status = 201, description = "Made; `key` is the secret", body = CreatedKey),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(new) = body?;
    let (record, secret) = state.keys.create(&caller, new).await?;
    let location = format!("/v1/keys/{}", record.id);
    let created = CreatedKey {
        record,
        key: secret,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

/// `GET /v1/keys`.
#[utoipa::path(get, path = "/v1/keys", operation_id = "listKeys", tag = "keys",
    description = "The keys the caller manages (every tenant's for the operator), without secrets.",
    responses((status = 200, body = KeyList), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<KeyList>, ApiError> {
    let keys = state.keys.list(&caller).await?;
    Ok(Json(KeyList { keys }))
}

/// `DELETE /v1/keys/{id}`.
#[utoipa::path(delete, path = "/v1/keys/{id}", operation_id = "revokeKey", tag = "keys",
    description = "Revokes a key: this gateway refuses it at once, every other gateway within half a second.",
    params(("id" = String, Path, format = Uuid, description = "The key id")),
    responses((status = 204, description = "Revoked"), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: Uuid = raw_id.parse().map_err(|_| {
        ApiError::BadParameter(format!("{raw_id:?} is not a key id: ids are UUIDs"))
    })?;
    state.keys.revoke(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

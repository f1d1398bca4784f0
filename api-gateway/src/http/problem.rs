//! HTTP errors as `application/problem+json` (RFC 9457).
//!
//! Every refusal says what to fix. A 5xx never carries internals: the cause is logged where
//! the error is made, and the client gets a generic detail and a `Retry-After`.

use axum::{
    Json,
    extract::rejection::JsonRejection,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use warren_shared::{
    JobId, JobType,
    amqp::{BrokerError, PublishError},
};

use crate::{
    flow::FlowError, jobs::JobsError, keys::KeysError, model::SpecError, schedules::SchedulesError,
    store::StoreError, workflows::WorkflowsError,
};

/// An error answer (RFC 9457 problem details), `application/problem+json`: the body every
/// [`ApiError`] answers with, and its schema in the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything the HTTP API can refuse a request for.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// A path parameter is not a job id.
    #[error("{0:?} is not a job id: ids are UUIDs such as 0193a3f0-7c1a-7b0e-8f00-0123456789ab")]
    MalformedId(String),
    /// The body is larger than the configured limit (`WARREN_MAX_BODY_BYTES`).
    #[error(
        "the request body is larger than this gateway accepts (1 MiB unless configured otherwise); send a smaller body"
    )]
    BodyTooLarge,
    /// The request did not say it was sending JSON.
    #[error("send the body as JSON with the header Content-Type: application/json")]
    NotJson,
    /// A field has a value outside what is allowed.
    #[error("{field}: {message}")]
    InvalidField {
        /// The field, as named in the request body.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The JSON does not have the expected shape (unknown field, wrong type, missing field).
    #[error("{message}")]
    InvalidBody {
        /// What is wrong.
        message: String,
        /// The field it is about, when there is one (`type`, `steps[3].type`).
        field: Option<String>,
    },
    /// No worker queue is bound for the job type.
    #[error(
        "no worker handles job type \"{0}\": no queue is bound for it; start a worker that \
         registers this type, or check the spelling"
    )]
    UnknownJobType(JobType),
    /// No job has this id.
    #[error("no job has id {0}")]
    JobNotFound(JobId),
    /// The request conflicts with the job's state (e.g. cancelling a finished job).
    #[error("{0}")]
    Conflict(String),
    /// A resource other than a job was not found (a user, a report).
    #[error("{0}")]
    NotFound(String),
    /// A query parameter is invalid.
    #[error("{0}")]
    BadParameter(String),
    /// The job behind a synchronous route failed for a reason other than the client's input.
    #[error("{0}")]
    JobFailed(String),
    /// No worker answered a synchronous route in time.
    #[error("{0}")]
    NoAnswer(String),
    /// An `Idempotency-Key` was used before with another request body.
    #[error(
        "this Idempotency-Key was used with a different request body; use a new key for a new request"
    )]
    IdempotencyMismatch,
    /// No route matches the path.
    #[error("no route matches {0}; see /openapi.json for the API")]
    RouteNotFound(String),
    /// A dependency (broker or store) is unavailable; the client should retry later.
    #[error("{0}; try again in a few seconds")]
    Unavailable(&'static str),
    /// RabbitMQ cannot be reached at all, so the job was not accepted. (Where it was looked for
    /// is the operator's: logged, and on `/readyz`; a client's answer does not carry addresses.)
    #[error(
        "RabbitMQ is unreachable: this gateway cannot connect to the broker it is configured \
         with (WARREN_AMQP_URL; /readyz names its address), so the job was not accepted; try \
         again in a few seconds"
    )]
    BrokerUnreachable,
    /// The path exists, but not with this method.
    #[error("{method} is not allowed on {path}; it takes {allowed}")]
    MethodNotAllowed {
        /// The method asked for.
        method: String,
        /// The path.
        path: String,
        /// The methods it takes.
        allowed: String,
    },
    /// No API key, or one that is unknown or revoked (`WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The API key lacks the right this route needs.
    #[error("{0}")]
    Forbidden(String),
    /// The API key is past its rate limit or its cap on jobs in flight.
    #[error("{detail}")]
    TooManyRequests {
        /// Which limit, and what to do.
        detail: String,
        /// Seconds until a retry may succeed.
        retry_after_secs: u64,
    },
    /// A bug on our side (the cause is logged); retrying will not help.
    #[error("the gateway failed to handle this request; the cause is in its log")]
    Internal,
}

impl ApiError {
    /// An [`ApiError::InvalidBody`] about no one field.
    #[must_use]
    pub fn invalid_body(message: String) -> Self {
        Self::InvalidBody {
            message,
            field: None,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::MalformedId(_) | Self::BadParameter(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::JobFailed(_) => StatusCode::BAD_GATEWAY,
            Self::NoAnswer(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidField { .. }
            | Self::InvalidBody { .. }
            | Self::UnknownJobType(_)
            | Self::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::JobNotFound(_) | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) | Self::BrokerUnreachable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A stable identifier of the problem type, for clients to branch on.
    fn slug(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed-json",
            Self::MalformedId(_) => "malformed-id",
            Self::BadParameter(_) => "bad-parameter",
            Self::Conflict(_) => "conflict",
            Self::NotFound(_) => "not-found",
            Self::JobFailed(_) => "job-failed",
            Self::NoAnswer(_) => "no-answer",
            Self::BodyTooLarge => "body-too-large",
            Self::NotJson => "unsupported-media-type",
            Self::InvalidField { .. } | Self::InvalidBody { .. } => "invalid-field",
            Self::UnknownJobType(_) => "unknown-job-type",
            Self::IdempotencyMismatch => "idempotency-key-reused",
            Self::JobNotFound(_) => "job-not-found",
            Self::RouteNotFound(_) => "route-not-found",
            Self::Unavailable(_) | Self::BrokerUnreachable => "unavailable",
            Self::Internal => "internal",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::TooManyRequests { .. } => "too-many-requests",
        }
    }
}

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Problem {
            kind: format!("urn:warren:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            field: match &self {
                Self::InvalidField { field, .. } => Some((*field).to_owned()),
                Self::InvalidBody { field, .. } => field.clone(),
                _ => None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            Self::Unavailable(_) | Self::BrokerUnreachable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            Self::TooManyRequests {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::NotJson,
            JsonRejection::JsonSyntaxError(e) => Self::MalformedJson(in_our_words(&e.body_text())),
            JsonRejection::JsonDataError(e) => {
                let reason = in_our_words(&e.body_text());
                Self::InvalidBody {
                    field: field_of(&reason),
                    message: format!("the body does not have the expected shape: {reason}"),
                }
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::BodyTooLarge,
            other => Self::MalformedJson(other.body_text()),
        }
    }
}

/// The field a shape error is about: the path serde reports before the reason (`type: invalid
/// type …`), or the field an unknown-field or missing-field error names.
fn field_of(reason: &str) -> Option<String> {
    let path = reason
        .split_once(": ")
        .map(|(path, _)| path)
        .filter(|path| is_path(path) && *path != ".");
    if let Some(path) = path {
        return Some(path.to_owned());
    }
    let named = |marker: &str| {
        let rest = reason.split_once(marker)?.1;
        let (name, _) = rest.split_once('`')?;
        Some(name.to_owned())
    };
    named("missing field `").or_else(|| named("unknown field `"))
}

fn is_path(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.[]-".contains(c))
}

/// The JSON library's own reason, without axum's "Failed to …" preamble.
fn in_our_words(text: &str) -> String {
    text.split_once(": ")
        .filter(|(preamble, _)| preamble.starts_with("Failed to"))
        .map_or(text, |(_, reason)| reason)
        .to_owned()
}

/// The error and its causes, one after another, for the log.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A store failure as the client sees it; logged here, once, with its causes.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let cause = chain(&error);
        match error {
            StoreError::Unavailable(_) | StoreError::Misconfigured(_) => {
                tracing::error!(error = %cause, "job store unavailable");
                Self::Unavailable("the job store is unavailable")
            }
            StoreError::TimedOut { .. } => Self::Unavailable("the database did not answer in time"),
            StoreError::Duplicate(id) => {
                tracing::warn!(error = %cause, "duplicate job id");
                Self::Conflict(format!("a job with id {id} already exists"))
            }
            StoreError::Conflict(_) => {
                tracing::warn!(error = %cause, "store constraint refused a change");
                Self::Conflict("the request conflicts with stored data".into())
            }
            StoreError::BadData(message) => {
                tracing::warn!(error = %cause, "the store refused the request's data");
                Self::invalid_body(format!(
                    "the job store cannot keep this data ({message}); change the value it names"
                ))
            }
            StoreError::Corrupt(_) | StoreError::Query(_) => {
                tracing::error!(error = %cause, "job store failed: a bug or a schema mismatch");
                Self::Internal
            }
        }
    }
}

impl From<JobsError> for ApiError {
    fn from(error: JobsError) -> Self {
        match error {
            JobsError::NotFound(id) => Self::JobNotFound(id),
            error @ (JobsError::AlreadyFinished { .. }
            | JobsError::NotFailed { .. }
            | JobsError::StepOfWorkflow { .. }) => Self::Conflict(error.to_string()),
            JobsError::KeyReused => Self::IdempotencyMismatch,
            error @ JobsError::AtCapacity(_) => Self::TooManyRequests {
                detail: error.to_string(),
                retry_after_secs: 1,
            },
            JobsError::UnknownJobType(job_type) => Self::UnknownJobType(job_type),
            JobsError::NotConfirmed(PublishError::Broker(BrokerError::Unavailable { .. })) => {
                Self::BrokerUnreachable
            }
            JobsError::NotConfirmed(_) => Self::Unavailable("RabbitMQ did not confirm the job"),
            JobsError::Invalid(error) => error.into(),
            JobsError::Store(error) => error.into(),
        }
    }
}

impl From<WorkflowsError> for ApiError {
    fn from(error: WorkflowsError) -> Self {
        match error {
            error @ WorkflowsError::NotFound(_) => Self::NotFound(error.to_string()),
            error @ WorkflowsError::AlreadyFinished { .. } => Self::Conflict(error.to_string()),
            WorkflowsError::Invalid(invalid) => Self::InvalidBody {
                message: invalid.to_string(),
                field: Some(invalid.field),
            },
            WorkflowsError::KeyReused => Self::IdempotencyMismatch,
            error @ WorkflowsError::AtCapacity { .. } => Self::TooManyRequests {
                detail: error.to_string(),
                retry_after_secs: 1,
            },
            WorkflowsError::BrokerUnavailable(cause) => {
                tracing::warn!(%cause, "workflow refused: RabbitMQ is unreachable");
                Self::BrokerUnreachable
            }
            WorkflowsError::Store(error) => error.into(),
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(error: SpecError) -> Self {
        Self::InvalidField {
            field: error.field,
            message: error.message,
        }
    }
}

impl From<SchedulesError> for ApiError {
    fn from(error: SchedulesError) -> Self {
        match error {
            SchedulesError::Invalid(error) => error.into(),
            SchedulesError::NotFound(id) => Self::NotFound(format!("no schedule has id {id}")),
            SchedulesError::Store(error) => error.into(),
        }
    }
}

impl From<FlowError> for ApiError {
    fn from(error: FlowError) -> Self {
        match error {
            error @ FlowError::Forbidden => Self::Forbidden(error.to_string()),
            FlowError::Invalid(error) => error.into(),
            FlowError::Store(error) => error.into(),
            FlowError::Broker(_) => Self::Unavailable(
                "the settings are stored, but RabbitMQ did not take them yet (every gateway \
                 retries within seconds)",
            ),
        }
    }
}

impl From<KeysError> for ApiError {
    fn from(error: KeysError) -> Self {
        match error {
            error @ KeysError::OtherTenant(_) => Self::Forbidden(error.to_string()),
            KeysError::Invalid(bad) => Self::InvalidField {
                field: bad.field,
                message: bad.message,
            },
            error @ KeysError::NotFound(_) => Self::NotFound(error.to_string()),
            KeysError::Store(error) => error.into(),
        }
    }
}

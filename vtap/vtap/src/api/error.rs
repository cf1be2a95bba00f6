//! API errors: one enum, one JSON shape, one status per kind. Internal
//! causes are logged here and never returned to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::wire::{ErrorBody, ErrorDetail};

/// Every way a request can fail.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request cannot be parsed (malformed JSON, bad query).
    BadRequest(String),
    /// 401: a bearer token is required.
    Unauthorized,
    /// 404: no such resource.
    NotFound(String),
    /// 405.
    MethodNotAllowed,
    /// 408: the request took longer than the configured limit.
    Timeout,
    /// 409: conflict (stale If-Match, state that forbids the change).
    Conflict(String),
    /// 413: the body is larger than the configured limit.
    TooLarge(usize),
    /// 422: well-formed but invalid, with every problem.
    Invalid(String, Vec<ErrorDetail>),
    /// 503: the kernel or an interface refused; nothing was changed.
    Unavailable(String),
    /// 500: a bug or an unexpected OS error (detail logged).
    Internal,
}

impl ApiError {
    /// 503 with the cause logged.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{what}");
        ApiError::Unavailable(format!(
            "{what} failed; the running configuration is unchanged"
        ))
    }

    /// 500 with the cause logged.
    pub fn internal(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error: {what}");
        ApiError::Internal
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(..) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        let (error, details) = match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Unavailable(m) => (m.clone(), vec![]),
            ApiError::Unauthorized => (
                "authentication required: send Authorization: Bearer <token>".into(),
                vec![],
            ),
            ApiError::MethodNotAllowed => ("method not allowed on this path".into(), vec![]),
            ApiError::Timeout => ("the request took too long".into(), vec![]),
            ApiError::TooLarge(limit) => {
                (format!("request body larger than {limit} bytes"), vec![])
            }
            ApiError::Invalid(m, d) => (m.clone(), d.clone()),
            ApiError::Internal => ("internal error (see the daemon's log)".into(), vec![]),
        };
        ErrorBody { error, details }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), axum::Json(self.body())).into_response();
        if matches!(self, ApiError::Unauthorized) {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// Parses a JSON body: malformed JSON is 400, a value of the wrong shape is
/// 422 with the field path.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {}", r.body_text()))
        }
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        ApiError::Invalid(
            "invalid request body".into(),
            vec![ErrorDetail {
                field: if field == "." { String::new() } else { field },
                message: e.into_inner().to_string(),
            }],
        )
    })
}

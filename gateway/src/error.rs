//! The one place where gateway errors become HTTP responses.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use thiserror::Error;

/// Why a request was refused before (or instead of) a WebSocket upgrade.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The path's document id is outside the allow-list.
    #[error("invalid document id")]
    BadDocId,
    /// No route.
    #[error("not found")]
    NotFound,
    /// `/doc/{id}` without a WebSocket upgrade.
    #[error("websocket upgrade required")]
    UpgradeRequired,
    /// The upgrade handshake was malformed.
    #[error("bad websocket handshake")]
    BadHandshake,
    /// No token, or a token that does not verify (signature, `exp`, `nbf`, `aud`, `iss`, algorithm).
    #[error("unauthorized")]
    Unauthorized,
    /// The token grants nothing on this document.
    #[error("forbidden")]
    Forbidden,
    /// The `Origin` header is not in the allow-list.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// The process is shutting down or has no shard for the key.
    #[error("unavailable")]
    Unavailable,
}

impl GatewayError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadDocId | Self::BadHandshake => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A JSON error response with an error id that also appears in the log (no internal detail).
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let id = uuid::Uuid::now_v7();
        tracing::info!(error_id = %id, error = %self, "request refused");
        let body = serde_json::json!({ "error": self.to_string(), "error_id": id.to_string() });
        Response::builder()
            .status(self.status())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

//! Per-request limits of `steerlm serve`, answered with `413` naming the limit and the
//! flag that raises it.

use super::error::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Most texts (or labeled prefixes of records) one `/v1/score` request may carry.
    pub max_texts: usize,
    pub max_body_bytes: usize,
    /// Time to send the whole body once the headers are in.
    pub body_read_timeout: Duration,
}

impl RequestLimits {
    pub fn check_texts(&self, count: usize) -> Result<(), ApiError> {
        if count > self.max_texts {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{count} texts in one request; the limit is {} (--max-request-texts): split the request",
                    self.max_texts
                ),
            ));
        }
        Ok(())
    }

    /// Most bytes of labeled prefixes the records of one request may make: four times the
    /// largest body, far more than ordinary records make (a prefix repeats its record up
    /// to the labeled turn, and few turns are labeled).
    pub fn max_prefix_bytes(&self) -> usize {
        self.max_body_bytes.saturating_mul(4)
    }

    pub fn check_prefix_bytes(&self, bytes: usize) -> Result<(), ApiError> {
        if bytes > self.max_prefix_bytes() {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the records' labeled turns make {} MiB of prefixes to score (each repeats the conversation \
                     before it); the limit is {} MiB (4 x --max-body-mb): send fewer labeled turns per request",
                    bytes >> 20,
                    self.max_prefix_bytes() >> 20
                ),
            ));
        }
        Ok(())
    }

    /// The request with its body read in full, or the error to answer: 408 when it does
    /// not arrive within `body_read_timeout`, 413 past `max_body_bytes`.
    pub async fn read_body(&self, request: Request) -> Result<Request, ApiError> {
        let (parts, body) = request.into_parts();
        let header = |name| parts.headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
        // A compressed body would otherwise fail as "invalid JSON", or worse, parse.
        if let Some(encoding) =
            header(axum::http::header::CONTENT_ENCODING).filter(|e| !e.eq_ignore_ascii_case("identity"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {encoding:?} is not read here: send the body uncompressed"),
            ));
        }
        // A client waiting on `Expect: 100-continue` has sent no body yet: refused from its
        // Content-Length alone, before hyper invites the upload. (One already sending
        // reads the answer more reliably once its body is in, up to the limit.)
        let waiting = header(axum::http::header::EXPECT).is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let declared = header(axum::http::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        if waiting && declared.is_some_and(|length| length > self.max_body_bytes as u64) {
            return Err(self.too_large());
        }
        let collected = tokio::time::timeout(self.body_read_timeout, Limited::new(body, self.max_body_bytes).collect());
        match collected.await {
            Ok(Ok(body)) => Ok(Request::from_parts(parts, Body::from(body.to_bytes()))),
            Ok(Err(e)) if e.is::<LengthLimitError>() => Err(self.too_large()),
            Ok(Err(e)) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} seconds (--body-read-timeout)",
                    self.body_read_timeout.as_secs()
                ),
            )),
        }
    }

    fn too_large(&self) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the limit of {} bytes (--max-body-mb)", self.max_body_bytes),
        )
    }

    /// The body, or the error for why it could not be read.
    pub fn body(&self, body: Result<axum::body::Bytes, BytesRejection>) -> Result<axum::body::Bytes, ApiError> {
        body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                self.too_large()
            } else {
                ApiError::new(rejection.status(), rejection.body_text())
            }
        })
    }
}

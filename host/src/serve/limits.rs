//! Per-request limits of `steerlm serve`, answered with `413` naming the limit and the
//! flag that raises it.

use super::error;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;

#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Most texts (or labeled prefixes of records) one `/v1/score` request may carry.
    pub max_texts: usize,
    pub max_body_bytes: usize,
}

impl RequestLimits {
    pub fn check_texts(&self, count: usize) -> Result<(), Response> {
        if count > self.max_texts {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{count} texts in one request; the limit is {} (--max-request-texts): split the request",
                    self.max_texts
                ),
            ));
        }
        Ok(())
    }

    /// The body, or the error for why it could not be read.
    pub fn body(&self, body: Result<axum::body::Bytes, BytesRejection>) -> Result<axum::body::Bytes, Response> {
        body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is larger than the limit of {} bytes (--max-body-mb)",
                        self.max_body_bytes
                    ),
                )
            } else {
                error(rejection.status(), rejection.body_text())
            }
        })
    }
}

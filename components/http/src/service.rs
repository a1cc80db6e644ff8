//! The spin-sdk glue: read the body (bounded), decode it, answer with [`routes::handle`].

use crate::{body, limits_from_env, routes};
use bytes::Bytes;
use http_body_util::BodyExt;
use spin_sdk::http::{FullBody, Request, Response};
use spin_sdk::http_service;

#[http_service]
async fn handle(request: Request) -> Response<FullBody<Bytes>> {
    let limits = limits_from_env();
    let (parts, incoming) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let encoding = parts.headers.get("content-encoding").and_then(|v| v.to_str().ok()).map(str::to_owned);

    // A request no route takes is answered without reading its body.
    if let Some(reply) = routes::reject(parts.method.as_str(), &path) {
        return to_response(reply);
    }
    let reply = match read_body(&parts.headers, incoming, limits.max_body_bytes).await {
        Err(reply) => reply,
        Ok(raw) => match body::decode(raw, encoding.as_deref(), limits.max_body_bytes) {
            Err(reply) => reply,
            Ok(decoded) => routes::handle(parts.method.as_str(), &path, &query, &decoded, limits),
        },
    };
    to_response(reply)
}

/// The whole body, refused early by `Content-Length` and cut off once past the limit.
async fn read_body<B>(
    headers: &spin_sdk::http::HeaderMap,
    incoming: B,
    max_bytes: usize,
) -> Result<Vec<u8>, routes::Reply>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let declared = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_bytes as u64) {
        return Err(body::too_large(max_bytes, "(content-length)"));
    }
    let mut incoming = std::pin::pin!(incoming);
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = incoming.frame().await {
        let frame =
            frame.map_err(|e| routes::Reply::error(400, format!("cannot read the request body: {e:?}"), None))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > max_bytes {
                return Err(body::too_large(max_bytes, "as sent"));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

fn to_response(reply: routes::Reply) -> Response<FullBody<Bytes>> {
    let mut builder = http::Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type)
        .header("content-length", reply.body.len());
    for (name, value) in reply.headers {
        builder = builder.header(name, value);
    }
    builder.body(FullBody::new(Bytes::from(reply.body))).unwrap_or_else(|_| {
        // Every header above is ASCII and every status a valid code; this is a guard, not a path.
        let mut response = Response::new(FullBody::new(Bytes::from_static(b"{\"error\":\"bad response\"}\n")));
        *response.status_mut() = spin_sdk::http::StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

//! Request bodies: gzip is accepted (by `Content-Encoding` or by its magic bytes, so
//! `curl --data-binary @rows.jsonl.gz` works as is), and the decoded size is limited
//! like the raw size, so a small compressed body cannot expand without bound.

use crate::routes::Reply;
use std::io::Read;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The body to convert: `raw` itself, or `raw` gunzipped.
pub fn decode(raw: Vec<u8>, content_encoding: Option<&str>, max_bytes: usize) -> Result<Vec<u8>, Reply> {
    let gzip = match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => raw.starts_with(&GZIP_MAGIC),
        Some(e) if e.is_empty() || e == "identity" => raw.starts_with(&GZIP_MAGIC),
        Some(e) if e == "gzip" || e == "x-gzip" => true,
        Some(other) => {
            return Err(Reply::error(415, format!("content-encoding {other} is not supported (use gzip)"), None));
        }
    };
    if !gzip {
        return Ok(raw);
    }
    let mut decoded = Vec::new();
    let reader = flate2::read::MultiGzDecoder::new(raw.as_slice());
    // One byte past the limit tells "exactly at the limit" from "over it".
    reader
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|e| Reply::error(400, format!("the gzip body is corrupt: {e}"), None))?;
    if decoded.len() > max_bytes {
        return Err(too_large(max_bytes, "once decompressed"));
    }
    Ok(decoded)
}

/// The `413` reply for a body over the limit.
pub fn too_large(max_bytes: usize, how: &str) -> Reply {
    Reply::error(
        413,
        format!("the request body is larger than the limit of {max_bytes} bytes {how}; send fewer records per request"),
        None,
    )
}

//! The optional API key: `Authorization: Bearer KEY` (the scheme in any case, as RFC
//! 9110 has it), compared in constant time so the response time says nothing about how
//! much of a guess was right.

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};

/// The key the server checks, refused at startup when it could never be sent: empty
/// (e.g. `STEERLM_API_KEY=""`, which would lock every client out) or with control
/// characters or surrounding spaces, which a header value cannot carry.
pub struct ApiKey {
    digest: [u8; 32],
}

impl ApiKey {
    pub fn new(key: &str) -> Result<Self> {
        if key.is_empty() {
            bail!("the API key (--api-key or STEERLM_API_KEY) is empty; set a key, or unset it to serve without one");
        }
        if key.trim() != key || key.chars().any(char::is_control) {
            bail!(
                "the API key (--api-key or STEERLM_API_KEY) has surrounding spaces or control characters, \
                 which an Authorization header cannot carry"
            );
        }
        Ok(ApiKey { digest: Sha256::digest(key.as_bytes()).into() })
    }

    /// Whether an `Authorization` header value carries this key.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization.and_then(bearer_token) else { return false };
        // Comparing digests keeps the comparison's length fixed whatever was sent.
        let digest: [u8; 32] = Sha256::digest(token).into();
        constant_time_eq(&digest, &self.digest)
    }
}

/// The credentials of `Bearer <token>`, the scheme matched case-insensitively.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let scheme = header.get(..6)?;
    let rest = header.get(6..)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first().is_none_or(|&b| b != b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Equal lengths compared without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the compiler from turning the fold back into a short-circuiting compare.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_in_any_case_and_only_the_right_key() {
        let key = ApiKey::new("s3cret").unwrap();
        for header in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "Bearer   s3cret "] {
            assert!(key.accepts(Some(header.as_bytes())), "{header}");
        }
        for header in ["Bearer s3cre", "Bearer s3cretx", "Basic s3cret", "Bearers3cret", "Bearer ", "s3cret", ""] {
            assert!(!key.accepts(Some(header.as_bytes())), "{header}");
        }
        assert!(!key.accepts(None));
    }

    #[test]
    fn unusable_keys_are_refused() {
        for bad in ["", " key", "key\n", "a\u{7f}b"] {
            assert!(ApiKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(ApiKey::new("with inner space").is_ok());
    }
}

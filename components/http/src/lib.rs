//! steerlm's conversions as an HTTP service: a `wasi:http/handler@0.3.0` component
//! built with spin-sdk, for Spin, SpinKube, `wasmtime serve -Scli` and
//! `steerlm serve-component`.
//!
//! The conversions are the same `steerlm-core` code as the other components, so a
//! response's bytes equal the CLI's and NeMo-Aligner's. [`routes`] is the contract,
//! [`body`] the request decoding; the spin-sdk glue is in `service.rs` (wasm only).
//!
//! Limits come from the environment, the only thing the component reads:
//! `STEERLM_MAX_BODY_BYTES` (default 32 MiB) and `STEERLM_MAX_RESPONSE_BYTES`
//! (default 256 MiB).

pub mod body;
pub mod routes;

#[cfg(target_family = "wasm")]
mod service;

/// The limits, from the environment when set there.
pub fn limits_from_env() -> routes::Limits {
    let defaults = routes::Limits::default();
    let read = |name: &str, default: usize| {
        std::env::var(name).ok().and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(default)
    };
    routes::Limits {
        max_body_bytes: read("STEERLM_MAX_BODY_BYTES", defaults.max_body_bytes),
        max_response_bytes: read("STEERLM_MAX_RESPONSE_BYTES", defaults.max_response_bytes),
    }
}

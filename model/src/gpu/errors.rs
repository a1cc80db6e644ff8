//! wgpu's errors as `Result`s.
//!
//! A failing wgpu call returns an invalid object, not an error: the error goes to the
//! innermost error scope that takes its kind, and with no such scope to the device's
//! "uncaptured" handler, which by default panics. Left so, a driver that refuses to compile
//! a shader (an internal error) or a card out of memory would abort the process instead of
//! taking the fallback kernel or printing a clear message. So every step that can fail runs
//! under [`capture`], which catches all three kinds, and [`UncapturedErrors`] replaces the
//! panicking handler with one that keeps the error for the next [`UncapturedErrors::check`].

use anyhow::{Result, anyhow};
use std::sync::{Arc, Mutex, PoisonError};

/// Runs `f` with scopes for wgpu's three kinds of error pushed, and returns its value, or
/// the first error it caused, worded as `{what}: {the error}`. Scopes are per thread:
/// everything `f` does on the device must happen on this thread.
pub fn capture<T>(device: &wgpu::Device, what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Result<T> {
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let value = f();
    // Popped in reverse order of pushing, as wgpu requires.
    let errors = [validation, internal, memory].map(|scope| pollster::block_on(scope.pop()));
    match errors.into_iter().flatten().next() {
        None => Ok(value),
        Some(error) => Err(anyhow!("{}: {}", what(), describe(&error))),
    }
}

/// The error's own words, with a hint where the user can do something about it.
pub fn describe(error: &wgpu::Error) -> String {
    match error {
        wgpu::Error::OutOfMemory { .. } => {
            "the GPU is out of memory (a smaller --batch-tokens needs less scratch memory; a smaller model, or \
             --device cpu, less for the weights)"
                .to_owned()
        }
        wgpu::Error::Validation { description, .. } => format!("rejected by wgpu: {}", description.trim_end()),
        wgpu::Error::Internal { description, .. } => {
            format!("the GPU driver failed: {}", description.trim_end())
        }
    }
}

/// Errors that reached no scope: kept here (the first one since the last check) instead of
/// panicking in wgpu's default handler.
#[derive(Clone, Debug, Default)]
pub struct UncapturedErrors(Arc<Mutex<Option<String>>>);

impl UncapturedErrors {
    /// Installs the keeping handler on `device`.
    pub fn install(device: &wgpu::Device) -> Self {
        let errors = UncapturedErrors::default();
        let slot = errors.0.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(describe(&error));
            }
        }));
        errors
    }

    /// The error kept since the last check, if any, worded as `{what}: {the error}`. Work
    /// done since then may have used an invalid object, so its results must be dropped.
    pub fn check(&self, what: impl FnOnce() -> String) -> Result<()> {
        match self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            None => Ok(()),
            Some(error) => Err(anyhow!("{}: {error}", what())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{AdapterChoice, open_device};

    /// A buffer larger than the device allows is an error from `capture`, and outside any
    /// scope is kept for `check` rather than panicking.
    #[test]
    fn errors_become_results_not_panics() {
        let gpu = open_device(AdapterChoice::Any).expect("opening a wgpu device").expect("Any returns an adapter");
        let too_big = wgpu::BufferDescriptor {
            label: Some("too big"),
            size: gpu.caps.limits.max_buffer_size + 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        };
        let error = capture(&gpu.device, || "making a test buffer".to_owned(), || gpu.device.create_buffer(&too_big))
            .expect_err("a buffer over max_buffer_size must fail");
        assert!(error.to_string().starts_with("making a test buffer: rejected by wgpu: "), "{error}");
        capture(&gpu.device, String::new, || gpu.device.create_buffer(&wgpu::BufferDescriptor { size: 16, ..too_big }))
            .expect("a small buffer is fine");

        gpu.errors.check(String::new).expect("nothing kept yet");
        let _invalid = gpu.device.create_buffer(&too_big);
        let kept = gpu.errors.check(|| "after the pass".to_owned()).expect_err("the uncaptured error is kept");
        assert!(kept.to_string().starts_with("after the pass: rejected by wgpu: "), "{kept}");
        gpu.errors.check(String::new).expect("a kept error is reported once");
    }
}

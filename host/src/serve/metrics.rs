//! Counters for `GET /metrics`, in Prometheus' text format.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Metrics {
    /// Counted on arrival, so requests that never finish are in it too.
    pub requests: AtomicU64,
    pub failed_requests: AtomicU64,
    /// Requests whose client hung up before the answer.
    pub cancelled_requests: AtomicU64,
    /// Sequences never run because their request was cancelled.
    pub skipped_sequences: AtomicU64,
    pub batches: AtomicU64,
    pub batched_sequences: AtomicU64,
    pub tokens: AtomicU64,
    pub queue_depth: AtomicU64,
    pub batch_micros: AtomicU64,
    pub request_micros: AtomicU64,
}

impl Metrics {
    pub fn record_batch(&self, sequences: usize, tokens: usize, took: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.batched_sequences.fetch_add(sequences as u64, Relaxed);
        self.tokens.fetch_add(tokens as u64, Relaxed);
        self.batch_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Counts a request as it arrives; the guard records how it ended.
    pub fn start_request(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Relaxed);
        InFlight { metrics: self, started: Instant::now(), answered: false }
    }

    pub fn render(&self) -> String {
        let seconds = |v: &AtomicU64| v.load(Relaxed) as f64 / 1e6;
        let batch_seconds = seconds(&self.batch_micros);
        let tokens = self.tokens.load(Relaxed);
        let rows = [
            ("steerlm_requests_total", "counter", "Inference requests received.", self.requests.load(Relaxed) as f64),
            (
                "steerlm_failed_requests_total",
                "counter",
                "Inference requests that failed.",
                self.failed_requests.load(Relaxed) as f64,
            ),
            (
                "steerlm_cancelled_requests_total",
                "counter",
                "Inference requests whose client hung up before the answer.",
                self.cancelled_requests.load(Relaxed) as f64,
            ),
            (
                "steerlm_skipped_sequences_total",
                "counter",
                "Sequences not run because their client hung up.",
                self.skipped_sequences.load(Relaxed) as f64,
            ),
            (
                "steerlm_request_seconds_total",
                "counter",
                "Time spent answering inference requests.",
                seconds(&self.request_micros),
            ),
            ("steerlm_batches_total", "counter", "Batches run on the device.", self.batches.load(Relaxed) as f64),
            (
                "steerlm_batch_sequences_total",
                "counter",
                "Sequences in those batches (divide by batches for the mean batch size).",
                self.batched_sequences.load(Relaxed) as f64,
            ),
            ("steerlm_tokens_total", "counter", "Tokens scored.", tokens as f64),
            ("steerlm_batch_seconds_total", "counter", "Device time spent on batches.", batch_seconds),
            (
                "steerlm_tokens_per_second",
                "gauge",
                "Tokens per second of device time so far.",
                if batch_seconds > 0.0 { tokens as f64 / batch_seconds } else { 0.0 },
            ),
            (
                "steerlm_queue_depth",
                "gauge",
                "Requests waiting when the last batch started.",
                self.queue_depth.load(Relaxed) as f64,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        }
        out
    }
}

/// One request being answered. Dropped without [`InFlight::answered`] (the client hung
/// up and the handler's future was dropped), it counts as cancelled.
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    started: Instant,
    answered: bool,
}

impl InFlight<'_> {
    pub fn answered(mut self, ok: bool) {
        self.answered = true;
        if !ok {
            self.metrics.failed_requests.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.cancelled_requests.fetch_add(1, Relaxed);
        }
        self.metrics.request_micros.fetch_add(self.started.elapsed().as_micros() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_counted_however_it_ends() {
        let metrics = Metrics::default();
        metrics.start_request().answered(true);
        metrics.start_request().answered(false);
        drop(metrics.start_request());
        assert_eq!(metrics.requests.load(Relaxed), 3);
        assert_eq!(metrics.failed_requests.load(Relaxed), 1);
        assert_eq!(metrics.cancelled_requests.load(Relaxed), 1);
        let text = metrics.render();
        assert!(text.contains("\nsteerlm_requests_total 3\n"), "{text}");
        assert!(text.contains("\nsteerlm_cancelled_requests_total 1\n"), "{text}");
    }
}

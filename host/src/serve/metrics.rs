//! Counters for `GET /metrics`, in Prometheus' text format.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub failed_requests: AtomicU64,
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

    pub fn record_request(&self, took: Duration, ok: bool) {
        self.requests.fetch_add(1, Relaxed);
        if !ok {
            self.failed_requests.fetch_add(1, Relaxed);
        }
        self.request_micros.fetch_add(took.as_micros() as u64, Relaxed);
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

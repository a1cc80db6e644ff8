//! Counters and histograms for `GET /metrics`, in Prometheus' text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The HTTP APIs that run the model, each with its own request count and latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// KServe v2 / Triton `infer`.
    Kserve,
    /// steerlm's `/v1/score`.
    Score,
    /// vLLM's `/classify`.
    VllmClassify,
    /// vLLM's `/pooling`.
    VllmPooling,
    /// text-embeddings-inference's `/predict`.
    TeiPredict,
    /// OpenRLHF's remote reward model, `/get_reward`.
    OpenRlhf,
}

impl Api {
    const ALL: [Api; 6] =
        [Api::Kserve, Api::Score, Api::VllmClassify, Api::VllmPooling, Api::TeiPredict, Api::OpenRlhf];

    fn label(self) -> &'static str {
        match self {
            Api::Kserve => "kserve",
            Api::Score => "score",
            Api::VllmClassify => "vllm_classify",
            Api::VllmPooling => "vllm_pooling",
            Api::TeiPredict => "tei_predict",
            Api::OpenRlhf => "openrlhf",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 15] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A Prometheus histogram of durations, lock-free.
#[derive(Default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative here), then above the last.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.counts
            .iter()
            .map(|c| {
                total += c.load(Relaxed);
                total
            })
            .collect()
    }

    /// The bucket bound below which `quantile` of the observations fall (an upper
    /// estimate, as Prometheus' `histogram_quantile` would bound it); 0 when empty.
    pub fn quantile(&self, quantile: f64) -> f64 {
        let cumulative = self.cumulative();
        let count = *cumulative.last().unwrap_or(&0);
        if count == 0 {
            return 0.0;
        }
        let rank = (quantile * count as f64).ceil().max(1.0) as u64;
        let bucket = cumulative.iter().position(|&c| c >= rank).unwrap_or(BUCKETS.len());
        BUCKETS.get(bucket).copied().unwrap_or(f64::INFINITY)
    }

    /// The histogram's `_bucket`, `_sum` and `_count` lines, with `labels` (`k="v"` or "").
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let cumulative = self.cumulative();
        let join = if labels.is_empty() { String::new() } else { format!("{labels},") };
        for (bound, count) in BUCKETS.iter().zip(&cumulative) {
            let _ = writeln!(out, "{name}_bucket{{{join}le=\"{bound}\"}} {count}");
        }
        let count = cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{join}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

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
    /// Per [`Api`]: requests received and how long they took to answer.
    api_requests: [AtomicU64; Api::ALL.len()],
    api_latency: [Histogram; Api::ALL.len()],
    /// How long a request waited in the batcher before its first sequence ran.
    pub queue_wait: Histogram,
}

impl Metrics {
    pub fn record_batch(&self, sequences: usize, tokens: usize, took: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.batched_sequences.fetch_add(sequences as u64, Relaxed);
        self.tokens.fetch_add(tokens as u64, Relaxed);
        self.batch_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Counts a request to `api` as it arrives; the guard records how it ended.
    pub fn start_request(&self, api: Api) -> InFlight<'_> {
        self.requests.fetch_add(1, Relaxed);
        self.api_requests[api as usize].fetch_add(1, Relaxed);
        InFlight { metrics: self, api, started: Instant::now(), answered: false }
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
        self.render_apis(&mut out);
        out
    }
}

impl Metrics {
    /// Per-API counts, latency histograms and their p50/p99, and the queue wait.
    fn render_apis(&self, out: &mut String) {
        let name = "steerlm_api_requests_total";
        let _ = writeln!(out, "# HELP {name} Inference requests received, per API.\n# TYPE {name} counter");
        for api in Api::ALL {
            let _ =
                writeln!(out, "{name}{{api=\"{}\"}} {}", api.label(), self.api_requests[api as usize].load(Relaxed));
        }
        let name = "steerlm_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time to answer an inference request, per API.\n# TYPE {name} histogram");
        for api in Api::ALL {
            self.api_latency[api as usize].render(out, name, &format!("api=\"{}\"", api.label()));
        }
        let name = "steerlm_request_duration_quantile_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} p50 and p99 of the time to answer, per API (bucket upper bounds).\n# TYPE {name} gauge"
        );
        for api in Api::ALL {
            for quantile in [0.5, 0.99] {
                let value = self.api_latency[api as usize].quantile(quantile);
                let _ = writeln!(out, "{name}{{api=\"{}\",quantile=\"{quantile}\"}} {value}", api.label());
            }
        }
        let name = "steerlm_queue_wait_seconds";
        let _ = writeln!(out, "# HELP {name} Time a request waited for its first batch.\n# TYPE {name} histogram");
        self.queue_wait.render(out, name, "");
    }
}

/// One request being answered. Dropped without [`InFlight::answered`] (the client hung
/// up and the handler's future was dropped), it counts as cancelled.
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    api: Api,
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
        let took = self.started.elapsed();
        self.metrics.request_micros.fetch_add(took.as_micros() as u64, Relaxed);
        self.metrics.api_latency[self.api as usize].observe(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_counted_however_it_ends() {
        let metrics = Metrics::default();
        metrics.start_request(Api::Kserve).answered(true);
        metrics.start_request(Api::OpenRlhf).answered(false);
        drop(metrics.start_request(Api::OpenRlhf));
        assert_eq!(metrics.requests.load(Relaxed), 3);
        assert_eq!(metrics.failed_requests.load(Relaxed), 1);
        assert_eq!(metrics.cancelled_requests.load(Relaxed), 1);
        let text = metrics.render();
        assert!(text.contains("\nsteerlm_requests_total 3\n"), "{text}");
        assert!(text.contains("\nsteerlm_cancelled_requests_total 1\n"), "{text}");
        assert!(text.contains("\nsteerlm_api_requests_total{api=\"openrlhf\"} 2\n"), "{text}");
        assert!(text.contains("\nsteerlm_request_duration_seconds_count{api=\"kserve\"} 1\n"), "{text}");
        assert!(text.contains("steerlm_request_duration_seconds_bucket{api=\"openrlhf\",le=\"+Inf\"} 2\n"), "{text}");
    }

    #[test]
    fn quantiles_are_the_bucket_bounds_that_hold_them() {
        let histogram = Histogram::default();
        assert_eq!(histogram.quantile(0.5), 0.0);
        for millis in [1, 1, 2, 3, 40, 40, 40, 40, 40, 2000] {
            histogram.observe(Duration::from_millis(millis));
        }
        assert_eq!(histogram.quantile(0.2), 0.001);
        assert_eq!(histogram.quantile(0.5), 0.05);
        assert_eq!(histogram.quantile(0.99), 2.5);
        let mut out = String::new();
        histogram.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0025\"} 3\n") && out.contains("x_count 10\n"), "{out}");
    }
}

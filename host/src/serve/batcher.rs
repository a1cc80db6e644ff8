//! Dynamic batching by tokens across requests. Every request's sequences join one
//! queue; each batch takes sequences round-robin across the waiting requests, one at a
//! time, up to `max_tokens` tokens. A big request is so split into bounded batches that
//! interleave with everyone else's: a request that arrives while a big one runs is in
//! the next batch or the one after. One batch runs on the device at a time. A request
//! whose client has gone (its future was dropped) has its unscored sequences skipped.

use super::metrics::Metrics;
use crate::model::RewardModel;
use anyhow::{Result, anyhow};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone)]
pub struct Batcher {
    sender: mpsc::Sender<Job>,
}

#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// Most tokens in one batch (a single longer sequence still runs, alone).
    pub max_tokens: usize,
    /// How long the first request after a quiet spell waits for company.
    pub max_delay: Duration,
    /// `false` never merges requests: each batch holds one request's sequences.
    pub enabled: bool,
}

impl Batcher {
    pub fn start(model: Arc<RewardModel>, policy: BatchPolicy, metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = mpsc::channel(4096);
        tokio::spawn(run(model, policy, metrics, receiver));
        Batcher { sender }
    }

    /// Queues sequences and waits for their scores, in the same order. Dropping the
    /// returned future (the client hung up) cancels the sequences not yet scheduled.
    pub async fn score(&self, sequences: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let job =
            Job { scores: Vec::with_capacity(sequences.len()), sequences, next: 0, reply, queued: Instant::now() };
        self.sender.send(job).await.map_err(|_| anyhow!("the batcher stopped"))?;
        answer.await.map_err(|_| anyhow!("the batcher dropped the request"))?
    }
}

/// One request's sequences on their way through the queue.
struct Job {
    /// Each is taken (left empty) when it is scheduled.
    sequences: Vec<Vec<u32>>,
    /// The first sequence not yet scheduled.
    next: usize,
    /// Scores of the sequences run so far, in order (batches finish in order).
    scores: Vec<Vec<f32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
    /// When the request joined the queue (for the queue-wait histogram).
    queued: Instant,
}

impl Job {
    fn next_len(&self) -> Option<usize> {
        self.sequences.get(self.next).map(Vec::len)
    }

    fn unscheduled(&self) -> usize {
        self.sequences.len() - self.next
    }

    fn is_scored(&self) -> bool {
        self.scores.len() == self.sequences.len()
    }
}

/// The sequences of one device pass and the requests they belong to.
#[derive(Default)]
struct Batch {
    sequences: Vec<Vec<u32>>,
    /// For each sequence, the id of its job.
    owners: Vec<u64>,
    tokens: usize,
    /// How long each request that starts in this batch waited for it.
    waits: Vec<Duration>,
}

/// The waiting requests, in turn order.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<(u64, Job)>,
    next_id: u64,
}

impl Queue {
    fn push(&mut self, job: Job) {
        self.jobs.push_back((self.next_id, job));
        self.next_id += 1;
    }

    fn unscheduled_tokens(&self) -> usize {
        self.jobs.iter().flat_map(|(_, job)| &job.sequences[job.next..]).map(Vec::len).sum()
    }

    /// Forgets requests whose client is gone, counting the sequences never run.
    fn drop_cancelled(&mut self, metrics: &Metrics) {
        self.jobs.retain(|(_, job)| {
            let gone = job.reply.is_closed();
            if gone {
                metrics.skipped_sequences.fetch_add(job.unscheduled() as u64, Relaxed);
            }
            !gone
        });
    }

    /// Takes sequences round-robin across the requests, one per request per pass,
    /// while they fit in the token budget; then the next request gets the first turn.
    fn next_batch(&mut self, policy: &BatchPolicy) -> Batch {
        let mut batch = Batch::default();
        let requests = if policy.enabled { self.jobs.len() } else { 1 };
        loop {
            let mut added = false;
            for (id, job) in self.jobs.iter_mut().take(requests) {
                let Some(len) = job.next_len() else { continue };
                if !batch.sequences.is_empty() && batch.tokens + len > policy.max_tokens {
                    continue;
                }
                if job.next == 0 {
                    batch.waits.push(job.queued.elapsed());
                }
                batch.sequences.push(std::mem::take(&mut job.sequences[job.next]));
                batch.owners.push(*id);
                batch.tokens += len;
                job.next += 1;
                added = true;
            }
            if !added {
                break;
            }
        }
        self.jobs.rotate_left(1.min(self.jobs.len()));
        batch
    }

    /// Hands a batch's scores to their requests and answers those now complete; on an
    /// error, every request in the batch gets it.
    fn deliver(&mut self, owners: &[u64], result: Result<Vec<Vec<f32>>>) {
        match result {
            Ok(scores) => {
                for (owner, score) in owners.iter().zip(scores) {
                    if let Some((_, job)) = self.jobs.iter_mut().find(|(id, _)| id == owner) {
                        job.scores.push(score);
                    }
                }
                let mut waiting = VecDeque::with_capacity(self.jobs.len());
                for (id, job) in self.jobs.drain(..) {
                    if job.is_scored() {
                        let _ = job.reply.send(Ok(job.scores));
                    } else {
                        waiting.push_back((id, job));
                    }
                }
                self.jobs = waiting;
            }
            Err(e) => {
                let message = format!("{e:#}");
                let mut waiting = VecDeque::with_capacity(self.jobs.len());
                for (id, job) in self.jobs.drain(..) {
                    if owners.contains(&id) {
                        let _ = job.reply.send(Err(anyhow!("{message}")));
                    } else {
                        waiting.push_back((id, job));
                    }
                }
                self.jobs = waiting;
            }
        }
    }
}

async fn run(model: Arc<RewardModel>, policy: BatchPolicy, metrics: Arc<Metrics>, mut incoming: mpsc::Receiver<Job>) {
    let mut queue = Queue::default();
    loop {
        if queue.jobs.is_empty() {
            match incoming.recv().await {
                Some(job) => queue.push(job),
                None => return,
            }
            if policy.enabled {
                let deadline = tokio::time::Instant::now() + policy.max_delay;
                while queue.unscheduled_tokens() < policy.max_tokens {
                    match tokio::time::timeout_at(deadline, incoming.recv()).await {
                        Ok(Some(job)) => queue.push(job),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        while let Ok(job) = incoming.try_recv() {
            queue.push(job);
        }
        queue.drop_cancelled(&metrics);
        let batch = queue.next_batch(&policy);
        batch.waits.iter().for_each(|&wait| metrics.queue_wait.observe(wait));
        if batch.sequences.is_empty() {
            continue;
        }
        metrics.queue_depth.store((queue.jobs.len() + incoming.len()) as u64, Relaxed);
        let Batch { sequences, owners, tokens, .. } = batch;
        let count = sequences.len();
        let model = Arc::clone(&model);
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || model.score(&sequences))
            .await
            .map_err(|e| anyhow!("the model panicked: {e}"))
            .and_then(|r| r);
        metrics.record_batch(count, tokens, started.elapsed());
        queue.deliver(&owners, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(lengths: &[usize]) -> (Job, oneshot::Receiver<Result<Vec<Vec<f32>>>>) {
        let (reply, answer) = oneshot::channel();
        let sequences = lengths.iter().map(|&n| vec![1; n]).collect();
        (Job { sequences, next: 0, scores: Vec::new(), reply, queued: Instant::now() }, answer)
    }

    fn policy(max_tokens: usize) -> BatchPolicy {
        BatchPolicy { max_tokens, max_delay: Duration::ZERO, enabled: true }
    }

    /// Scores each sequence by its owner, so answers can be checked.
    fn fake_scores(batch: &Batch) -> Result<Vec<Vec<f32>>> {
        Ok(batch.sequences.iter().map(|s| vec![s.len() as f32]).collect())
    }

    #[test]
    fn a_small_request_is_interleaved_with_a_big_one() {
        let mut queue = Queue::default();
        let (big, mut big_answer) = job(&[4; 100]);
        let (small, mut small_answer) = job(&[3]);
        queue.push(big);
        queue.push(small);
        let first = queue.next_batch(&policy(8));
        assert_eq!(first.owners, [0, 1], "round-robin: one from each request, within 8 tokens");
        queue.deliver(&first.owners.clone(), fake_scores(&first));
        assert_eq!(small_answer.try_recv().unwrap().unwrap(), [vec![3.0]]);
        assert!(big_answer.try_recv().is_err(), "the big one is not done");
        let mut batches = 1;
        while !queue.jobs.is_empty() {
            let batch = queue.next_batch(&policy(8));
            assert!(batch.tokens <= 8);
            queue.deliver(&batch.owners.clone(), fake_scores(&batch));
            batches += 1;
        }
        assert_eq!(batches, 1 + 99 / 2 + 1);
        assert_eq!(big_answer.try_recv().unwrap().unwrap().len(), 100);
    }

    #[test]
    fn a_sequence_longer_than_the_budget_runs_alone() {
        let mut queue = Queue::default();
        let (long, _answer) = job(&[50, 2]);
        queue.push(long);
        let batch = queue.next_batch(&policy(8));
        assert_eq!(batch.tokens, 50);
        assert_eq!(batch.sequences.len(), 1);
    }

    #[test]
    fn cancelled_requests_are_skipped_and_counted() {
        let metrics = Metrics::default();
        let mut queue = Queue::default();
        let (gone, answer) = job(&[1, 1, 1]);
        queue.push(gone);
        let batch = queue.next_batch(&policy(1));
        drop(answer);
        queue.deliver(&batch.owners.clone(), fake_scores(&batch));
        queue.drop_cancelled(&metrics);
        assert!(queue.jobs.is_empty());
        assert_eq!(metrics.skipped_sequences.load(Relaxed), 2);
    }

    #[test]
    fn without_dynamic_batching_each_batch_is_one_request() {
        let mut queue = Queue::default();
        let (a, _a) = job(&[1, 1]);
        let (b, _b) = job(&[1]);
        queue.push(a);
        queue.push(b);
        let unmerged = BatchPolicy { enabled: false, ..policy(100) };
        assert_eq!(queue.next_batch(&unmerged).owners, [0, 0]);
        assert_eq!(queue.next_batch(&unmerged).owners, [1]);
    }
}

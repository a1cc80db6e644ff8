//! Dynamic batching: concurrent requests wait in one queue and are merged into packed
//! batches bounded by a token budget and a maximum queue delay; one batch runs on the
//! device at a time.

use super::metrics::Metrics;
use crate::model::RewardModel;
use anyhow::{Result, anyhow};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub struct Job {
    pub sequences: Vec<Vec<u32>>,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

#[derive(Clone)]
pub struct Batcher {
    sender: mpsc::Sender<Job>,
}

#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// Most tokens in one batch (a single larger request still runs, alone).
    pub max_tokens: usize,
    /// How long the first request of a batch waits for company.
    pub max_delay: Duration,
    /// `false` runs every request on its own (for comparison).
    pub enabled: bool,
}

impl Batcher {
    pub fn start(model: Arc<RewardModel>, policy: BatchPolicy, metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = mpsc::channel(4096);
        tokio::spawn(run(model, policy, metrics, receiver));
        Batcher { sender }
    }

    /// Queues sequences and waits for their scores.
    pub async fn score(&self, sequences: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(Job { sequences, reply }).await.map_err(|_| anyhow!("the batcher stopped"))?;
        answer.await.map_err(|_| anyhow!("the batcher dropped the request"))?
    }
}

fn tokens(job: &Job) -> usize {
    job.sequences.iter().map(Vec::len).sum()
}

async fn run(model: Arc<RewardModel>, policy: BatchPolicy, metrics: Arc<Metrics>, mut queue: mpsc::Receiver<Job>) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut budget = tokens(&first);
        let mut jobs = vec![first];
        if policy.enabled {
            let deadline = tokio::time::Instant::now() + policy.max_delay;
            while budget < policy.max_tokens {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => {
                        let size = tokens(&job);
                        if budget + size > policy.max_tokens {
                            carried = Some(job);
                            break;
                        }
                        budget += size;
                        jobs.push(job);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        metrics.queue_depth.store(queue.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let sequences: Vec<Vec<u32>> = jobs.iter().flat_map(|j| j.sequences.iter().cloned()).collect();
        let model = Arc::clone(&model);
        let started = Instant::now();
        let count = sequences.len();
        let result = tokio::task::spawn_blocking(move || model.score(&sequences))
            .await
            .map_err(|e| anyhow!("the model panicked: {e}"))
            .and_then(|r| r);
        metrics.record_batch(count, budget, started.elapsed());
        match result {
            Ok(scores) => {
                let mut scores = scores.into_iter();
                for job in jobs {
                    let mine: Vec<Vec<f32>> = scores.by_ref().take(job.sequences.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                for job in jobs {
                    let _ = job.reply.send(Err(anyhow!("{message}")));
                }
            }
        }
    }
}

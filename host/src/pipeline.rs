//! Converting chunks on several threads at once, with results consumed in input order.
//!
//! Chunks are independent, so each worker thread owns its own converter (for the
//! component engine: its own instance, with its own memory) and takes the next chunk
//! from the reader. The calling thread puts results back in order before consuming
//! them, so output bytes and the first error reported are the same for any number of
//! threads.

use crate::input::Chunk;
use anyhow::{Result, anyhow};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};

/// Runs `work` over every chunk on `threads` workers, each made by `make_worker`, and
/// hands the results to `consume` in chunk order. Stops at the first error.
pub fn run_ordered<W, T, M, F, C>(
    chunks: Receiver<Result<Chunk>>,
    threads: usize,
    make_worker: M,
    work: F,
    mut consume: C,
) -> Result<()>
where
    T: Send,
    M: Fn() -> Result<W> + Sync,
    F: Fn(&mut W, &Chunk) -> Result<T> + Sync,
    C: FnMut(&Chunk, T) -> Result<()>,
{
    // The sequence number is taken under the same lock as the chunk, so it follows
    // input order.
    let source = Mutex::new((chunks, 0u64));
    let stop = AtomicBool::new(false);
    // `None` marks a worker that could not start: fatal at once.
    let (results, collected) = channel::<(Option<u64>, Result<(Chunk, T)>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let results = results.clone();
            let (source, stop, make_worker, work) = (&source, &stop, &make_worker, &work);
            scope.spawn(move || {
                let mut worker = match make_worker() {
                    Ok(worker) => worker,
                    Err(e) => {
                        let _ = results.send((None, Err(e)));
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    let (seq, next) = {
                        let mut guard = source.lock().expect("no worker panics holding the lock");
                        let next = guard.0.recv();
                        guard.1 += 1;
                        (guard.1 - 1, next)
                    };
                    let Ok(chunk) = next else { break };
                    let result = chunk.and_then(|chunk| work(&mut worker, &chunk).map(|t| (chunk, t)));
                    let failed = result.is_err();
                    if results.send((Some(seq), result)).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(results);

        let outcome = (|| {
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            for (seq, result) in &collected {
                let Some(seq) = seq else { return result.map(|_| ()) };
                pending.insert(seq, result);
                while let Some(result) = pending.remove(&next) {
                    let (chunk, value) = result?;
                    consume(&chunk, value)?;
                    next += 1;
                }
            }
            // Anything left is behind an error that ended its worker early.
            match pending.into_values().next() {
                Some(Err(e)) => Err(e),
                Some(Ok(_)) => Err(anyhow!("a conversion worker stopped early")),
                None => Ok(()),
            }
        })();
        if outcome.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        // Keep draining so no worker blocks while the scope joins them.
        for _ in &collected {}
        outcome
    })
}

/// Worker threads to use by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

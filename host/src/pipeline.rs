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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Condvar, Mutex};

/// Chunks that may be in flight (taken from the reader and not yet consumed) per
/// worker. Memory stays at `threads * IN_FLIGHT_PER_THREAD` chunks and their results
/// however much faster conversion is than the consumer (a `.gz` output, a slow disk).
pub const IN_FLIGHT_PER_THREAD: usize = 2;

/// Counts chunks in flight. A worker takes a permit before it takes a chunk and the
/// consumer gives it back once that chunk is consumed; as the chunk the consumer waits
/// for next is always among those already holding a permit, waiting on a permit never
/// blocks the in-order reassembly.
struct Permits {
    available: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Permits {
    fn new(count: usize) -> Self {
        Permits { available: Mutex::new((count, false)), changed: Condvar::new() }
    }

    /// Waits for a permit; `false` once closed.
    fn acquire(&self) -> bool {
        let mut state = self.available.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *state {
                (_, true) => return false,
                (0, false) => state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
                (ref mut n, false) => {
                    *n -= 1;
                    return true;
                }
            }
        }
    }

    fn release(&self) {
        self.available.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
        self.changed.notify_one();
    }

    /// Wakes every waiting worker for good (the run is over).
    fn close(&self) {
        self.available.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed.notify_all();
    }
}

/// Runs `work` over every chunk on `threads` workers, each made by `make_worker`, and
/// hands the results to `consume` in chunk order. Stops at the first error. At most
/// `threads * IN_FLIGHT_PER_THREAD` chunks are in flight at once.
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
    let threads = threads.max(1);
    // The sequence number is taken under the same lock as the chunk, so it follows
    // input order.
    let source = Mutex::new((chunks, 0u64));
    let stop = AtomicBool::new(false);
    let permits = Permits::new(threads * IN_FLIGHT_PER_THREAD);
    // Unbounded, but never holds more results than there are permits. `None` marks a
    // worker that could not start: fatal at once.
    let (results, collected) = channel::<(Option<u64>, Result<(Chunk, T)>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let results = results.clone();
            let (source, stop, permits, make_worker, work) = (&source, &stop, &permits, &make_worker, &work);
            scope.spawn(move || {
                let mut worker = match make_worker() {
                    Ok(worker) => worker,
                    Err(e) => {
                        let _ = results.send((None, Err(e)));
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) && permits.acquire() {
                    let (seq, next) = {
                        let mut guard = source.lock().expect("no worker panics holding the lock");
                        let next = guard.0.recv();
                        guard.1 += 1;
                        (guard.1 - 1, next)
                    };
                    let Ok(chunk) = next else {
                        permits.release();
                        break;
                    };
                    // A panic becomes this chunk's error: a worker that died silently would
                    // leave the in-order reassembly waiting for its chunk for ever.
                    let result = chunk.and_then(|chunk| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut worker, &chunk)))
                            .unwrap_or_else(|_| Err(anyhow!("a conversion worker panicked")))
                            .map(|t| (chunk, t))
                    });
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
                    drop(chunk);
                    permits.release();
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
        // Workers still waiting for a permit have nothing left to do.
        permits.close();
        // Keep draining so no worker blocks while the scope joins them.
        for _ in &collected {}
        outcome
    })
}

/// Worker threads to use by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// `count` one-byte chunks from a reader thread; chunk `i` has `first_line` `i`.
    fn chunks(count: u64) -> Receiver<Result<Chunk>> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(2);
        std::thread::spawn(move || {
            for i in 0..count {
                if sender.send(Ok(Chunk { bytes: vec![b'x'], first_line: i })).is_err() {
                    break;
                }
            }
        });
        receiver
    }

    #[test]
    fn a_slow_consumer_bounds_the_chunks_in_flight() {
        let threads = 3;
        let (in_flight, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let mut consumed = Vec::new();
        run_ordered(
            chunks(200),
            threads,
            || Ok(()),
            |_, chunk| {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                Ok(chunk.first_line)
            },
            |chunk, value| {
                assert_eq!(value, chunk.first_line);
                consumed.push(value);
                // Slower than the workers, as a gzip output or a slow disk is.
                std::thread::sleep(Duration::from_millis(1));
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(consumed, (0..200).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!(most <= threads * IN_FLIGHT_PER_THREAD, "{most} chunks were in flight at once");
    }

    #[test]
    fn results_are_consumed_in_input_order_whatever_finishes_first() {
        let mut consumed = Vec::new();
        run_ordered(
            chunks(100),
            4,
            || Ok(()),
            |_, chunk| {
                // Earlier chunks take longer, so later ones finish first.
                std::thread::sleep(Duration::from_micros((100 - chunk.first_line) * 20));
                Ok(chunk.first_line)
            },
            |_, value| {
                consumed.push(value);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(consumed, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_worker_fails_the_run_instead_of_hanging_it() {
        let error = run_ordered(
            chunks(100),
            2,
            || Ok(()),
            |_, chunk| {
                assert!(chunk.first_line != 3, "a converter bug");
                Ok(())
            },
            |_, ()| Ok(()),
        )
        .unwrap_err();
        assert!(error.to_string().contains("panicked"), "{error}");
    }

    #[test]
    fn the_first_error_in_input_order_stops_the_run() {
        let mut consumed = Vec::new();
        let error = run_ordered(
            chunks(1000),
            4,
            || Ok(()),
            |_, chunk| {
                if chunk.first_line % 100 == 37 { Err(anyhow!("bad chunk {}", chunk.first_line)) } else { Ok(()) }
            },
            |chunk, ()| {
                consumed.push(chunk.first_line);
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "bad chunk 37");
        assert_eq!(consumed, (0..37).collect::<Vec<_>>());
    }

    #[test]
    fn a_consumer_error_or_a_worker_that_cannot_start_ends_the_run() {
        let error = run_ordered(
            chunks(1000),
            4,
            || Ok(()),
            |_, _| Ok(()),
            |chunk, ()| match chunk.first_line {
                5 => Err(anyhow!("disk full")),
                _ => Ok(()),
            },
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "disk full");
        let error = run_ordered(chunks(10), 2, || Err::<(), _>(anyhow!("no instance")), |_, _| Ok(()), |_, ()| Ok(()))
            .unwrap_err();
        assert_eq!(error.to_string(), "no instance");
    }
}

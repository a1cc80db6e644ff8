//! A memory budget for code run on a checkpoint's behalf: its chat template.
//!
//! A chat template is a program from the checkpoint, and a hostile one can ask for
//! unbounded memory in a handful of instructions (a string doubled 40 times in a loop or
//! a recursive macro is a terabyte), which minijinja's fuel does not see. The operating
//! system then kills the whole process, a server with it.
//!
//! [`BudgetedAllocator`] wraps the system allocator and counts the bytes a thread holds
//! while it runs [`run_within`]. An allocation that would take the thread past its budget
//! never returns: the thread reports the overrun and sleeps for good, holding at most its
//! budget, and the caller gets [`OverBudget`] (Rust cannot fail an allocation without
//! aborting the process, and a thread cannot be stopped from outside). The model then
//! disables that template, so one hostile template strands at most one thread.
//!
//! The budget applies only where the allocator is installed: a binary opts in with
//! `#[global_allocator] static ALLOCATOR: BudgetedAllocator = BudgetedAllocator;` (the
//! `steerlm` binary does). Elsewhere [`run_within`] runs the work in place, unbounded, as
//! transformers does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// The system allocator, counting what threads inside [`run_within`] allocate.
pub struct BudgetedAllocator;

thread_local! {
    // Const-initialised cells without destructors: the allocator may read them at any
    // time without allocating.
    static LIMIT: Cell<usize> = const { Cell::new(0) };
    static HELD: Cell<isize> = const { Cell::new(0) };
    static WATCH: Cell<*const Watch> = const { Cell::new(std::ptr::null()) };
}

/// What the caller waits on: the work finished, or overran its budget.
#[derive(Default)]
struct Watch {
    state: Mutex<Ending>,
    changed: Condvar,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Ending {
    #[default]
    Running,
    Finished,
    /// The bytes held and the size of the allocation refused.
    OverBudget(usize, usize),
}

/// The work asked for more memory than its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget {
    pub budget: usize,
    /// Bytes the work held when it asked.
    pub held: usize,
    /// The allocation it asked for.
    pub requested: usize,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: f64 = (1 << 20) as f64;
        write!(
            f,
            "it asked for {:.1} MiB more while holding {:.1} MiB, past its budget of {:.0} MiB",
            self.requested as f64 / MIB,
            self.held as f64 / MIB,
            self.budget as f64 / MIB
        )
    }
}

impl std::error::Error for OverBudget {}

/// Counts `size` more bytes on this thread; false if that passes its budget (after
/// reporting it, when the thread is watched).
fn take(size: usize) -> bool {
    let limit = LIMIT.with(Cell::get);
    // A panicking thread allocates freely: its hook may take global locks (the backtrace's,
    // stderr's) that a stranded thread would hold for good.
    if limit == 0 || std::thread::panicking() {
        return true;
    }
    let held = HELD.with(Cell::get);
    let after = held.saturating_add(size as isize);
    if after > limit as isize {
        return false;
    }
    HELD.with(|h| h.set(after));
    true
}

fn give_back(size: usize) {
    if LIMIT.with(Cell::get) != 0 {
        HELD.with(|h| h.set(h.get().saturating_sub(size as isize)));
    }
}

/// Reports the overrun to the waiting caller and never returns. Takes no locks the
/// allocator could need and allocates nothing (futex-based Mutex and Condvar, nanosleep).
fn strand(requested: usize) -> ! {
    let held = HELD.with(Cell::get).max(0) as usize;
    let watch = WATCH.with(Cell::get);
    // Nothing more is counted: the thread is stopping for good.
    LIMIT.with(|l| l.set(0));
    if !watch.is_null() {
        // SAFETY: `run_within` keeps the Watch alive (an Arc this thread holds) for as long
        // as the thread runs, and this thread never returns from here.
        let watch = unsafe { &*watch };
        if let Ok(mut state) = watch.state.lock() {
            *state = Ending::OverBudget(held, requested);
        }
        watch.changed.notify_all();
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

// SAFETY: every call is forwarded to `System` with the same arguments; the counting
// touches only const-initialised thread-locals.
unsafe impl GlobalAlloc for BudgetedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            strand(layout.size());
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            strand(layout.size());
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        give_back(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !take(new_size - layout.size()) {
            strand(new_size - layout.size());
        }
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size < layout.size() {
            give_back(layout.size() - new_size);
        } else if moved.is_null() {
            give_back(new_size - layout.size());
        }
        moved
    }
}

/// Whether this process allocates through [`BudgetedAllocator`]: a box made under a
/// budget is counted only if it is.
pub fn installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        LIMIT.with(|l| l.set(usize::MAX / 2));
        HELD.with(|h| h.set(0));
        let probe = std::hint::black_box(Box::new([0u8; 64]));
        let counted = HELD.with(Cell::get) >= 64;
        drop(probe);
        LIMIT.with(|l| l.set(0));
        counted
    })
}

/// A job for a [`Worker`].
type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs budgeted jobs one at a time. Idle workers wait in [`IDLE`], so a
/// rendering costs a channel send rather than a thread start (about a tenth of a
/// millisecond each, measured on 3,000 small conversations).
struct Worker {
    jobs: mpsc::Sender<Job>,
}

/// Idle workers; a burst of concurrent work leaves at most this many behind.
static IDLE: Mutex<Vec<Worker>> = Mutex::new(Vec::new());
const MOST_IDLE: usize = 16;

impl Worker {
    fn take() -> anyhow::Result<Worker> {
        if let Some(worker) = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(worker);
        }
        let (jobs, inbox) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("steerlm-budgeted".into())
            .spawn(move || inbox.into_iter().for_each(|job| job()))
            .map_err(|e| anyhow::anyhow!("cannot start a thread to run it on: {e}"))?;
        Ok(Worker { jobs })
    }

    /// Back to the idle list, or ended (its channel dropped) when the list is full.
    fn give_back(self) {
        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MOST_IDLE {
            idle.push(self);
        }
    }
}

/// Runs `work` with at most `budget` bytes held at once, on a worker thread, when
/// [`BudgetedAllocator`] is installed; in place, unbounded, when it is not. An overrun is
/// an [`OverBudget`] error (and the worker is left asleep for good, holding at most
/// `budget`); a thread that cannot start is an error too. A panic in `work` is resumed here.
pub fn run_within<T, F>(budget: usize, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if !installed() {
        return Ok(work());
    }
    let watch = Arc::new(Watch::default());
    let (send, receive) = mpsc::sync_channel(1);
    let job_watch = Arc::clone(&watch);
    let job: Job = Box::new(move || {
        WATCH.with(|w| w.set(Arc::as_ptr(&job_watch)));
        HELD.with(|h| h.set(0));
        LIMIT.with(|l| l.set(budget.max(1)));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        LIMIT.with(|l| l.set(0));
        WATCH.with(|w| w.set(std::ptr::null()));
        // The caller is waiting on the Watch and holds the receiver: neither fails.
        let _ = send.send(outcome);
        *job_watch.state.lock().unwrap_or_else(|e| e.into_inner()) = Ending::Finished;
        job_watch.changed.notify_all();
    });
    let worker = Worker::take()?;
    // A worker's thread runs until its channel is dropped: the send cannot fail.
    worker.jobs.send(job).map_err(|_| anyhow::anyhow!("a budgeted worker thread has ended"))?;
    let mut state = watch.state.lock().unwrap_or_else(|e| e.into_inner());
    while *state == Ending::Running {
        state = watch.changed.wait(state).unwrap_or_else(|e| e.into_inner());
    }
    match *state {
        // The stranded worker is not given back.
        Ending::OverBudget(held, requested) => Err(OverBudget { budget, held, requested }.into()),
        _ => {
            worker.give_back();
            match receive.recv().expect("the job sends before it finishes") {
                Ok(value) => Ok(value),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_test_binary_counts_allocations() {
        assert!(installed());
    }

    #[test]
    fn work_within_its_budget_returns_its_value() {
        let value = run_within(8 * MIB, || vec![7u8; MIB].iter().map(|&b| b as usize).sum::<usize>()).unwrap();
        assert_eq!(value, 7 * MIB);
    }

    #[test]
    fn freed_memory_is_given_back_to_the_budget() {
        // 64 MiB allocated in all, never more than 1 MiB held at once.
        let rounds = run_within(4 * MIB, || (0..64).map(|i| vec![i as u8; MIB]).filter(|v| v[0] % 2 == 0).count());
        assert_eq!(rounds.unwrap(), 32);
    }

    #[test]
    fn growing_past_the_budget_is_refused_and_the_caller_goes_on() {
        let e = run_within(16 * MIB, || {
            let mut text = String::from("x");
            for _ in 0..40 {
                text = format!("{text}{text}");
            }
            text.len()
        })
        .unwrap_err();
        let over = e.downcast_ref::<OverBudget>().expect("an OverBudget error");
        assert_eq!(over.budget, 16 * MIB);
        assert!(over.held <= 16 * MIB && over.held + over.requested > 16 * MIB, "{over:?}");
        assert!(e.to_string().contains("past its budget of 16 MiB"), "{e}");
        // This thread is not budgeted: it allocates as before.
        assert_eq!(vec![0u8; 64 * MIB].len(), 64 * MIB);
    }

    /// Workers are reused, and one that was stranded is not.
    #[test]
    fn workers_are_reused_and_stranded_ones_are_not() {
        let name = || std::thread::current().id();
        let first = run_within(MIB, name).unwrap();
        // Other tests run at the same time and take idle workers too: some of many runs
        // land on the same one.
        assert!((0..64).any(|_| run_within(MIB, name).unwrap() == first));
        let stranded = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&stranded);
        assert!(
            run_within(MIB, move || {
                *seen.lock().unwrap() = Some(std::thread::current().id());
                vec![0u8; 2 * MIB].len()
            })
            .is_err()
        );
        let stranded = stranded.lock().unwrap().expect("the work ran");
        assert!((0..64).all(|_| run_within(MIB, name).unwrap() != stranded));
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| run_within(MIB, || -> usize { panic!("inside") }));
        let payload = caught.unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"inside"));
    }
}

//! Budgets for code that runs someone else's program: a chat template. minijinja bounds a render's
//! steps (fuel) but not what one step costs (a string doubled, repeated to 100 MB, or searched
//! end to end), so a template inside its step budget can still take all memory, and hours.
//!
//! [`BudgetedAlloc`] wraps the process's allocator (the CLI, the wasm module, the fuzz targets and
//! the tests that need it install it with `#[global_allocator]`). While a thread runs under
//! [`with_budget`], it may hold at most [`Budget::live`] bytes at once and allocate at most
//! [`Budget::total`] in all (freed or not: a loop that builds and drops large strings runs out too),
//! and the allocation that would pass either does not happen:
//! - natively the thread stops there for good (it sleeps, holding what it had, at most the live
//!   budget, and no lock: it stops before the inner allocator is called), and the thread waiting for
//!   it gets [`Overrun::Memory`] — that is why a budgeted closure runs on a thread of its own, which
//!   also lets the waiting thread give up after [`Budget::seconds`] ([`Overrun::Time`]; the budgeted
//!   thread then stops at its next allocation);
//! - in wasm (one thread, no clock to wait on) the allocation fails and the module traps: the page's
//!   engine is disposed with `EngineDisposedError` (pkg/src/engine.js), having used at most the
//!   budget. Time there is bounded by running the engine in a worker, which `dispose()` ends.
//!
//! Without `BudgetedAlloc` installed (a library user's own binary) no byte is counted or refused;
//! the time limit still holds natively.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

/// What a budgeted closure may spend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Bytes held at once.
    pub live: u64,
    /// Bytes allocated in all, freed or not.
    pub total: u64,
    /// Wall-clock seconds natively (in wasm the page's worker is the bound).
    pub seconds: f64,
}

/// Why a budgeted closure did not return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// It asked for more bytes than its budget.
    Memory,
    /// It ran past its time (natively).
    Time,
    /// It panicked.
    Panic,
}

/// What a closure spent: the most bytes it held at once and the bytes it allocated in all (both 0
/// where `BudgetedAlloc` is not the global allocator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub peak: u64,
    pub total: u64,
}

thread_local! {
    /// Whether this thread runs under a budget.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
    static LIVE_MAX: Cell<i64> = const { Cell::new(0) };
    static TOTAL: Cell<u64> = const { Cell::new(0) };
    static TOTAL_MAX: Cell<u64> = const { Cell::new(0) };
    /// Natively, the flags this thread shares with the one waiting for it (`Shared`).
    #[cfg(not(target_arch = "wasm32"))]
    static SHARED: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
}

/// Flags between a budgeted thread and the thread waiting for it.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Default)]
struct Shared {
    /// Set by the budgeted thread when it passed its memory budget (then it sleeps).
    overrun: std::sync::atomic::AtomicBool,
    /// Set by the waiting thread when it gave up on time: the budgeted thread sleeps at its next
    /// allocation.
    cancelled: std::sync::atomic::AtomicBool,
}

/// The process's allocator `A`, refusing a budgeted thread's allocation past its budget.
pub struct BudgetedAlloc<A>(pub A);

/// Whether a budgeted thread may take `size` more bytes (counting them if so). A thread's locals
/// are read with `try_with`: while it exits they are gone, and it runs without a budget.
fn take(size: usize) -> bool {
    if !ACTIVE.try_with(Cell::get).unwrap_or(false) {
        return true;
    }
    #[cfg(not(target_arch = "wasm32"))]
    if shared().is_some_and(|s| s.cancelled.load(std::sync::atomic::Ordering::Relaxed)) {
        return false;
    }
    let size = size as u64;
    let total = TOTAL.with(Cell::get).saturating_add(size);
    let live = LIVE.with(Cell::get).saturating_add(size as i64);
    if total > TOTAL_MAX.with(Cell::get) || live > LIVE_MAX.with(Cell::get) {
        return false;
    }
    TOTAL.with(|t| t.set(total));
    LIVE.with(|l| l.set(live));
    PEAK.with(|p| p.set(p.get().max(live)));
    true
}

/// A budgeted thread freed `size` bytes.
fn give(size: usize) {
    if ACTIVE.try_with(Cell::get).unwrap_or(false) {
        LIVE.with(|l| l.set(l.get() - size as i64));
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn shared() -> Option<&'static Shared> {
    // SAFETY: `with_budget` keeps `Shared` alive for as long as the thread can run (an Arc that the
    // thread's closure owns); the pointer is null on every other thread.
    SHARED.try_with(Cell::get).ok().and_then(|p| unsafe { p.as_ref() })
}

/// A budgeted thread asked for too much: natively it flags that and sleeps for good; in wasm the
/// caller returns null and the module traps, with the budget ended first (the trap skips `end`, and
/// a later load in the same module must not find its allocations counted against a spent budget).
fn overrun() {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(shared) = shared() {
        shared.overrun.store(true, std::sync::atomic::Ordering::SeqCst);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    #[cfg(target_arch = "wasm32")]
    let _ = ACTIVE.try_with(|a| a.set(false));
}

// SAFETY: every call is passed to `A` unchanged, or refused (null) before `A` sees it.
unsafe impl<A: GlobalAlloc> GlobalAlloc for BudgetedAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            overrun();
            return std::ptr::null_mut();
        }
        self.0.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            overrun();
            return std::ptr::null_mut();
        }
        self.0.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        give(layout.size());
        self.0.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a new block and the old one freed (what a moving realloc does).
        if !take(new_size) {
            overrun();
            return std::ptr::null_mut();
        }
        let out = self.0.realloc(ptr, layout, new_size);
        match out.is_null() {
            true => give(new_size),
            false => give(layout.size()),
        }
        out
    }
}

/// Start counting on this thread.
fn begin(budget: &Budget) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TOTAL.with(|t| t.set(0));
    LIVE_MAX.with(|l| l.set(budget.live.min(i64::MAX as u64) as i64));
    TOTAL_MAX.with(|t| t.set(budget.total));
    ACTIVE.with(|a| a.set(true));
}

/// Stop counting on this thread, and say what was spent.
fn end() -> Spent {
    ACTIVE.with(|a| a.set(false));
    Spent { peak: PEAK.with(Cell::get).max(0) as u64, total: TOTAL.with(Cell::get) }
}

/// Run `f` within `budget` where [`BudgetedAlloc`] is the global allocator, and return what it
/// returned with what it spent. Natively `f` runs on a thread of its own, which is left asleep if it
/// passes the memory budget and abandoned if it passes the time; in wasm it runs here, and passing
/// the memory budget traps.
pub fn with_budget<T: Send + 'static>(
    budget: Budget,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<(T, Spent), Overrun> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::atomic::Ordering;
        use std::sync::{mpsc, Arc};
        use std::time::{Duration, Instant};

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::sync_channel(1);
        let theirs = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("hearth-budgeted".into())
            // Room for minijinja's nesting (its recursion is capped far below what this holds).
            .stack_size(8 << 20)
            .spawn(move || {
                SHARED.with(|s| s.set(Arc::as_ptr(&theirs)));
                begin(&budget);
                let out = f();
                let spent = end();
                let _ = tx.send((out, spent));
                drop(theirs);
            });
        let Ok(thread) = spawned else { return Err(Overrun::Memory) };
        let deadline = Instant::now() + Duration::from_secs_f64(budget.seconds.max(0.0));
        loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                // Joined, so that the thread's exit (its thread-locals' destructors) is over when
                // this returns: it only has that left to do.
                Ok(out) => {
                    let _ = thread.join();
                    return Ok(out);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(if shared.overrun.load(Ordering::SeqCst) { Overrun::Memory } else { Overrun::Panic })
                }
                Err(mpsc::RecvTimeoutError::Timeout) if shared.overrun.load(Ordering::SeqCst) => {
                    return Err(Overrun::Memory)
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    shared.cancelled.store(true, Ordering::SeqCst);
                    return Err(Overrun::Time);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
    #[cfg(target_arch = "wasm32")]
    {
        begin(&budget);
        let out = f();
        Ok((out, end()))
    }
}

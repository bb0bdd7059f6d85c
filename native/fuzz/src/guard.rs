//! What catches the failures `catch_unwind` cannot: an allocation so large
//! that it would abort the process (Rust does not unwind out of an
//! allocation failure; a server would die with every job and model in it),
//! and an input that never finishes. Both save the input being run as a
//! crash first, so the run that dies still leaves its reproducer.
//!
//! The allocator is the system one with a size check; the limit is off
//! (`usize::MAX`) until a run sets it. Inputs are at most 1 MiB, so one
//! allocation over the limit (512 MiB by default) is an input that makes
//! stoker allocate hundreds of times its size: what a hostile client would
//! use to exhaust a server's memory. libtorch allocates with its own
//! allocator and is not checked here; the engine's budget is what bounds it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// The system allocator, refusing (after saving the input) any single
/// allocation over [`set_alloc_limit`]'s limit.
pub struct Guarded;

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static TRIPPED: AtomicBool = AtomicBool::new(false);

/// Sets the largest single allocation allowed; `usize::MAX` turns the check off.
pub fn set_alloc_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

// SAFETY: every call is passed to `System` unchanged, except allocations
// over the limit, which return null as a failed allocation does; the
// callers then report the failure (`handle_alloc_error`) as they would
// the system's.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT.load(Ordering::Relaxed) {
            oversized(layout.size());
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT.load(Ordering::Relaxed) {
            oversized(layout.size());
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT.load(Ordering::Relaxed) {
            oversized(new_size);
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`; `ptr` came from this allocator, so from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// `eprintln!` straight to the process's stderr: a test harness captures
/// `eprintln!`, and what it captured is lost when the process aborts.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The input being run, for the crash file a dying run writes.
struct Current {
    target: &'static str,
    input: Vec<u8>,
    started: Option<Instant>,
    crash_dir: PathBuf,
}

static CURRENT: Mutex<Current> = Mutex::new(Current {
    target: "",
    input: Vec::new(),
    started: None,
    crash_dir: PathBuf::new(),
});

fn current() -> std::sync::MutexGuard<'static, Current> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the input about to run (copied: it stays readable however the
/// run ends).
pub fn begin(target: &'static str, input: &[u8], crash_dir: &std::path::Path) {
    let mut c = current();
    c.target = target;
    c.input.clear();
    c.input.extend_from_slice(input);
    c.started = Some(Instant::now());
    if c.crash_dir != crash_dir {
        c.crash_dir = crash_dir.to_path_buf();
    }
}

/// The input finished (returned or unwound).
pub fn end() {
    current().started = None;
}

/// Saves the running input as a crash and says what happened; the process
/// is about to die.
fn save_current(why: &str, wait: bool) {
    // The allocating thread may be the one holding the lock (it never
    // allocates much while it does), so it only tries; the watchdog waits.
    let c = if wait {
        current()
    } else {
        match CURRENT.try_lock() {
            Ok(c) => c,
            Err(_) => {
                say!("stoker-fuzz: {why} (the input could not be saved)");
                return;
            }
        }
    };
    if c.started.is_none() {
        say!("stoker-fuzz: {why}, outside any input");
        return;
    }
    match crate::runner::write_crash(&c.crash_dir, c.target, &c.input) {
        Ok(path) => {
            say!(
                "stoker-fuzz: CRASH in target {}: {why}\n  input: {}\n  replay: stoker-fuzz --target {} --replay {}",
                c.target,
                path.display(),
                c.target,
                path.display()
            );
        }
        Err(e) => say!(
            "stoker-fuzz: CRASH in target {}: {why} (saving the input failed: {e})",
            c.target
        ),
    }
}

#[cold]
fn oversized(size: usize) {
    if TRIPPED.swap(true, Ordering::SeqCst) {
        return;
    }
    let limit = LIMIT.load(Ordering::Relaxed);
    // Reporting allocates a little; that goes to the system allocator.
    save_current(&format!(
        "an allocation of {size} bytes, over the limit of {limit} bytes (--malloc-limit-mb): the process would abort or exhaust memory"
    ), false);
    say!(
        "stoker-fuzz: the allocation was asked for here:\n{}",
        std::backtrace::Backtrace::force_capture()
    );
    std::process::abort();
}

static TIMEOUT_MS: AtomicU64 = AtomicU64::new(u64::MAX);
static WATCHDOG: Once = Once::new();

/// Ends the process when one input runs longer than `timeout`, saving it
/// as a crash first (a hang is a denial of service). One thread serves
/// every run; the latest timeout applies.
pub fn watchdog(timeout: Duration) {
    TIMEOUT_MS.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    WATCHDOG.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("stoker-fuzz-watchdog".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(200));
                let timeout = Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed));
                let started = current().started;
                if started.is_some_and(|t| t.elapsed() > timeout) {
                    save_current(
                        &format!(
                            "one input ran over {} s (--timeout-s): a hang",
                            timeout.as_secs_f64()
                        ),
                        true,
                    );
                    std::process::exit(70);
                }
            });
        if let Err(e) = spawned {
            say!("stoker-fuzz: no watchdog thread ({e}); hangs will not be caught");
        }
    });
}

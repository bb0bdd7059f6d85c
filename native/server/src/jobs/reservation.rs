//! The bytes of partitions still streaming in, held against the cache budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes a DoPut holds while it streams; given back when dropped.
pub struct Reservation {
    pool: Arc<AtomicUsize>,
    budget: usize,
    held: usize,
}

impl Reservation {
    /// Nothing held yet, against `budget` bytes shared through `pool`.
    pub(super) fn new(pool: Arc<AtomicUsize>, budget: usize) -> Reservation {
        Reservation {
            pool,
            budget,
            held: 0,
        }
    }

    /// Takes `bytes` more from the shared pool; false (taking nothing) when
    /// the pool would exceed the budget.
    pub fn add(&mut self, bytes: usize) -> bool {
        let before = self.pool.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > self.budget {
            self.pool.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        self.held += bytes;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.held, Ordering::AcqRel);
    }
}

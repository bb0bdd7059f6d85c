//! Native objects the JVM holds, as `jlong` ids into a table rather than raw
//! pointers: a 0, closed or made-up id is an error the JVM sees as an
//! exception, never a dangling pointer. The Java owner swaps its id to 0 on
//! close, so each id is closed once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use stoker_core::{Error, Result};

pub struct Handles<T> {
    table: OnceLock<Mutex<HashMap<i64, Arc<T>>>>,
    next: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Handles<T> {
    pub const fn new() -> Self {
        Handles {
            table: OnceLock::new(),
            next: AtomicI64::new(1),
        }
    }

    fn table(&self) -> &Mutex<HashMap<i64, Arc<T>>> {
        self.table.get_or_init(|| Mutex::new(HashMap::new()))
    }

    pub fn insert(&self, value: T) -> i64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(self.table()).insert(id, Arc::new(value));
        id
    }

    pub fn get(&self, id: i64, what: &str) -> Result<Arc<T>> {
        lock(self.table()).get(&id).cloned().ok_or_else(|| {
            Error::invalid(format!("{what} handle {id} is closed or was never opened"))
        })
    }

    pub fn remove(&self, id: i64, what: &str) -> Result<()> {
        lock(self.table()).remove(&id).map(|_| ()).ok_or_else(|| {
            Error::invalid(format!("{what} handle {id} is closed or was never opened"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_closed_and_unknown_ids_are_errors() {
        let h: Handles<String> = Handles::new();
        let id = h.insert("x".into());
        assert_eq!(
            h.get(id, "client").map(|s| (*s).clone()),
            Ok("x".to_string())
        );
        assert!(h.get(0, "client").is_err());
        assert_eq!(h.remove(id, "client"), Ok(()));
        let e = h.get(id, "client").err().map(|e| e.message().to_string());
        assert!(e.is_some_and(|m| m.contains("closed or was never opened")));
        assert!(h.remove(id, "client").is_err());
    }
}

//! The fuzz targets: one per input surface a hostile client controls, each
//! with its seed corpus (real encodings made with stoker's own writers) and
//! its mutator. A target's `run` takes any bytes and must never panic: it
//! returns `Ok` when the input got past the surface's first parser, and
//! the parser's error when it did not (a rejection, which is fine). Later
//! stages' errors are checked (they must carry a message) and dropped.
//! Some targets also check invariants (what a writer writes, its reader
//! reads back): a broken one panics, and is a crash like any other.

use std::cell::RefCell;
use std::collections::BTreeMap;

use stoker_core::{Error, Result};

use crate::mutate::{mutate_bytes, Rng};

mod action_json;
mod data;
mod descriptor;
mod envelope;
mod evaluation;
mod flight_data;
mod ipc_features;
mod state;

/// A mutator: a new input from a seed (or a kept input) and the seeds.
pub type Mutator = fn(&mut Rng, &[u8], &[Vec<u8>]) -> Vec<u8>;

/// One input surface.
pub struct Target {
    pub name: &'static str,
    /// What the target feeds its input to (for `--help` and the docs).
    pub about: &'static str,
    /// The seed corpus.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Runs one input: `Err` is a rejection by the first parser.
    pub run: fn(&[u8]) -> Result<()>,
    /// Makes a new input from a seed and the other seeds.
    pub mutate: Mutator,
}

/// Every target, in the order a run visits them.
pub fn all() -> Vec<Target> {
    vec![
        envelope::target(),
        action_json::target(),
        flight_data::target(),
        ipc_features::target(),
        descriptor::target(),
        state::target(),
        evaluation::target(),
    ]
}

/// The target called `name`.
pub fn find(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

/// The names of every target, comma-separated (for messages).
pub fn names() -> String {
    all().iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// Byte-level mutation only: for targets whose input is a binary format.
pub(crate) fn byte_mutator(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = seed.to_vec();
    mutate_bytes(rng, &mut out, others);
    out
}

/// A refusal must say what is wrong: an error without a message is a
/// crash (a client would get a bare status code).
#[track_caller]
pub(crate) fn refused(e: Error) -> Error {
    assert!(
        !e.message().trim().is_empty(),
        "a {} error without a message",
        e.kind()
    );
    e
}

/// A later stage's result: its value, or `None` after checking its error.
#[track_caller]
pub(crate) fn check<T>(r: Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            refused(e);
            None
        }
    }
}

thread_local! {
    static REACHED: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Counts an input that reached `stage` (named `target: stage`): without
/// coverage feedback, this is how a run shows how deep its inputs got.
pub(crate) fn reached(stage: &'static str) {
    REACHED.with(|r| *r.borrow_mut().entry(stage).or_default() += 1);
}

/// The stages reached on this thread since the last call, with counts.
pub fn take_reached() -> BTreeMap<&'static str, u64> {
    REACHED.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

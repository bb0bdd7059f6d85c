//! stoker-fuzz: a mutation fuzzer over every input a hostile client
//! controls, on stable Rust.
//!
//! A stoker server takes bytes from the network and hands them to parsers
//! (action envelopes, JSON bodies, Flight data, Arrow IPC, descriptors and
//! tickets, states) and, through them, to the engine (model specs that say
//! how much to allocate). A panic there fails a request at best; an
//! allocation failure or a hang takes the server down with every job and
//! model in it. Unit tests check the inputs their authors thought of; a
//! fuzzer tries the ones nobody did.
//!
//! Why this shape: cargo-fuzz (libFuzzer) is coverage-guided but needs a
//! nightly compiler and sanitizer support, which a fresh machine with the
//! pinned stable toolchain lacks, and `make test` must run anywhere. So
//! this is a plain binary and library on stable: no coverage feedback.
//! Each target has an in-code seed corpus of real encodings made with
//! stoker's own writers; inputs are seeds mutated by [`mutate`] (stacked
//! byte mutations and splices, and for JSON inputs a JSON-aware mutator
//! that keeps the input JSON so it reaches the typed bodies and the engine,
//! and structure-aware mutators for the framed formats). Inputs a target
//! accepted are kept as extra bases, so mutations can stack past the
//! parsers; that is the only feedback.
//!
//! The targets ([`targets`]): `envelope` (DoAction bodies), `action_json`
//! (action bodies, model specs sized by the engine's budget and the small
//! ones built and trained), `flight_data` (DoPut/DoExchange request bodies
//! through stoker-wire's assembler and arrow-flight's decoder to features),
//! `ipc_features` (Arrow IPC streams to features and labels), `descriptor`
//! (descriptors, tickets, the keep header), `state` (state bytes: reading,
//! writing, averaging, loading into a model and a trainer).
//!
//! A crash is a panic (or an error without a message) in any of them,
//! caught with `catch_unwind`; an allocation over a limit (the process
//! would abort or exhaust memory) and an input that runs too long are
//! crashes too, caught by [`guard`], which saves the input before the
//! process ends. A crash's input is shrunk and written to
//! `target/fuzz/crashes/<target>-<fnv hash>.bin`, the run says how to replay
//! it (`stoker-fuzz --target T --replay FILE`) and exits non-zero. Once
//! fixed, the input goes to `native/fuzz/regressions/<target>/`, where a
//! test of this crate replays every file (`cargo test`); the tests also run
//! a short, deterministic pass over every target, so `cargo test --release
//! --workspace` exercises them all.

pub mod guard;
pub mod mutate;
pub mod runner;
pub mod targets;

/// Every allocation goes through the size check (off until a run sets it).
#[global_allocator]
static ALLOCATOR: guard::Guarded = guard::Guarded;

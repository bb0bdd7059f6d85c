//! stoker-client: the Rust client of `stoker serve` and the mapping between
//! stoker error kinds and gRPC status codes. It does not link libtorch, so
//! the JVM (libstoker_jni) and Python (stoker._native) bridges can use it
//! without loading torch; the server (native/flight) shares its status
//! mapping.

pub mod blocking;
pub mod client;
pub mod status;

pub use blocking::BlockingClient;
pub use client::{Client, ClientOptions};

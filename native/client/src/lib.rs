//! stoker-client: the Rust client of `stoker serve`. It does not link
//! libtorch, so the JVM (libstoker_jni) and Python (stoker._native) bridges
//! can use it without loading torch. What goes on the wire, and the error
//! kind <-> gRPC status mapping, it shares with the server through
//! native/wire (stoker-wire).

pub mod blocking;
pub mod call;
pub mod client;
pub mod connect;

pub use blocking::BlockingClient;
pub use client::{Client, ClientOptions, DEFAULT_LIVENESS};

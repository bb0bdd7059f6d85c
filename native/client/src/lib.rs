//! stoker-client: the Rust client of `stoker serve` and the mapping between
//! stoker error kinds and gRPC status codes. It does not link libtorch, so
//! the JVM (libstoker_jni) and Python (stoker._native) bridges can use it
//! without loading torch; the server (native/flight) shares its status
//! mapping and its wire format (`wire`, `body`, `inbound`): both sides
//! send Arrow data as HTTP/2 chunks of the buffers they hold, and read it
//! into aligned memory in one copy.

pub mod blocking;
pub mod body;
pub mod call;
pub mod client;
pub mod connect;
pub mod inbound;
pub mod status;
pub mod wire;

pub use blocking::BlockingClient;
pub use client::{Client, ClientOptions};

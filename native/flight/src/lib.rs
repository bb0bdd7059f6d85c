//! stoker-flight: the Arrow Flight server (`stoker serve`), its Rust
//! client, and the `stoker` command line.

pub mod cli;
pub mod client;
pub mod datafile;
pub mod server;
pub mod status;

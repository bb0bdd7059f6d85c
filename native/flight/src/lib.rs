//! stoker-flight: the Arrow Flight server (`stoker serve`) and the `stoker`
//! command line. The client lives in native/client (no libtorch) and is
//! re-exported here.

pub mod cli;
pub mod datafile;
pub mod server;

pub use stoker_client::{client, status};

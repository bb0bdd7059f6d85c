//! stoker-flight: the Arrow Flight server and client (with the server
//! issue), and the `stoker` command line.

pub mod cli;
pub mod datafile;

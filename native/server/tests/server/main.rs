//! The server in-process on 127.0.0.1:0, driven by the Rust client:
//! `actions` covers every action, bad input, TLS and metrics; `auth`
//! covers tokens on every RPC;
//! `serving` covers concurrent streams, model tiers and callers that leave;
//! `tls` covers certificates and the errors of a TLS misconfiguration;
//! `limits` covers sizes a client asks for that do not fit the server;
//! `trials` covers jobs sharing another job's partitions.

mod actions;
mod auth;
mod common;
mod limits;
mod linalg;
mod serving;
mod tls;
mod trials;
mod validation;

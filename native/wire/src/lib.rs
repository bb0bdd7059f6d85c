//! stoker-wire: what stoker's Flight client (native/client) and server
//! (native/server) both put on and read off the wire, so the two sides
//! cannot drift apart. Both send Arrow data as HTTP/2 chunks of the buffers
//! they hold ([`outgoing`], [`body`]) and read it into aligned memory in one
//! copy ([`inbound`]); both map stoker error kinds to one gRPC status code
//! each ([`status`]); both advertise the same HTTP/2 frame and window sizes
//! and name Flight's methods by the same paths ([`http2`]). No libtorch.

pub mod body;
pub mod http2;
pub mod inbound;
pub mod outgoing;
pub mod status;

//! The HTTP/2 settings and gRPC method paths both sides of stoker use.
//! The server and stoker's client advertise the same sizes, so requests and
//! answers both travel in large frames through large windows.

/// The largest HTTP/2 frame either side of stoker accepts (advertised in its
/// SETTINGS). The protocol's default, 16 KiB, cuts an 8 MiB Arrow batch into
/// 512 DATA frames, each with its own header, wakeup and flow-control work in
/// h2; 1 MiB frames took DoPut from a gRPC C++ client from 0.84x to 1.3-1.7x
/// the GB/s of Arrow C++'s own Flight server, and DoExchange from 0.75x to
/// 1.0-1.1x (docs/benchmarks.md, benchmark 3).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Flow-control window of one stream. With the 64 KiB default a stream of
/// multi-megabyte Arrow batches stalls on window updates: the sender waits
/// for a round trip every 64 KiB.
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;

/// Flow-control window of a whole connection: room for two streams' windows,
/// so one slow reader does not stall the others on the same connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// The largest header block a server accepts: h2's default, 16 KiB, is
/// less than the `x-stoker-keep` list of a wide table's pass-through
/// columns (1,000 names of 20 characters), which failed as a bare protocol
/// error. stoker's client checks its headers against it before sending.
pub const MAX_HEADER_LIST_BYTES: u32 = 1 << 20;

/// Flight's methods as gRPC paths: stoker sends and answers the methods that
/// carry data without tonic's codec, routed by these paths.
pub const DO_PUT: &str = "/arrow.flight.protocol.FlightService/DoPut";
pub const DO_EXCHANGE: &str = "/arrow.flight.protocol.FlightService/DoExchange";
pub const DO_ACTION: &str = "/arrow.flight.protocol.FlightService/DoAction";
pub const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";

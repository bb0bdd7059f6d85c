//! stoker errors ↔ gRPC status codes, one code per kind (docs/errors.md).
//! The server maps outgoing errors here and the client maps them back, so a
//! kind survives the round trip through the network.

use stoker_core::{Error, ErrorKind};
use tonic::{Code, Status};

pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidInput => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::CacheMiss => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Io | ErrorKind::Internal => Code::Internal,
    }
}

pub fn kind(code: Code) -> ErrorKind {
    match code {
        Code::InvalidArgument => ErrorKind::InvalidInput,
        // tonic answers an oversized message with OUT_OF_RANGE.
        Code::OutOfRange => ErrorKind::ResourceExhausted,
        Code::NotFound => ErrorKind::NotFound,
        Code::FailedPrecondition => ErrorKind::CacheMiss,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Unauthenticated,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

pub fn to_status(e: Error) -> Status {
    Status::new(code(e.kind()), e.message().to_string())
}

pub fn from_status(s: &Status) -> Error {
    Error::new(kind(s.code()), s.message().to_string())
}

/// Maps a Flight client error (which may wrap a status) to a stoker error.
pub fn from_flight(e: arrow_flight::error::FlightError) -> Error {
    use arrow_flight::error::FlightError as F;
    match e {
        F::Tonic(status) => from_status(&status),
        F::Arrow(a) => Error::from(a),
        F::ProtocolError(m) | F::DecodeError(m) | F::NotYetImplemented(m) => Error::invalid(m),
        // Errors from the caller's own input stream keep their kind.
        F::ExternalError(e) => match e.downcast::<Error>() {
            Ok(e) => *e,
            Err(e) => Error::internal(e.to_string()),
        },
    }
}

/// The error and its sources, as one line (tonic's top-level text is
/// "transport error"); an `io::Error`'s inner error is included, which
/// `source()` skips. The server words its TLS setup errors with it too.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_round_trip_except_io() {
        for k in ErrorKind::ALL.into_iter().filter(|k| *k != ErrorKind::Io) {
            let s = to_status(Error::new(k, "m"));
            assert_eq!(from_status(&s).kind(), k);
            assert_eq!(s.message(), "m");
        }
    }
}

//! The one error type of stoker.
//!
//! Every failure that crosses a crate, process or language boundary is an
//! [`Error`] with an [`ErrorKind`]. Each kind maps to exactly one gRPC code,
//! one Java exception class and one Python exception class (docs/errors.md
//! keeps the table); callers classify by kind, never by message text.

use std::fmt;

/// What went wrong, coarsely enough that every boundary can map it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller sent something wrong: a missing or mistyped column, a null,
    /// NaN or out-of-range value, a bad flag, corrupt model or state bytes.
    InvalidInput,
    /// A named job, model, file or tensor does not exist.
    NotFound,
    /// The server no longer holds a partition the request needs; the caller
    /// should send the partition again and retry.
    CacheMiss,
    /// A byte budget or message limit would be exceeded.
    ResourceExhausted,
    /// Missing or wrong credentials.
    Unauthenticated,
    /// A server or device that should be there is not reachable.
    Unavailable,
    /// Reading or writing a file failed.
    Io,
    /// A bug or a failure inside libtorch that the caller could not cause.
    Internal,
}

impl ErrorKind {
    /// Every kind, for tables and tests that must cover them all.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::InvalidInput,
        ErrorKind::NotFound,
        ErrorKind::CacheMiss,
        ErrorKind::ResourceExhausted,
        ErrorKind::Unauthenticated,
        ErrorKind::Unavailable,
        ErrorKind::Io,
        ErrorKind::Internal,
    ];

    /// The stable name used in logs, in protocol error details and by the
    /// JVM and Python bindings to pick an exception class.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::NotFound => "not_found",
            ErrorKind::CacheMiss => "cache_miss",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
        }
    }

    /// Inverse of [`ErrorKind::as_str`]; unknown names become `Internal`.
    pub fn from_name(name: &str) -> ErrorKind {
        match name {
            "invalid_input" => ErrorKind::InvalidInput,
            "not_found" => ErrorKind::NotFound,
            "cache_miss" => ErrorKind::CacheMiss,
            "resource_exhausted" => ErrorKind::ResourceExhausted,
            "unauthenticated" => ErrorKind::Unauthenticated,
            "unavailable" => ErrorKind::Unavailable,
            "io" => ErrorKind::Io,
            _ => ErrorKind::Internal,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a kind and a message that names the culprit (column, row,
/// tensor, model), so the person reading it knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        let kind = if err.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        Self::new(kind, format!("{context}: {err}"))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with where the error happened, keeping the kind.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<arrow::error::ArrowError> for Error {
    fn from(err: arrow::error::ArrowError) -> Self {
        use arrow::error::ArrowError as A;
        let kind = match &err {
            A::IoError(..) => ErrorKind::Io,
            A::MemoryError(..) => ErrorKind::ResourceExhausted,
            A::ExternalError(..) => ErrorKind::Internal,
            _ => ErrorKind::InvalidInput,
        };
        Error::new(kind, format!("arrow: {err}"))
    }
}

/// Adds context to the error of a `Result` without changing its kind.
pub trait ResultExt<T> {
    fn context(self, context: impl fmt::Display) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.as_str()), kind);
        }
        assert_eq!(ErrorKind::from_name("nonsense"), ErrorKind::Internal);
    }

    #[test]
    fn context_keeps_kind() {
        let e = Error::invalid("column 'x' has nulls").context("partition 3");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(e.message(), "partition 3: column 'x' has nulls");
    }

    #[test]
    fn missing_file_is_not_found() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(
            Error::io("reading a.parquet", io).kind(),
            ErrorKind::NotFound
        );
    }
}

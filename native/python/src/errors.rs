//! The `stoker.StokerError` hierarchy and the mapping from error kinds.
//! Classified by kind, never by message text; docs/errors.md keeps the table.
//! The classes live in module `stoker._native` (their `__module__`), so
//! pickles of them (Spark ships UDF closures with cloudpickle) refer to
//! these very classes and `except stoker.NotFoundError` still matches.

use pyo3::exceptions::PyException;
use pyo3::{create_exception, PyErr};
use stoker_core::{Error, ErrorKind};

create_exception!(
    stoker._native,
    StokerError,
    PyException,
    "Base class of every stoker error."
);
create_exception!(
    stoker._native,
    InvalidInputError,
    StokerError,
    "Bad input: column, type, value, model or state bytes."
);
create_exception!(
    stoker._native,
    NotFoundError,
    StokerError,
    "A job, model, file or tensor that does not exist."
);
create_exception!(
    stoker._native,
    CacheMissError,
    StokerError,
    "The server no longer holds a partition; send it again."
);
create_exception!(
    stoker._native,
    ResourceExhaustedError,
    StokerError,
    "A byte budget or message limit would be exceeded."
);
create_exception!(
    stoker._native,
    UnauthenticatedError,
    StokerError,
    "Missing or wrong credentials."
);
create_exception!(
    stoker._native,
    ServerUnavailableError,
    StokerError,
    "The stoker server or device is not reachable."
);

/// The Python exception for a stoker error.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.message().to_string();
    match e.kind() {
        ErrorKind::InvalidInput => InvalidInputError::new_err(msg),
        ErrorKind::NotFound => NotFoundError::new_err(msg),
        ErrorKind::CacheMiss => CacheMissError::new_err(msg),
        ErrorKind::ResourceExhausted => ResourceExhaustedError::new_err(msg),
        ErrorKind::Unauthenticated => UnauthenticatedError::new_err(msg),
        ErrorKind::Unavailable => ServerUnavailableError::new_err(msg),
        ErrorKind::Io | ErrorKind::Internal => StokerError::new_err(msg),
    }
}

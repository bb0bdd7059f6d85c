//! stoker._native: the Python extension. It converts Python arguments,
//! calls native/core and native/client (the Flight client), and maps errors to the
//! `stoker.StokerError` hierarchy; logic lives in the library crates.

mod arrow_stream;
mod client;
mod errors;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use stoker_core::{averaging, Error};

/// Weighted average of serialized states (safetensors bytes), returned as
/// state bytes. Runs without the GIL.
#[pyfunction]
fn average_states<'py>(
    py: Python<'py>,
    states: Vec<Vec<u8>>,
    weights: Vec<f64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let out = py
        .detach(move || -> stoker_core::Result<Vec<u8>> {
            if states.len() != weights.len() {
                return Err(Error::invalid(format!(
                    "{} states but {} weights",
                    states.len(),
                    weights.len()
                )));
            }
            averaging::average::<_, Error>(states.iter().zip(weights).map(Ok))?.to_bytes()
        })
        .map_err(errors::to_py)?;
    Ok(PyBytes::new(py, &out))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(average_states, m)?)?;
    m.add_class::<client::Client>()?;
    m.add_class::<arrow_stream::ArrowStream>()?;
    m.add("StokerError", py.get_type::<errors::StokerError>())?;
    m.add(
        "InvalidInputError",
        py.get_type::<errors::InvalidInputError>(),
    )?;
    m.add("NotFoundError", py.get_type::<errors::NotFoundError>())?;
    m.add("CacheMissError", py.get_type::<errors::CacheMissError>())?;
    m.add(
        "ResourceExhaustedError",
        py.get_type::<errors::ResourceExhaustedError>(),
    )?;
    m.add(
        "UnauthenticatedError",
        py.get_type::<errors::UnauthenticatedError>(),
    )?;
    m.add(
        "ServerUnavailableError",
        py.get_type::<errors::ServerUnavailableError>(),
    )?;
    Ok(())
}

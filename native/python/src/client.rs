//! `stoker._native.Client`: the Flight client for Python. Arrow data comes
//! in and goes out through the Arrow PyCapsule interface (no copies, no
//! pyarrow dependency here); every network call releases the GIL.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use stoker_client::{BlockingClient, ClientOptions};
use stoker_core::protocol::{Envelope, ModelKey, PartitionKey, Split};
use stoker_core::Error;

use crate::arrow_stream::{import, ArrowStream};
use crate::errors;

/// A connection to a stoker server (`grpc://host:port` or
/// `grpc+tls://host:port`). Calls on one client are serialized; use one
/// client per thread for parallel calls.
#[pyclass(module = "stoker._native", name = "Client", frozen)]
pub struct Client {
    inner: BlockingClient,
    address: String,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (address, token=None, ca_pem=None, liveness_s=None))]
    fn new(
        py: Python<'_>,
        address: String,
        token: Option<String>,
        ca_pem: Option<Vec<u8>>,
        liveness_s: Option<f64>,
    ) -> PyResult<Self> {
        let mut options = ClientOptions {
            token,
            ca_pem,
            ..Default::default()
        };
        if let Some(s) = liveness_s {
            if !(s.is_finite() && s > 0.0) {
                return Err(errors::to_py(Error::invalid(format!(
                    "liveness_s is {s}; it must be a number of seconds above 0"
                ))));
            }
            options.liveness = std::time::Duration::from_secs_f64(s);
        }
        let inner = py
            .detach(|| BlockingClient::connect(&address, options))
            .map_err(errors::to_py)?;
        Ok(Client { inner, address })
    }

    /// Runs an action (docs/protocol.md). `body` is its JSON text and
    /// `blobs` its binary parts (e.g. `{"state": b"..."}`). Returns the
    /// result's JSON text and its blobs.
    #[pyo3(signature = (kind, body="{}", blobs=None))]
    fn action<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        body: &str,
        blobs: Option<Vec<(String, Vec<u8>)>>,
    ) -> PyResult<(String, Bound<'py, PyDict>)> {
        let json: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| errors::to_py(Error::invalid(format!("action body is not JSON: {e}"))))?;
        let mut envelope = Envelope::new(json).map_err(errors::to_py)?;
        for (name, bytes) in blobs.unwrap_or_default() {
            envelope = envelope.with_blob(&name, bytes);
        }
        let (body, json, ranges) = py
            .detach(|| -> stoker_core::Result<_> {
                let out = self.inner.action(kind, envelope.encode()?)?;
                let (json, ranges) = Envelope::split(&out)?;
                Ok((out, json, ranges))
            })
            .map_err(errors::to_py)?;
        let out = PyDict::new(py);
        for (name, range) in ranges {
            out.set_item(name, PyBytes::new(py, &body[range]))?;
        }
        Ok((json.to_string(), out))
    }

    /// Sends one partition of a job to the server's cache (DoPut). `data`
    /// is any Arrow stream (pyarrow Table, polars DataFrame, ...). Returns
    /// the server's answer as JSON text: `{"rows", "bytes", "replaced"}`.
    /// `validation` sends it as a validation partition (scored by
    /// `evaluate`, never trained on).
    #[pyo3(signature = (job, partition, version, data, validation=false))]
    fn put_partition(
        &self,
        py: Python<'_>,
        job: String,
        partition: u32,
        version: String,
        data: &Bound<'_, PyAny>,
        validation: bool,
    ) -> PyResult<String> {
        let (_, batches) = import(data)?;
        let key = PartitionKey {
            job,
            split: if validation {
                Split::Validation
            } else {
                Split::Train
            },
            partition,
            version,
        };
        py.detach(|| self.inner.put_partition(&key, batches))
            .map(|v| v.to_string())
            .map_err(errors::to_py)
    }

    /// Predictions for `data` (DoExchange) from a registered model: the
    /// `keep` columns, then `prediction` and, for classifiers,
    /// `probability`, in input order, as an ArrowStream.
    #[pyo3(signature = (model, data, version=None, keep=None))]
    fn predict(
        &self,
        py: Python<'_>,
        model: String,
        data: &Bound<'_, PyAny>,
        version: Option<u32>,
        keep: Option<Vec<String>>,
    ) -> PyResult<ArrowStream> {
        let (_, batches) = import(data)?;
        let key = ModelKey {
            name: model,
            version,
        };
        let keep = keep.unwrap_or_default();
        let (schema, out) = py
            .detach(|| self.inner.predict(&key, &keep, batches))
            .map_err(errors::to_py)?;
        Ok(ArrowStream::new(schema, out))
    }

    /// A stored state's safetensors bytes (DoGet): ticket `jobs/JOB` or
    /// `models/NAME[/VERSION]`.
    fn download_state<'py>(&self, py: Python<'py>, ticket: &str) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py
            .detach(|| self.inner.download_state(ticket))
            .map_err(errors::to_py)?;
        Ok(PyBytes::new(py, &bytes))
    }

    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    fn __repr__(&self) -> String {
        format!("stoker.Client({:?})", self.address)
    }
}

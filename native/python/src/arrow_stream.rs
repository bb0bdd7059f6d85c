//! Arrow data across the Python boundary through the Arrow PyCapsule
//! interface (`__arrow_c_stream__`), so pyarrow, polars and any other
//! Arrow library hand their batches over without a copy and without this
//! extension depending on pyarrow.

use std::ffi::CStr;

use arrow::array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow::datatypes::SchemaRef;
use arrow::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods};

use crate::errors;

const STREAM: &CStr = c"arrow_array_stream";

/// The batches of any object with `__arrow_c_stream__` (a pyarrow Table or
/// RecordBatchReader, a polars DataFrame, ...). Buffers are imported, not
/// copied.
pub fn import(data: &Bound<'_, PyAny>) -> PyResult<(SchemaRef, Vec<RecordBatch>)> {
    if !data.hasattr("__arrow_c_stream__")? {
        return Err(PyTypeError::new_err(format!(
            "expected Arrow data (an object with __arrow_c_stream__, such as a pyarrow Table \
             or a polars DataFrame), got {}",
            data.get_type().name()?
        )));
    }
    let capsule = data.call_method0("__arrow_c_stream__")?;
    let capsule = capsule.cast::<PyCapsule>()?;
    let pointer = capsule.pointer_checked(Some(STREAM))?;
    // SAFETY: the capsule is named "arrow_array_stream", so by the Arrow
    // PyCapsule interface it holds a valid FFI_ArrowArrayStream. from_raw
    // moves the stream out and leaves a released (empty) one behind, which
    // the capsule's destructor then skips, so the stream is released once.
    let reader = unsafe {
        RecordBatchStreamReader::from_raw(pointer.as_ptr().cast::<FFI_ArrowArrayStream>())
    }
    .map_err(|e| errors::to_py(e.into()))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| errors::to_py(e.into()))?;
    Ok((schema, batches))
}

/// Batches held for Python: any Arrow library reads them through
/// `__arrow_c_stream__` (e.g. `pyarrow.table(stream)`,
/// `polars.DataFrame(stream)`).
#[pyclass(module = "stoker._native", name = "ArrowStream", frozen)]
pub struct ArrowStream {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl ArrowStream {
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> ArrowStream {
        ArrowStream { schema, batches }
    }
}

#[pymethods]
impl ArrowStream {
    /// Exports the batches as an Arrow C stream in a PyCapsule. The
    /// batches are shared (reference counted), not copied, so the stream
    /// can be read more than once.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // Casting to a requested schema is optional in the protocol; the
        // schema is always the one the server sent.
        let _ = requested_schema;
        let reader = RecordBatchIterator::new(
            self.batches.clone().into_iter().map(Ok),
            self.schema.clone(),
        );
        let stream = FFI_ArrowArrayStream::new(Box::new(reader));
        PyCapsule::new_with_value(py, stream, STREAM)
    }

    /// Rows across all batches.
    #[getter]
    fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    fn __len__(&self) -> usize {
        self.num_rows()
    }

    fn __repr__(&self) -> String {
        let columns: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect();
        format!(
            "ArrowStream({} rows; {})",
            self.num_rows(),
            columns.join(", ")
        )
    }
}

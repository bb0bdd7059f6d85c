//! Arrow IPC stream bytes ↔ record batches: how a partition or a batch of
//! predictions crosses a language boundary in one buffer (JNI), instead of
//! one call per row or column.

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::error::{Error, Result};

/// Decodes an Arrow IPC stream; returns its schema and batches.
pub fn read_stream(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| Error::invalid(format!("not an Arrow IPC stream: {e}")))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(format!("corrupt Arrow IPC stream: {e}")))?;
    Ok((schema, batches))
}

/// Encodes batches as an Arrow IPC stream.
pub fn write_stream(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut out, schema)?;
        for b in batches {
            writer.write(b)?;
        }
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array};
    use std::sync::Arc;

    #[test]
    fn round_trip_and_garbage() {
        let b = RecordBatch::try_from_iter(vec![(
            "x",
            Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef,
        )])
        .unwrap();
        let bytes = write_stream(&b.schema(), &[b.clone(), b.clone()]).unwrap();
        let (schema, back) = read_stream(&bytes).unwrap();
        assert_eq!(schema, b.schema());
        assert_eq!(back, vec![b.clone(), b]);
        let e = read_stream(b"nope").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
    }
}

//! Arrow IPC stream bytes ↔ record batches: how a partition or a batch of
//! predictions crosses a language boundary in one buffer (JNI), instead of
//! one call per row or column.

use std::io::Cursor;
use std::ops::Range;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::error::{Error, Result};

/// Decodes an Arrow IPC stream; returns its schema and batches.
///
/// arrow's decoder (60.1) asserts on some malformed streams instead of
/// returning an error (found by stoker-fuzz); such a panic is caught here
/// and becomes the same `InvalidInput` a malformed stream gets, so it cannot
/// cross a JNI or Python boundary.
pub fn read_stream(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    // Sound to assert unwind safety: nothing outside the closure is mutated,
    // and on a panic everything it built is dropped.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reader = StreamReader::try_new(Cursor::new(bytes), None)
            .map_err(|e| Error::invalid(format!("not an Arrow IPC stream: {e}")))?;
        let schema = reader.schema();
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid(format!("corrupt Arrow IPC stream: {e}")))?;
        Ok((schema, batches))
    }))
    .unwrap_or_else(|_| {
        Err(Error::invalid(
            "corrupt Arrow IPC stream: arrow's decoder failed on it",
        ))
    })
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

/// Where each message of an Arrow IPC stream lies: its flatbuffer metadata
/// and its body, in stream order (schema first), up to the end-of-stream
/// marker. This is the framing Flight sends (`FlightData.data_header` and
/// `data_body`), so a stream written elsewhere (the JVM's Arrow writer) can be
/// sent without decoding and re-encoding its batches; the receiver checks the
/// messages as it decodes them. Only the framing and each message's body
/// length are read here.
pub fn message_ranges(bytes: &[u8]) -> Result<Vec<(Range<usize>, Range<usize>)>> {
    let bad = |why: String| Error::invalid(format!("corrupt Arrow IPC stream: {why}"));
    let word = |at: usize| -> Result<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad(format!("truncated at byte {at}")))
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        // Current framing: 0xFFFFFFFF, then the metadata length; before
        // Arrow 0.15 the length came first.
        let mut len = word(at)?;
        at += 4;
        if len == u32::MAX {
            len = word(at)?;
            at += 4;
        }
        if len == 0 {
            return Ok(out);
        }
        let meta = at..at + len as usize;
        let header = bytes
            .get(meta.clone())
            .ok_or_else(|| bad(format!("message metadata past the end at byte {at}")))?;
        let body_len = body_length(header).map_err(|why| bad(format!("{why} at byte {at}")))?;
        let body = meta.end..meta.end + body_len;
        if body.end > bytes.len() {
            return Err(bad(format!(
                "message body past the end at byte {}",
                meta.end
            )));
        }
        at = body.end;
        out.push((meta, body));
    }
    Ok(out)
}

/// The body length an IPC message's flatbuffer metadata declares; the error
/// says what is wrong with it, for the caller to place.
pub fn body_length(metadata: &[u8]) -> std::result::Result<usize, String> {
    let message =
        arrow::ipc::root_as_message(metadata).map_err(|e| format!("message metadata: {e}"))?;
    usize::try_from(message.bodyLength()).map_err(|_| "negative body length".to_string())
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

    #[test]
    fn message_ranges_frame_the_schema_and_every_batch() {
        let b = RecordBatch::try_from_iter(vec![(
            "x",
            Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef,
        )])
        .unwrap();
        let bytes = write_stream(&b.schema(), &[b.clone(), b.clone()]).unwrap();
        let ranges = message_ranges(&bytes).unwrap();
        assert_eq!(ranges.len(), 3, "schema and two batches");
        assert!(ranges[0].1.is_empty(), "a schema message has no body");
        for (meta, body) in &ranges[1..] {
            let m = arrow::ipc::root_as_message(&bytes[meta.clone()]).unwrap();
            assert_eq!(m.header_type(), arrow::ipc::MessageHeader::RecordBatch);
            assert_eq!(body.len() as i64, m.bodyLength());
        }
        // Truncated anywhere: an error, never a panic or a short list.
        for cut in [3, 9, bytes.len() - 9] {
            assert!(message_ranges(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(message_ranges(&[0xff; 12]).is_err());
    }
}

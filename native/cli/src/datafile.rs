//! Reading and writing the data files the command line takes: Parquet
//! (`.parquet`, `.pq`) and Arrow IPC (`.arrow`, `.feather`, `.ipc`; file or
//! stream format).

use std::fs::File;
use std::path::Path;

use arrow::array::{RecordBatch, RecordBatchReader};
use arrow::datatypes::SchemaRef;
use stoker_core::{Error, Result};

/// Rows per batch read from Parquet.
pub const READ_BATCH_ROWS: usize = 65_536;

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

fn is_parquet(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("parquet" | "pq")
    )
}

/// The batches of a file, read one at a time.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch>>>;

/// A streaming reader over a data file's batches.
pub fn read(path: &Path) -> Result<(SchemaRef, Batches)> {
    let context = format!("reading {}", path.display());
    if is_parquet(path) {
        let builder =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(open(path)?)
                .map_err(|e| {
                    Error::invalid(format!("{context}: not a readable Parquet file: {e}"))
                })?;
        let reader = builder
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(|e| Error::invalid(format!("{context}: {e}")))?;
        let schema = reader.schema();
        let ctx = context.clone();
        return Ok((
            schema,
            Box::new(reader.map(move |b| b.map_err(|e| Error::from(e).context(&ctx)))),
        ));
    }
    if let Ok(reader) = arrow::ipc::reader::FileReader::try_new(open(path)?, None) {
        let schema = reader.schema();
        let ctx = context.clone();
        return Ok((
            schema,
            Box::new(reader.map(move |b| b.map_err(|e| Error::from(e).context(&ctx)))),
        ));
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(open(path)?, None).map_err(|e| {
        Error::invalid(format!(
            "{context}: not a Parquet or Arrow IPC file ({e}); use .parquet for Parquet files"
        ))
    })?;
    let schema = reader.schema();
    Ok((
        schema,
        Box::new(reader.map(move |b| b.map_err(|e| Error::from(e).context(&context)))),
    ))
}

/// All batches of a data file.
pub fn read_all(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let (schema, batches) = read(path)?;
    Ok((schema, batches.collect::<Result<Vec<_>>>()?))
}

/// Writes batches as Parquet (or Arrow IPC for `.arrow` paths).
pub struct Writer {
    inner: WriterKind,
    path: String,
}

enum WriterKind {
    Parquet(parquet::arrow::ArrowWriter<File>),
    Ipc(arrow::ipc::writer::FileWriter<File>),
}

impl Writer {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Writer> {
        let file =
            File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let inner = if is_parquet(path) {
            WriterKind::Parquet(
                parquet::arrow::ArrowWriter::try_new(file, schema, None)
                    .map_err(|e| Error::internal(format!("Parquet writer: {e}")))?,
            )
        } else {
            WriterKind::Ipc(arrow::ipc::writer::FileWriter::try_new(file, &schema)?)
        };
        Ok(Writer {
            inner,
            path: path.display().to_string(),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let r = match &mut self.inner {
            WriterKind::Parquet(w) => w.write(batch).map_err(|e| e.to_string()),
            WriterKind::Ipc(w) => w.write(batch).map_err(|e| e.to_string()),
        };
        r.map_err(|e| {
            Error::new(
                stoker_core::ErrorKind::Io,
                format!("writing {}: {e}", self.path),
            )
        })
    }

    pub fn finish(self) -> Result<()> {
        let r = match self.inner {
            WriterKind::Parquet(w) => w.close().map(|_| ()).map_err(|e| e.to_string()),
            WriterKind::Ipc(mut w) => w.finish().map_err(|e| e.to_string()),
        };
        r.map_err(|e| {
            Error::new(
                stoker_core::ErrorKind::Io,
                format!("finishing {}: {e}", self.path),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float32Array};
    use std::sync::Arc;

    #[test]
    fn parquet_and_ipc_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let b = RecordBatch::try_from_iter(vec![(
            "x",
            Arc::new(Float32Array::from(vec![1.0, 2.0])) as ArrayRef,
        )])
        .unwrap();
        for name in ["a.parquet", "a.arrow"] {
            let p = dir.path().join(name);
            let mut w = Writer::create(&p, b.schema()).unwrap();
            w.write(&b).unwrap();
            w.finish().unwrap();
            let (_, back) = read_all(&p).unwrap();
            assert_eq!(back, vec![b.clone()], "{name}");
        }
    }

    #[test]
    fn missing_and_garbage_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_all(&dir.path().join("nope.parquet")).unwrap_err();
        assert_eq!(e.kind(), stoker_core::ErrorKind::NotFound);
        let p = dir.path().join("junk.parquet");
        std::fs::write(&p, b"hello").unwrap();
        let e = read_all(&p).unwrap_err();
        assert!(e.message().contains("not a readable Parquet file"), "{e}");
    }
}

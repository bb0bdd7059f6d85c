//! Transport diagnostics: Flight calls that move Arrow data and do nothing
//! else, so the network path between a client and a server (and stoker's
//! Flight stack against others) can be measured apart from training and
//! inference (bench/, docs/benchmarks.md).
//!
//! - DoPut to descriptor path `["_echo"]`: reads and drops every batch;
//!   the result's `app_metadata` is `{"rows", "bytes"}`.
//! - DoExchange on `["_echo"]`: returns every batch as it came.
//! - DoGet of ticket `_zeros/ROWS/COLS/BATCH_ROWS`: ROWS rows of COLS
//!   float32 columns, in batches of BATCH_ROWS rows (one batch built once
//!   and sent repeatedly, as a data server sends cached data).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use stoker_core::{Error, Result};

pub const ECHO: &str = "_echo";
pub const ZEROS: &str = "_zeros";

/// Whether a descriptor path names the echo endpoint.
pub fn is_echo(path: &[String]) -> bool {
    path.len() == 1 && path[0] == ECHO
}

/// The batches a `_zeros/ROWS/COLS/BATCH_ROWS` ticket asks for.
pub fn zeros(ticket: &str) -> Result<Vec<RecordBatch>> {
    let parts: Vec<&str> = ticket.split('/').collect();
    let bad = || {
        Error::invalid(format!(
            "ticket '{ticket}' must be {ZEROS}/ROWS/COLS/BATCH_ROWS"
        ))
    };
    let [_, rows, cols, batch_rows] = parts.as_slice() else {
        return Err(bad());
    };
    let (rows, cols, batch_rows): (usize, usize, usize) = (
        rows.parse().map_err(|_| bad())?,
        cols.parse().map_err(|_| bad())?,
        batch_rows.parse().map_err(|_| bad())?,
    );
    if cols == 0 || batch_rows == 0 || cols > 10_000 || batch_rows > 10_000_000 {
        return Err(bad());
    }
    let fields: Vec<Field> = (0..cols)
        .map(|c| Field::new(format!("f{c}"), DataType::Float32, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let column: ArrayRef = Arc::new(Float32Array::from(vec![0f32; batch_rows]));
    let full = RecordBatch::try_new(schema, vec![column; cols])?;
    let mut out = Vec::with_capacity(rows.div_ceil(batch_rows));
    let mut left = rows;
    while left > 0 {
        let n = left.min(batch_rows);
        out.push(full.slice(0, n));
        left -= n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_splits_rows_into_batches() {
        let b = zeros("_zeros/150000/4/65536").unwrap();
        let rows: Vec<usize> = b.iter().map(|b| b.num_rows()).collect();
        assert_eq!(rows, [65536, 65536, 18928]);
        assert_eq!(b[0].num_columns(), 4);
        assert!(zeros("_zeros/1/x/2").is_err());
        assert!(zeros("_zeros/1/2").is_err());
    }
}

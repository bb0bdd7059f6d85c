//! Arrow data for the data targets (`flight_data`, `ipc_features`): seed
//! batches with every column kind the feature contract accepts (and some
//! it refuses), and the conversion both targets run on what they decode:
//! feature layouts for several column lists, the dense copy, and labels
//! for every task.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListBuilder, Float32Array, Float32Builder, Float64Array, Float64Builder,
    Int32Array, Int64Array, ListBuilder, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use stoker_core::labels::{label_is_integer, read_labels};
use stoker_core::vectors::spark_vectors;
use stoker_core::{FeatureLayout, Task};

use super::check;

/// The column lists the conversion tries: scalars, each vector kind, and
/// mixes (names a batch lacks are refused, which is tested too).
const NAME_LISTS: &[&[&str]] = &[
    &["a", "b"],
    &["v"],
    &["a", "v"],
    &["l"],
    &["s"],
    &["a", "b", "c", "d", "v", "l", "s"],
    &["t"],
];

/// The label column of the seeds (integers in 0..3).
pub const LABEL: &str = "y";

/// The largest dense feature matrix the conversion builds, in values
/// (64 MiB of f32). A Spark ML sparse vector's `size` is 4 bytes of input
/// and sets the row width (up to 2^31 - 1), so a few bytes can ask for
/// gigabytes per row; past this the harness skips the copy rather than
/// trip its own allocation limit. The server's training path refuses such
/// widths in its model budget before it converts; its prediction path
/// (`ServedModel::features_of`, native/server/src/models.rs) allocates and
/// fills `rows x width` before any check of the width.
const MAX_DENSE_VALUES: usize = 16 << 20;

/// How far [`convert`] got with some batches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Converted {
    /// A feature layout resolved and the batches copied into a matrix.
    pub dense: bool,
    /// Labels read for some task.
    pub labels: bool,
}

/// What the server does with decoded batches: resolve the feature layout
/// against the first non-empty batch, copy the features into a dense
/// matrix, read the labels for each task.
pub fn convert(batches: &[RecordBatch]) -> Converted {
    let mut done = Converted::default();
    let first = batches.iter().find(|b| b.num_rows() > 0);
    let Some(schema) = first.or(batches.first()).map(RecordBatch::schema) else {
        return done;
    };
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    for names in NAME_LISTS {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let Some(layout) = check(FeatureLayout::resolve(&schema, &names, first)) else {
            continue;
        };
        if rows.saturating_mul(layout.width()) <= MAX_DENSE_VALUES {
            if let Some(dense) = check(layout.to_dense(batches)) {
                assert_eq!(dense.len(), rows * layout.width(), "dense matrix size");
                done.dense = true;
            }
        }
    }
    if check(label_is_integer(&schema, LABEL)).is_some() {
        for task in [
            Task::Regression,
            Task::Binary,
            Task::Multiclass { classes: 3 },
        ] {
            if let Some(labels) = check(read_labels(batches, LABEL, task)) {
                assert_eq!(labels.len(), rows, "one label per row");
                done.labels = true;
            }
        }
    }
    done
}

fn fixed_vectors(rows: &[[f32; 3]]) -> ArrayRef {
    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 3);
    for row in rows {
        b.values().append_slice(row);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn lists(rows: &[Vec<f64>]) -> ArrayRef {
    let mut b = ListBuilder::new(Float64Builder::new());
    for row in rows {
        b.append_value(row.iter().copied().map(Some));
    }
    Arc::new(b.finish())
}

/// Seed batches: several schemas, clean and with the values the checks
/// refuse (nulls, NaN, ragged vectors, out-of-range labels), and streams of
/// several batches. A batch that cannot be built is left out.
pub fn seed_batches() -> Vec<Vec<RecordBatch>> {
    let full = |n: usize, nan: bool, null: bool| -> Option<RecordBatch> {
        let a: Float64Array = (0..n)
            .map(|i| {
                if null && i == 1 {
                    None
                } else {
                    Some(i as f64 * 0.5)
                }
            })
            .collect();
        let b: Float32Array = (0..n)
            .map(|i| Some(if nan && i == 0 { f32::NAN } else { i as f32 }))
            .collect();
        let c: Int32Array = (0..n as i32).map(|i| Some(i - 2)).collect();
        let d: Int64Array = (0..n as i64).map(|i| Some(i * 1000)).collect();
        let v: Vec<[f32; 3]> = (0..n).map(|i| [i as f32, 1.0, -1.0]).collect();
        let l: Vec<Vec<f64>> = (0..n).map(|i| vec![i as f64, 2.0]).collect();
        let s: Vec<(i8, i32, Vec<i32>, Vec<f64>)> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    (1, 0, vec![], vec![1.0, 2.0, 3.0, 4.0])
                } else {
                    (0, 4, vec![1, 3], vec![5.0, 6.0])
                }
            })
            .collect();
        let y: Int64Array = (0..n as i64).map(|i| Some(i % 3)).collect();
        let t: StringArray = (0..n).map(|i| Some(format!("row{i}"))).collect();
        RecordBatch::try_from_iter(vec![
            ("a", Arc::new(a) as ArrayRef),
            ("b", Arc::new(b) as ArrayRef),
            ("c", Arc::new(c) as ArrayRef),
            ("d", Arc::new(d) as ArrayRef),
            ("v", fixed_vectors(&v)),
            ("l", lists(&l)),
            ("s", spark_vectors(&s)),
            (LABEL, Arc::new(y) as ArrayRef),
            ("t", Arc::new(t) as ArrayRef),
        ])
        .ok()
    };
    let small = || -> Option<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Float64, false),
            Field::new("b", DataType::Float32, true),
            Field::new(LABEL, DataType::Int32, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![1.0, -2.0, 3.5])),
                Arc::new(Float32Array::from(vec![Some(0.5), None, Some(1e30)])),
                Arc::new(Int32Array::from(vec![0, 1, 7])),
            ],
        )
        .ok()
    };
    let ragged = || -> Option<RecordBatch> {
        RecordBatch::try_from_iter(vec![
            ("l", lists(&[vec![1.0], vec![1.0, 2.0], vec![]])),
            (
                "s",
                spark_vectors(&[
                    (0, 3, vec![0, 5], vec![1.0, 2.0]),
                    (1, 0, vec![], vec![1.0, 2.0, 3.0]),
                    (0, -1, vec![-1], vec![f64::INFINITY]),
                ]),
            ),
            (
                LABEL,
                Arc::new(Float64Array::from(vec![0.5, 1.0, f64::NAN])) as ArrayRef,
            ),
        ])
        .ok()
    };
    let mut out = Vec::new();
    for batches in [
        vec![full(4, false, false)],
        vec![full(3, false, false), full(5, false, false)],
        vec![full(2, true, false)],
        vec![full(3, false, true)],
        vec![full(0, false, false), full(2, false, false)],
        vec![small()],
        vec![ragged()],
        vec![full(300, false, false)],
    ] {
        if let Some(batches) = batches.into_iter().collect::<Option<Vec<_>>>() {
            out.push(batches);
        }
    }
    out
}

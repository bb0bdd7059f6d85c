//! The feature contract: which columns of an Arrow batch become the model's
//! input vector, and the one copy from Arrow columns into a dense, row-major
//! f32 buffer (the buffer the engine hands to libtorch).
//!
//! A feature column is either a numeric scalar (int, float, boolean: one
//! value) or a vector: `fixed_size_list<numeric>`, `list<numeric>` (every row
//! the same length) or a Spark ML vector as PySpark's Arrow conversion writes
//! it (`struct<type: int8, size: int32, indices: list<int32>, values:
//! list<double>>`, dense or sparse). The input vector is the concatenation of
//! the columns in the order given.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema};

use crate::error::{Error, Result};
use crate::numeric::{describe_non_finite, first_null, is_numeric, Element, Values};
use crate::vectors::{list_ranges, spark_vector_size, write_list, write_spark_vector};

/// How one feature column is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnShape {
    /// One numeric value per row.
    Scalar,
    /// A list column whose rows all have this many elements.
    Vector(usize),
    /// A Spark ML vector (dense or sparse) of this size.
    SparkVector(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureColumn {
    pub name: String,
    pub shape: ColumnShape,
}

impl FeatureColumn {
    pub fn width(&self) -> usize {
        match self.shape {
            ColumnShape::Scalar => 1,
            ColumnShape::Vector(n) | ColumnShape::SparkVector(n) => n,
        }
    }
}

/// The resolved feature columns and the width of the input vector they make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureLayout {
    columns: Vec<FeatureColumn>,
    width: usize,
}

/// The schema's column names, for "not found" messages.
pub(crate) fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_spark_vector(dt: &DataType) -> bool {
    match dt {
        DataType::Struct(fields) => {
            let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
            names == ["type", "size", "indices", "values"]
        }
        _ => false,
    }
}

impl FeatureLayout {
    /// Resolves `names` against a schema. List columns whose length the type
    /// does not fix take it from the first non-null row of `sample` (the
    /// first batch that will be converted); every other row must match.
    pub fn resolve(
        schema: &Schema,
        names: &[String],
        sample: Option<&RecordBatch>,
    ) -> Result<Self> {
        if names.is_empty() {
            return Err(Error::invalid(
                "no feature columns given: name numeric columns and/or one vector column",
            ));
        }
        let mut columns = Vec::with_capacity(names.len());
        for name in names {
            let field = schema.field_with_name(name).map_err(|_| {
                Error::invalid(format!(
                    "feature column '{name}' not found; the data has columns: {}",
                    column_list(schema)
                ))
            })?;
            let dt = field.data_type();
            let shape = match dt {
                t if is_numeric(t) => ColumnShape::Scalar,
                DataType::FixedSizeList(child, n) if is_numeric(child.data_type()) => {
                    ColumnShape::Vector(*n as usize)
                }
                DataType::List(child) | DataType::LargeList(child)
                    if is_numeric(child.data_type()) =>
                {
                    ColumnShape::Vector(Self::sample_width(name, sample)?)
                }
                t if is_spark_vector(t) => {
                    ColumnShape::SparkVector(Self::sample_width(name, sample)?)
                }
                other => {
                    return Err(Error::invalid(format!(
                        "feature column '{name}' has type {other}; expected a numeric column \
                         (int, float, boolean), a list/fixed_size_list of numbers, or a Spark ML vector"
                    )))
                }
            };
            columns.push(FeatureColumn {
                name: name.clone(),
                shape,
            });
        }
        let width = columns.iter().map(FeatureColumn::width).sum();
        if width == 0 {
            return Err(Error::invalid(
                "the feature columns give zero features per row",
            ));
        }
        Ok(FeatureLayout { columns, width })
    }

    fn sample_width(name: &str, sample: Option<&RecordBatch>) -> Result<usize> {
        let Some(batch) = sample else {
            return Err(Error::invalid(format!(
                "vector column '{name}' has no rows to take its length from"
            )));
        };
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| Error::invalid(format!("feature column '{name}' not found")))?;
        let first = (0..column.len())
            .find(|&i| column.is_valid(i))
            .ok_or_else(|| {
                Error::invalid(format!("vector column '{name}' has no non-null rows"))
            })?;
        Ok(match column.data_type() {
            DataType::List(_) => column.as_list::<i32>().value_length(first) as usize,
            DataType::LargeList(_) => column.as_list::<i64>().value_length(first) as usize,
            DataType::Struct(_) => {
                let a = column.as_struct();
                let (values, _) = list_ranges(a.column(3).as_ref())?;
                spark_vector_size(a, name, first, &values)?
            }
            other => return Err(Error::internal(format!("no sample width for {other}"))),
        })
    }

    pub fn columns(&self) -> &[FeatureColumn] {
        &self.columns
    }

    /// Number of f32 values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    pub fn names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// Copies `batch` into `out` (row-major, `batch.num_rows() * width`
    /// values). `first_row` is the index of the batch's first row in the
    /// whole input, so errors name the row the user sees.
    pub fn write_batch<E: Element>(
        &self,
        batch: &RecordBatch,
        first_row: usize,
        out: &mut [E],
    ) -> Result<()> {
        let rows = batch.num_rows();
        if out.len() != rows * self.width {
            return Err(Error::internal(format!(
                "feature buffer holds {} values, {} rows x {} features need {}",
                out.len(),
                rows,
                self.width,
                rows * self.width
            )));
        }
        // Scalar columns are checked here, in column order like the others, and
        // written below, a block of rows at a time.
        let mut scalars = Vec::new();
        let mut offset = 0;
        for col in &self.columns {
            let array = batch.column_by_name(&col.name).ok_or_else(|| {
                Error::invalid(format!(
                    "feature column '{}' not found; the data has columns: {}",
                    col.name,
                    column_list(&batch.schema())
                ))
            })?;
            let target = Target {
                column: &col.name,
                out,
                width: self.width,
                offset,
                first_row,
                vector: col.shape != ColumnShape::Scalar,
            };
            match &col.shape {
                ColumnShape::Scalar => {
                    scalars.push((offset, checked_scalar(array.as_ref(), &target)?))
                }
                ColumnShape::Vector(n) => write_list(array.as_ref(), *n, target)?,
                ColumnShape::SparkVector(n) => {
                    write_spark_vector(array.as_struct_opt(), *n, target)?
                }
            }
            offset += col.width();
        }
        interleave(&scalars, rows, self.width, out);
        Ok(())
    }

    /// Converts a sequence of batches into one dense buffer.
    pub fn to_dense(&self, batches: &[RecordBatch]) -> Result<Vec<f32>> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let mut out = vec![0f32; rows * self.width];
        self.write_batches(batches, 0, &mut out)?;
        Ok(out)
    }

    /// Like [`FeatureLayout::to_dense`], into a caller-provided buffer (for
    /// example the storage of a freshly allocated tensor). `first_row` is
    /// the input row number of the first batch's first row, for errors.
    pub fn write_batches<E: Element>(
        &self,
        batches: &[RecordBatch],
        first_row: usize,
        out: &mut [E],
    ) -> Result<()> {
        let mut row = 0;
        for batch in batches {
            let n = batch.num_rows();
            let end = (row + n) * self.width;
            if end > out.len() {
                return Err(Error::internal("feature buffer too small for the batches"));
            }
            self.write_batch(batch, first_row + row, &mut out[row * self.width..end])?;
            row += n;
        }
        Ok(())
    }
}

/// Where one column's values go in the row-major output.
pub(crate) struct Target<'a, E: Element> {
    pub(crate) column: &'a str,
    pub(crate) out: &'a mut [E],
    pub(crate) width: usize,
    pub(crate) offset: usize,
    pub(crate) first_row: usize,
    /// Whether the column is a vector (errors then name the element).
    pub(crate) vector: bool,
}

impl<E: Element> Target<'_, E> {
    pub(crate) fn null_error(&self, row: usize) -> Error {
        Error::invalid(format!(
            "feature column '{}' has a null at row {}; fill or drop nulls before training or prediction",
            self.column,
            self.first_row + row
        ))
    }

    #[inline]
    pub(crate) fn put(&mut self, row: usize, element: usize, v: f64) -> Result<()> {
        let x = E::from_f64(v);
        if !x.finite() {
            return Err(self.value_error(row, element, v));
        }
        self.out[row * self.width + self.offset + element] = x;
        Ok(())
    }

    /// The error for a value that is not finite as an `E`.
    #[cold]
    pub(crate) fn value_error(&self, row: usize, element: usize, v: f64) -> Error {
        let what = if v.is_finite() {
            format!("{v:e}, beyond {} range,", E::NAME)
        } else {
            describe_non_finite(v).to_string()
        };
        let at = if self.vector {
            format!(" (element {element})")
        } else {
            String::new()
        };
        Error::invalid(format!(
            "feature column '{}' has {what} at row {}{at}",
            self.column,
            self.first_row + row,
        ))
    }
}

/// A scalar column's values once they are known to convert: no nulls, every
/// value finite as an `E`.
fn checked_scalar<'a, E: Element>(array: &'a dyn Array, t: &Target<'_, E>) -> Result<Values<'a>> {
    let rows = array.len();
    if let Some(row) = first_null(array.logical_nulls().as_ref(), 0..rows) {
        return Err(t.null_error(row));
    }
    let values = Values::of(array, &format!("feature column '{}'", t.column))?;
    if let Some((row, v)) = values.first_non_finite_as::<E>() {
        return Err(t.value_error(row, 0, v));
    }
    Ok(values)
}

/// Rows per block when scalar columns are interleaved into rows: a block of
/// output (256 rows of 32 features is 32 KiB) stays in the CPU's cache while
/// each column writes its place in every row. Writing each column down the
/// whole batch instead touched every cache line of the output once per column.
const BLOCK_ROWS: usize = 256;

/// Writes checked scalar columns (each with its offset in a row) into the
/// row-major `out` of `rows` rows of `width` values.
fn interleave<E: Element>(
    columns: &[(usize, Values<'_>)],
    rows: usize,
    width: usize,
    out: &mut [E],
) {
    let mut start = 0;
    while start < rows {
        let end = (start + BLOCK_ROWS).min(rows);
        let block = &mut out[start * width..end * width];
        for (offset, values) in columns {
            values.write_strided(start..end, block, width, *offset);
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use arrow::array::{
        ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int32Array, ListArray,
        StringArray,
    };
    use arrow::datatypes::{Field, Float64Type};
    use std::sync::Arc;

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn dense(b: &RecordBatch, cols: &[&str]) -> Result<Vec<f32>> {
        let layout = FeatureLayout::resolve(&b.schema(), &names(cols), Some(b))?;
        layout.to_dense(std::slice::from_ref(b))
    }

    #[test]
    fn scalars_and_vectors_concatenate_row_major() {
        let list = ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(vec![Some(10.0), Some(11.0)]),
            Some(vec![Some(20.0), Some(21.0)]),
        ]);
        let b = batch(vec![
            ("a", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
            ("v", Arc::new(list)),
            ("b", Arc::new(Float32Array::from(vec![0.5, 0.25]))),
        ]);
        let out = dense(&b, &["a", "v", "b"]).unwrap();
        assert_eq!(out, vec![1.0, 10.0, 11.0, 0.5, 2.0, 20.0, 21.0, 0.25]);
    }

    /// Scalars of several types around a vector, over more rows than one
    /// interleaving block, from a sliced batch: every value lands in its row.
    #[test]
    fn scalars_interleave_across_blocks_of_a_sliced_batch() {
        use arrow::array::{BooleanArray, Int64Array};
        let n = 700;
        let field = Arc::new(Field::new("item", DataType::Float64, true));
        let vector = FixedSizeListArray::new(
            field,
            2,
            Arc::new(Float64Array::from_iter_values((0..2 * n).map(|i| i as f64))),
            None,
        );
        let b = batch(vec![
            (
                "f",
                Arc::new(Float32Array::from_iter_values(
                    (0..n).map(|i| i as f32 * 0.5),
                )) as ArrayRef,
            ),
            ("v", Arc::new(vector)),
            (
                "l",
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| -(i as i64)))),
            ),
            (
                "b",
                Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(i % 3 == 0)))),
            ),
            (
                "d",
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 + 0.25),
                )),
            ),
        ])
        .slice(3, n - 5);
        let out = dense(&b, &["f", "v", "l", "b", "d"]).unwrap();
        assert_eq!(out.len(), (n - 5) * 6);
        for (r, row) in out.chunks(6).enumerate() {
            let i = r + 3;
            let want = [
                i as f32 * 0.5,
                (2 * i) as f32,
                (2 * i + 1) as f32,
                -(i as f32),
                if i % 3 == 0 { 1.0 } else { 0.0 },
                i as f32 + 0.25,
            ];
            assert_eq!(row, want, "row {r}");
        }
        // Errors past the first block still name the row the user sees.
        let mut values: Vec<Option<f32>> = (0..n).map(|i| Some(i as f32)).collect();
        values[600] = None;
        values[650] = Some(f32::NAN);
        let b = batch(vec![(
            "x",
            Arc::new(Float32Array::from(values)) as ArrayRef,
        )]);
        let e = dense(&b, &["x"]).unwrap_err();
        assert!(e.message().contains("null at row 600"), "{e}");
        let b = b.slice(601, 99);
        let layout = FeatureLayout::resolve(&b.schema(), &names(&["x"]), Some(&b)).unwrap();
        let e = layout
            .write_batches(std::slice::from_ref(&b), 601, &mut vec![0.0; 99])
            .unwrap_err();
        assert!(e.message().contains("NaN at row 650"), "{e}");
    }

    #[test]
    fn fixed_size_list_of_a_sliced_batch() {
        let values = Float32Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let field = Arc::new(Field::new("item", DataType::Float32, true));
        let fsl = FixedSizeListArray::new(field, 2, Arc::new(values), None);
        let b = batch(vec![("v", Arc::new(fsl) as ArrayRef)]).slice(1, 2);
        assert_eq!(dense(&b, &["v"]).unwrap(), vec![3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn missing_column_names_it_and_lists_the_others() {
        let b = batch(vec![("a", Arc::new(Int32Array::from(vec![1])) as ArrayRef)]);
        let e = dense(&b, &["a", "zz"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("'zz' not found"), "{e}");
        assert!(e.message().contains("columns: a"), "{e}");
    }

    #[test]
    fn string_column_names_column_and_type() {
        let b = batch(vec![(
            "s",
            Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
        )]);
        let e = dense(&b, &["s"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("'s' has type Utf8"), "{e}");
    }

    #[test]
    fn null_names_column_and_row() {
        let b = batch(vec![(
            "x",
            Arc::new(Float64Array::from(vec![Some(1.0), Some(2.0), None])) as ArrayRef,
        )]);
        let e = dense(&b, &["x"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("'x' has a null at row 2"), "{e}");
    }

    #[test]
    fn nan_and_inf_name_column_and_row() {
        for (v, word) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (1e300, "1e300, beyond float32 range,"),
        ] {
            let b = batch(vec![(
                "x",
                Arc::new(Float64Array::from(vec![1.0, v])) as ArrayRef,
            )]);
            let e = dense(&b, &["x"]).unwrap_err();
            assert!(e.message().contains(&format!("'x' has {word}")), "{e}");
            assert!(e.message().contains("at row 1"), "{e}");
        }
    }

    #[test]
    fn ragged_vectors_name_row_and_lengths() {
        let list = ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(vec![Some(1.0), Some(2.0)]),
            Some(vec![Some(1.0), Some(2.0)]),
            Some(vec![Some(1.0)]),
        ]);
        let b = batch(vec![("v", Arc::new(list) as ArrayRef)]);
        let e = dense(&b, &["v"]).unwrap_err();
        assert!(
            e.message()
                .contains("'v' has 1 elements at row 2, expected 2"),
            "{e}"
        );
    }

    #[test]
    fn row_numbers_continue_across_batches() {
        let b1 = batch(vec![(
            "x",
            Arc::new(Float32Array::from(vec![1.0, 2.0])) as ArrayRef,
        )]);
        let b2 = batch(vec![(
            "x",
            Arc::new(Float32Array::from(vec![Some(1.0), None])) as ArrayRef,
        )]);
        let layout = FeatureLayout::resolve(&b1.schema(), &names(&["x"]), Some(&b1)).unwrap();
        let e = layout.to_dense(&[b1, b2]).unwrap_err();
        assert!(e.message().contains("at row 3"), "{e}");
    }

    #[test]
    fn spark_ml_dense_and_sparse_vectors() {
        let v = crate::vectors::spark_vectors(&[
            (1, 0, vec![], vec![1.0, 2.0, 3.0]),
            (0, 3, vec![2], vec![7.0]),
        ]);
        let b = batch(vec![("features", v)]);
        assert_eq!(
            dense(&b, &["features"]).unwrap(),
            vec![1.0, 2.0, 3.0, 0.0, 0.0, 7.0]
        );
    }

    #[test]
    fn spark_ml_vectors_of_mixed_sizes_are_rejected() {
        let v = crate::vectors::spark_vectors(&[
            (1, 0, vec![], vec![1.0, 2.0]),
            (0, 3, vec![2], vec![7.0]),
        ]);
        let b = batch(vec![("features", v)]);
        let e = dense(&b, &["features"]).unwrap_err();
        assert!(e.message().contains("size 3 at row 1, expected 2"), "{e}");
    }
}

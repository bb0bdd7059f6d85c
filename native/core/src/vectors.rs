//! Vector feature columns: `list` / `fixed_size_list` of numbers and Spark
//! ML vectors (dense or sparse structs), written row by row into the dense
//! buffer with the same checks as scalar columns (nulls, NaN/Inf, sizes).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int32Builder, Int8Builder, ListBuilder, StructArray,
};
use arrow::datatypes::{DataType, Field};

use crate::error::{Error, Result};
use crate::features::Target;
use crate::numeric::{first_null, Element, Values};

/// A column of Spark ML vectors as Spark's Arrow conversion lays out
/// `VectorUDT`: one `(type, size, indices, values)` struct per row, type 0
/// sparse (size and indices given) or 1 dense (values only). Spark writes
/// these; stoker builds them for its tests and the fuzzer's seeds.
pub fn spark_vectors(rows: &[(i8, i32, Vec<i32>, Vec<f64>)]) -> ArrayRef {
    let mut kind = Int8Builder::new();
    let mut size = Int32Builder::new();
    let mut idx = ListBuilder::new(Int32Builder::new());
    let mut val = ListBuilder::new(Float64Builder::new());
    for (k, s, i, v) in rows {
        kind.append_value(*k);
        size.append_value(*s);
        idx.append_value(i.iter().copied().map(Some));
        val.append_value(v.iter().copied().map(Some));
    }
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    let fields: Vec<(Arc<Field>, ArrayRef)> = vec![
        (
            Arc::new(Field::new("type", DataType::Int8, false)),
            Arc::new(kind.finish()),
        ),
        (
            Arc::new(Field::new("size", DataType::Int32, true)),
            Arc::new(size.finish()),
        ),
        (
            Arc::new(Field::new("indices", list(DataType::Int32), true)),
            Arc::new(idx.finish()),
        ),
        (
            Arc::new(Field::new("values", list(DataType::Float64), true)),
            Arc::new(val.finish()),
        ),
    ];
    Arc::new(StructArray::from(fields))
}

/// `(start, length)` of one row's elements in a list column's child array.
type ElementRange = (usize, usize);

/// Element range of each row of a list-like column.
pub(crate) fn list_ranges(array: &dyn Array) -> Result<(Vec<ElementRange>, &dyn Array)> {
    Ok(match array.data_type() {
        DataType::FixedSizeList(_, _) => {
            let a = array.as_fixed_size_list();
            let n = a.value_length() as usize;
            let ranges = (0..a.len()).map(|i| (a.value_offset_at(i), n)).collect();
            (ranges, a.values().as_ref())
        }
        DataType::List(_) => {
            let a = array.as_list::<i32>();
            let o = a.value_offsets();
            let ranges = (0..a.len())
                .map(|i| (o[i] as usize, (o[i + 1] - o[i]) as usize))
                .collect();
            (ranges, a.values().as_ref())
        }
        DataType::LargeList(_) => {
            let a = array.as_list::<i64>();
            let o = a.value_offsets();
            let ranges = (0..a.len())
                .map(|i| (o[i] as usize, (o[i + 1] - o[i]) as usize))
                .collect();
            (ranges, a.values().as_ref())
        }
        other => {
            return Err(Error::invalid(format!(
                "expected a list column, found {other}"
            )))
        }
    })
}

pub(crate) fn write_list<E: Element>(
    array: &dyn Array,
    width: usize,
    mut t: Target<'_, E>,
) -> Result<()> {
    if let Some(row) = first_null(array.logical_nulls().as_ref(), 0..array.len()) {
        return Err(t.null_error(row));
    }
    let (ranges, child) =
        list_ranges(array).map_err(|e| e.context(format!("feature column '{}'", t.column)))?;
    let values = Values::of(child, &format!("elements of feature column '{}'", t.column))?;
    let child_nulls = child.logical_nulls();
    for (row, &(start, len)) in ranges.iter().enumerate() {
        if len != width {
            return Err(Error::invalid(format!(
                "vector column '{}' has {} elements at row {}, expected {} (vectors must all have the same length)",
                t.column,
                len,
                t.first_row + row,
                width
            )));
        }
        if let Some(i) = first_null(child_nulls.as_ref(), start..start + len) {
            return Err(Error::invalid(format!(
                "vector column '{}' has a null element at row {} (element {})",
                t.column,
                t.first_row + row,
                i - start
            )));
        }
        let mut result = Ok(());
        values.for_each(start..start + len, |i, v| {
            if result.is_ok() {
                result = t.put(row, i - start, v);
            }
        });
        result?;
    }
    Ok(())
}

/// The size of row `row`'s Spark vector; `values` are the ranges of the
/// `values` field ([`list_ranges`], computed once per column by the caller:
/// per row it made a put quadratic in its rows, 0.5 s for 25,000 rows).
pub(crate) fn spark_vector_size(
    a: &StructArray,
    column: &str,
    row: usize,
    values: &[ElementRange],
) -> Result<usize> {
    let kind = a.column(0).as_primitive_opt::<arrow::datatypes::Int8Type>();
    let kind = kind.ok_or_else(|| {
        Error::invalid(format!(
            "Spark vector column '{column}' has a non-int8 'type' field"
        ))
    })?;
    if kind.value(row) == 0 {
        let size = a
            .column(1)
            .as_primitive_opt::<arrow::datatypes::Int32Type>();
        let size = size.ok_or_else(|| {
            Error::invalid(format!(
                "Spark vector column '{column}' has a non-int32 'size' field"
            ))
        })?;
        Ok(size.value(row).max(0) as usize)
    } else {
        values
            .get(row)
            .map(|r| r.1)
            .ok_or_else(|| Error::internal(format!("row {row} is outside the vector column")))
    }
}

/// Spark ML vectors: type 1 is dense (all values in `values`), type 0 is
/// sparse (`size`, `indices`, `values`); missing entries of a sparse vector
/// are zero.
pub(crate) fn write_spark_vector<E: Element>(
    a: Option<&StructArray>,
    width: usize,
    mut t: Target<'_, E>,
) -> Result<()> {
    let a = a.ok_or_else(|| Error::internal("Spark vector column is not a struct"))?;
    if let Some(row) = first_null(a.logical_nulls().as_ref(), 0..a.len()) {
        return Err(t.null_error(row));
    }
    let (value_ranges, value_child) = list_ranges(a.column(3).as_ref())?;
    let values = Values::of(
        value_child,
        &format!("values of Spark vector column '{}'", t.column),
    )?;
    let (index_ranges, index_child) = list_ranges(a.column(2).as_ref())?;
    let indices = index_child.as_primitive_opt::<arrow::datatypes::Int32Type>();
    for row in 0..a.len() {
        let size = spark_vector_size(a, t.column, row, &value_ranges)?;
        if size != width {
            return Err(Error::invalid(format!(
                "vector column '{}' has size {} at row {}, expected {} (vectors must all have the same size)",
                t.column,
                size,
                t.first_row + row,
                width
            )));
        }
        let (start, len) = value_ranges[row];
        let sparse = a
            .column(0)
            .as_primitive::<arrow::datatypes::Int8Type>()
            .value(row)
            == 0;
        let mut result = Ok(());
        if sparse {
            let indices = indices.ok_or_else(|| {
                Error::invalid(format!(
                    "Spark vector column '{}' has non-int32 indices",
                    t.column
                ))
            })?;
            let (istart, ilen) = index_ranges[row];
            if ilen != len {
                return Err(Error::invalid(format!(
                    "sparse vector in column '{}' at row {} has {} indices but {} values",
                    t.column,
                    t.first_row + row,
                    ilen,
                    len
                )));
            }
            for e in 0..width {
                t.out[row * t.width + t.offset + e] = E::default();
            }
            let idx = &indices.values()[istart..istart + ilen];
            values.for_each(start..start + len, |i, v| {
                let pos = idx[i - start];
                if result.is_ok() {
                    result = if pos < 0 || pos as usize >= width {
                        Err(Error::invalid(format!(
                            "sparse vector in column '{}' at row {} has index {} outside its size {}",
                            t.column,
                            t.first_row + row,
                            pos,
                            width
                        )))
                    } else {
                        t.put(row, pos as usize, v)
                    };
                }
            });
        } else {
            values.for_each(start..start + len, |i, v| {
                if result.is_ok() {
                    result = t.put(row, i - start, v);
                }
            });
        }
        result?;
    }
    Ok(())
}

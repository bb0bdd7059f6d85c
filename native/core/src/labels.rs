//! The label column: checked against what the loss needs and copied into a
//! dense buffer, class indices as i64 and targets as f32.

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::Schema;

use crate::error::{Error, Result};
use crate::numeric::{describe_non_finite, first_null, is_integer, is_numeric, Values};
use crate::task::Task;

/// Dense labels for a run of rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// Class indices in `0..classes` (cross-entropy).
    Classes(Vec<i64>),
    /// Float targets (mse) or 0/1 probabilities (binary cross-entropy).
    Values(Vec<f32>),
}

impl Labels {
    pub fn len(&self) -> usize {
        match self {
            Labels::Classes(v) => v.len(),
            Labels::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks that the label column exists and is numeric; returns whether its
/// values are whole numbers (the rule for the default loss).
pub fn label_is_integer(schema: &Schema, label: &str) -> Result<bool> {
    let field = schema.field_with_name(label).map_err(|_| {
        Error::invalid(format!(
            "label column '{label}' not found; the data has columns: {}",
            crate::features::column_list(schema)
        ))
    })?;
    if !is_numeric(field.data_type()) {
        return Err(Error::invalid(format!(
            "label column '{label}' has type {}, expected an int or float column",
            field.data_type()
        )));
    }
    Ok(is_integer(field.data_type()))
}

/// Reads and checks the labels of `batches` for `task`.
pub fn read_labels(batches: &[RecordBatch], label: &str, task: Task) -> Result<Labels> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut labels = match task {
        Task::Multiclass { .. } => Labels::Classes(Vec::with_capacity(rows)),
        Task::Binary | Task::Regression => Labels::Values(Vec::with_capacity(rows)),
    };
    let mut first_row = 0;
    for batch in batches {
        label_is_integer(&batch.schema(), label)?;
        let column = batch
            .column_by_name(label)
            .ok_or_else(|| Error::invalid(format!("label column '{label}' not found")))?;
        append_labels(column.as_ref(), label, first_row, task, &mut labels)?;
        first_row += batch.num_rows();
    }
    Ok(labels)
}

fn append_labels(
    array: &dyn Array,
    name: &str,
    first_row: usize,
    task: Task,
    out: &mut Labels,
) -> Result<()> {
    if let Some(row) = first_null(array.logical_nulls().as_ref(), 0..array.len()) {
        return Err(Error::invalid(format!(
            "label column '{name}' has a null at row {}",
            first_row + row
        )));
    }
    let values = Values::of(array, &format!("label column '{name}'"))?;
    let mut result = Ok(());
    values.for_each(0..array.len(), |i, v| {
        if result.is_err() {
            return;
        }
        let row = first_row + i;
        result = check_label(name, row, v, task).map(|()| match out {
            Labels::Classes(c) => c.push(v as i64),
            Labels::Values(f) => f.push(v as f32),
        });
    });
    result
}

fn check_label(name: &str, row: usize, v: f64, task: Task) -> Result<()> {
    if !v.is_finite() {
        return Err(Error::invalid(format!(
            "label column '{name}' has {} at row {row}",
            describe_non_finite(v)
        )));
    }
    match task {
        Task::Multiclass { classes } => {
            if v.fract() != 0.0 || v < 0.0 || v >= classes as f64 {
                return Err(Error::invalid(format!(
                    "label column '{name}' has {v} at row {row}, but this is a {classes}-class classifier \
                     (class labels 0..{}). For a regression, set objective 'regression' (or loss 'mse', or \
                     cast the label to double); for more classes, set num_classes in the model spec",
                    classes - 1
                )));
            }
        }
        Task::Binary => {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::invalid(format!(
                    "label column '{name}' has {v} at row {row}; binary cross-entropy needs labels in [0, 1]"
                )));
            }
        }
        Task::Regression => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use std::sync::Arc;

    fn batch(a: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter(vec![("y", a)]).unwrap()
    }

    #[test]
    fn classes_from_ints_and_whole_doubles() {
        let b1 = batch(Arc::new(Int64Array::from(vec![0, 2, 1])));
        let b2 = batch(Arc::new(Float64Array::from(vec![1.0, 0.0])));
        let task = Task::Multiclass { classes: 3 };
        assert_eq!(
            read_labels(&[b1], "y", task).unwrap(),
            Labels::Classes(vec![0, 2, 1])
        );
        assert_eq!(
            read_labels(&[b2], "y", task).unwrap(),
            Labels::Classes(vec![1, 0])
        );
    }

    #[test]
    fn label_out_of_range_names_row_value_and_classes() {
        let b = batch(Arc::new(Int64Array::from(vec![0, 1, 3])));
        let e = read_labels(&[b], "y", Task::Multiclass { classes: 3 }).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("'y' has 3 at row 2"), "{e}");
        assert!(e.message().contains("3-class classifier"), "{e}");
        assert!(e.message().contains("objective 'regression'"), "{e}");
    }

    #[test]
    fn binary_labels_must_be_probabilities() {
        let b = batch(Arc::new(Float64Array::from(vec![0.0, 2.0])));
        let e = read_labels(&[b], "y", Task::Binary).unwrap_err();
        assert!(e.message().contains("has 2 at row 1"), "{e}");
    }

    #[test]
    fn null_and_nan_labels() {
        let b = batch(Arc::new(Float64Array::from(vec![Some(0.5), None])));
        let e = read_labels(&[b], "y", Task::Regression).unwrap_err();
        assert!(e.message().contains("'y' has a null at row 1"), "{e}");
        let b = batch(Arc::new(Float64Array::from(vec![f64::NAN])));
        let e = read_labels(&[b], "y", Task::Regression).unwrap_err();
        assert!(e.message().contains("has NaN at row 0"), "{e}");
    }

    #[test]
    fn label_type_and_presence() {
        let b = batch(Arc::new(StringArray::from(vec!["a"])));
        let e = label_is_integer(&b.schema(), "y").unwrap_err();
        assert!(e.message().contains("'y' has type Utf8"), "{e}");
        let e = label_is_integer(&b.schema(), "label").unwrap_err();
        assert!(e.message().contains("'label' not found"), "{e}");
        let b = batch(Arc::new(Int64Array::from(vec![1])));
        assert!(label_is_integer(&b.schema(), "y").unwrap());
    }
}

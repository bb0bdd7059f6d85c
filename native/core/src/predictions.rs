//! Model outputs → Arrow prediction columns: `prediction` (float64: the value
//! for regression, the class index for classifiers, as Spark ML writes it)
//! and, for classifiers, `probability` (list<float32>, one entry per class).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Float64Array, ListArray, RecordBatch};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};

use crate::error::{Error, Result};
use crate::task::Task;

/// Default output column names (Spark ML's).
pub const PREDICTION: &str = "prediction";
pub const PROBABILITY: &str = "probability";

/// What the engine returns for a run of rows, already on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    pub task: Task,
    /// Row-major. Regression: the value; binary: P(class 1); multiclass:
    /// `classes` probabilities per row.
    pub values: Vec<f32>,
}

impl Outputs {
    pub fn rows(&self) -> usize {
        self.values.len() / self.task.outputs()
    }

    /// The `prediction` column.
    pub fn prediction(&self) -> Float64Array {
        match self.task {
            Task::Regression => self.values.iter().map(|&v| v as f64).collect(),
            Task::Binary => self
                .values
                .iter()
                .map(|&p| if p >= 0.5 { 1.0 } else { 0.0 })
                .collect(),
            Task::Multiclass { classes } => self
                .values
                .chunks_exact(classes)
                .map(|row| {
                    let mut best = 0;
                    for (i, &p) in row.iter().enumerate() {
                        if p > row[best] {
                            best = i;
                        }
                    }
                    best as f64
                })
                .collect(),
        }
    }

    /// The `probability` column, or None for regression.
    pub fn probability(&self) -> Option<ListArray> {
        let classes = self.task.classes();
        let values: Vec<f32> = match self.task {
            Task::Regression => return None,
            Task::Binary => self.values.iter().flat_map(|&p| [1.0 - p, p]).collect(),
            Task::Multiclass { .. } => self.values.clone(),
        };
        let rows = values.len() / classes;
        let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(classes, rows));
        Some(ListArray::new(
            probability_item(),
            offsets,
            Arc::new(Float32Array::from(values)),
            None,
        ))
    }
}

fn probability_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

/// Names of the columns [`append`] adds.
#[derive(Debug, Clone)]
pub struct OutputColumns {
    pub prediction: String,
    /// None: do not add a probability column even for classifiers.
    pub probability: Option<String>,
}

impl Default for OutputColumns {
    fn default() -> Self {
        OutputColumns {
            prediction: PREDICTION.into(),
            probability: Some(PROBABILITY.into()),
        }
    }
}

/// Returns `batch` (or only the `keep` columns of it, if given) with the
/// prediction columns appended. Row count and order are preserved.
pub fn append(
    batch: &RecordBatch,
    keep: Option<&[String]>,
    outputs: &Outputs,
    names: &OutputColumns,
) -> Result<RecordBatch> {
    if outputs.rows() != batch.num_rows() {
        return Err(Error::internal(format!(
            "model returned {} predictions for {} rows",
            outputs.rows(),
            batch.num_rows()
        )));
    }
    let schema = batch.schema();
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let indices: Vec<usize> = match keep {
        None => (0..schema.fields().len()).collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                schema.index_of(n).map_err(|_| {
                    Error::invalid(format!("pass-through column '{n}' not found in the input"))
                })
            })
            .collect::<Result<_>>()?,
    };
    for i in indices {
        fields.push(schema.field(i).clone());
        columns.push(batch.column(i).clone());
    }
    let mut add = |name: &str, array: ArrayRef| -> Result<()> {
        if fields.iter().any(|f| f.name() == name) {
            return Err(Error::invalid(format!(
                "output column '{name}' already exists in the input; choose another prediction/probability column name"
            )));
        }
        fields.push(Field::new(name, array.data_type().clone(), false));
        columns.push(array);
        Ok(())
    };
    add(&names.prediction, Arc::new(outputs.prediction()))?;
    if let (Some(name), Some(prob)) = (&names.probability, outputs.probability()) {
        add(name, Arc::new(prob))?;
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int32Array};
    use arrow::datatypes::Float32Type;

    #[test]
    fn multiclass_argmax_and_probabilities() {
        let o = Outputs {
            task: Task::Multiclass { classes: 3 },
            values: vec![0.1, 0.7, 0.2, 0.5, 0.2, 0.3],
        };
        assert_eq!(o.prediction().values().to_vec(), vec![1.0, 0.0]);
        let p = o.probability().unwrap();
        assert_eq!(p.len(), 2);
        let row = p.value(1);
        assert_eq!(
            row.as_primitive::<Float32Type>().values().to_vec(),
            vec![0.5, 0.2, 0.3]
        );
    }

    #[test]
    fn binary_expands_to_two_probabilities() {
        let o = Outputs {
            task: Task::Binary,
            values: vec![0.25, 0.75],
        };
        assert_eq!(o.prediction().values().to_vec(), vec![0.0, 1.0]);
        let p = o.probability().unwrap();
        assert_eq!(
            p.value(0).as_primitive::<Float32Type>().values().to_vec(),
            vec![0.75, 0.25]
        );
    }

    #[test]
    fn append_keeps_rows_and_refuses_name_clash() {
        let b = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int32Array::from(vec![7, 8])) as ArrayRef,
        )])
        .unwrap();
        let o = Outputs {
            task: Task::Regression,
            values: vec![1.5, 2.5],
        };
        let out = append(&b, None, &o, &OutputColumns::default()).unwrap();
        assert_eq!(out.num_columns(), 2);
        assert_eq!(out.num_rows(), 2);
        let names = OutputColumns {
            prediction: "id".into(),
            probability: None,
        };
        let e = append(&b, None, &o, &names).unwrap_err();
        assert!(e.message().contains("'id' already exists"));
    }
}

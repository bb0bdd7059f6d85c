//! One training setup for every trainer: `stoker train` (one file, all its
//! rows at hand) and the server's jobs (one partition at a time) both turn
//! "this model, these feature columns, this label, this loss or none" into
//! a feature layout, a loss, a model, a dataset and a trainer here, so the
//! two cannot drift apart.
//!
//! One difference is deliberate and lives here too: a built-in spec trained
//! with cross-entropy and no `num_classes` gets its classes from the labels
//! (0..=max) only when every row is at hand. A server sees one partition,
//! whose labels may lack a class another partition has, and servers that
//! guessed differently would train states that cannot be averaged; there the
//! spec must name its classes (the error says so).

use std::borrow::Cow;

use arrow::array::RecordBatch;
use stoker_core::labels::{label_is_integer, read_labels};
use stoker_core::{Error, FeatureLayout, Labels, Loss, Result, State, Task};

use crate::model::{Model, ModelSource};
use crate::{Budget, Dataset, Device, OptimizerConfig, Trainer};

/// What a training run is asked to do, before any data is seen.
pub struct Setup {
    pub source: ModelSource,
    pub features: Vec<String>,
    pub label: String,
    /// The loss asked for; `None`: the default of the model and the label's type.
    pub loss: Option<Loss>,
    pub optimizer: OptimizerConfig,
    pub device: Device,
    pub seed: u64,
    /// What one model may take of the device (a server's budget); `None`:
    /// no check (`stoker train` on the user's own machine).
    pub budget: Option<Budget>,
}

/// Which rows [`Setup::fix`] sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every row of the training data (`stoker train`).
    All,
    /// One partition of it (a server).
    Partition,
}

/// A setup fixed against the data: what every partition must agree on.
#[derive(Debug, Clone)]
pub struct Fixed {
    pub layout: FeatureLayout,
    pub loss: Loss,
    /// Classes read from the labels, for a spec that names none.
    pub inferred_classes: Option<usize>,
}

impl Setup {
    /// Fixes the feature layout (from the schema, and the first non-empty
    /// batch for vector widths) and the loss (as asked, or the default for
    /// the model and the label's type) against `batches`.
    pub fn fix(&self, batches: &[RecordBatch], rows: Rows) -> Result<Fixed> {
        let first = batches.iter().find(|b| b.num_rows() > 0);
        let schema = match (first, batches.first()) {
            (Some(b), _) | (None, Some(b)) => b.schema(),
            (None, None) => return Err(Error::invalid("the training data has no batches")),
        };
        let layout = FeatureLayout::resolve(&schema, &self.features, first)?;
        let integer_label = label_is_integer(&schema, &self.label)?;
        let loss = self
            .loss
            .unwrap_or_else(|| self.source.default_loss(integer_label));
        let inferred_classes = match &self.source {
            ModelSource::Spec(spec)
                if rows == Rows::All
                    && loss == Loss::CrossEntropy
                    && spec.num_classes.is_none() =>
            {
                Some(classes_in(batches, &self.label)?)
            }
            _ => None,
        };
        Ok(Fixed {
            layout,
            loss,
            inferred_classes,
        })
    }

    /// The model source with what `fixed` inferred (a spec's classes).
    pub fn source(&self, fixed: &Fixed) -> Cow<'_, ModelSource> {
        match (&self.source, fixed.inferred_classes) {
            (ModelSource::Spec(spec), Some(classes)) => {
                let mut spec = spec.clone();
                spec.num_classes = Some(classes);
                Cow::Owned(ModelSource::Spec(spec))
            }
            _ => Cow::Borrowed(&self.source),
        }
    }

    /// A fresh model: seeded initial weights.
    pub fn model(&self, fixed: &Fixed) -> Result<Model> {
        Model::build_within(
            &self.source(fixed),
            fixed.loss,
            fixed.layout.width(),
            self.device,
            self.seed,
            self.budget.as_ref(),
        )
    }

    /// A fresh model with a fresh optimizer.
    pub fn trainer(&self, fixed: &Fixed) -> Result<Trainer> {
        Trainer::new(self.model(fixed)?, self.optimizer.clone())
    }

    /// `batches` as device tensors for a model of `task`.
    pub fn dataset(&self, fixed: &Fixed, batches: &[RecordBatch], task: Task) -> Result<Dataset> {
        Dataset::from_batches(batches, &fixed.layout, &self.label, task, self.device)
    }

    /// The trainer's state after `round`, recording the feature columns and
    /// the label (what `register_model` and `stoker predict` read back).
    pub fn state(
        &self,
        trainer: &Trainer,
        fixed: &Fixed,
        round: u64,
        samples: u64,
    ) -> Result<State> {
        let mut state = trainer.state(round, samples)?;
        let extra = &mut state.meta.extra;
        extra.insert("features".into(), fixed.layout.names().join(","));
        extra.insert("label".into(), self.label.clone());
        Ok(state)
    }
}

/// For cross-entropy, the classes are 0..=max label.
fn classes_in(batches: &[RecordBatch], label: &str) -> Result<usize> {
    let Labels::Values(v) = read_labels(batches, label, Task::Regression)? else {
        return Err(Error::internal("expected label values"));
    };
    let max = v.iter().cloned().fold(f32::MIN, f32::max);
    if max < 1.0 || v.iter().any(|x| x.fract() != 0.0 || *x < 0.0) {
        return Err(Error::invalid(format!(
            "label column '{label}' must hold class indices 0, 1, 2... for cross-entropy"
        )));
    }
    Ok(max as usize + 1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float32Array, Int64Array};

    use super::*;
    use crate::ModelSpec;

    fn setup(spec: &str) -> Setup {
        Setup {
            source: ModelSource::Spec(ModelSpec::from_json(spec).unwrap()),
            features: vec!["a".into(), "b".into()],
            label: "y".into(),
            loss: None,
            optimizer: OptimizerConfig::default(),
            device: Device::Cpu,
            seed: 7,
            budget: None,
        }
    }

    fn batch(labels: Vec<i64>) -> RecordBatch {
        let n = labels.len();
        RecordBatch::try_from_iter(vec![
            ("a", Arc::new(Float32Array::from(vec![0.5; n])) as ArrayRef),
            ("b", Arc::new(Float32Array::from(vec![1.5; n]))),
            ("y", Arc::new(Int64Array::from(labels))),
        ])
        .unwrap()
    }

    #[test]
    fn classes_are_inferred_only_from_all_rows() {
        let s = setup(r#"{"type": "mlp", "hidden": [4]}"#);
        let data = [batch(vec![0, 2, 1])];
        let all = s.fix(&data, Rows::All).unwrap();
        assert_eq!(
            (all.loss, all.inferred_classes),
            (Loss::CrossEntropy, Some(3))
        );
        assert_eq!(all.layout.width(), 2);
        let model = s.model(&all).unwrap();
        assert_eq!(model.task(), Task::Multiclass { classes: 3 });
        // A partition's labels may lack a class: a server never guesses.
        let part = s.fix(&data, Rows::Partition).unwrap();
        assert_eq!(part.inferred_classes, None);
        let e = s
            .model(&part)
            .err()
            .expect("a spec without num_classes on one partition");
        assert!(e.message().contains("num_classes"), "{e}");
    }

    #[test]
    fn states_record_their_columns() {
        let s = setup(r#"{"type": "mlp", "hidden": [4], "num_classes": 3}"#);
        let fixed = s.fix(&[batch(vec![0, 1])], Rows::Partition).unwrap();
        let trainer = s.trainer(&fixed).unwrap();
        let state = s.state(&trainer, &fixed, 2, 10).unwrap();
        assert_eq!(state.meta.extra["features"], "a,b");
        assert_eq!(state.meta.extra["label"], "y");
        assert_eq!((state.meta.round, state.meta.samples), (2, 10));
        let e = setup(r#"{"type": "mlp"}"#)
            .fix(
                &[batch(vec![0, 1])].map(|b| b.project(&[0, 2]).unwrap()),
                Rows::All,
            )
            .unwrap_err();
        assert!(e.message().contains("'b'"), "{e}");
    }
}

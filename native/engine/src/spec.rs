//! Built-in model specs, written as JSON by users:
//!
//! ```json
//! {"type": "mlp", "hidden": [64, 32], "activation": "relu", "dropout": 0.1, "num_classes": 3}
//! {"type": "logistic_regression", "num_classes": 2}
//! {"type": "linear_regression"}
//! ```
//!
//! `input_dim` may be given; otherwise it is the width of the feature
//! columns. `num_classes` makes the model a classifier (default loss
//! cross-entropy); without it the model has `output_dim` outputs (default 1).

use serde::{Deserialize, Serialize};
use stoker_core::{Error, Loss, Result, Task};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    /// One linear layer, mse.
    LinearRegression,
    /// One linear layer, softmax (or sigmoid with bce).
    #[serde(alias = "logistic", alias = "softmax", alias = "softmax_classifier")]
    LogisticRegression,
    /// Linear layers with activations and dropout between them.
    Mlp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Relu,
    Tanh,
    Sigmoid,
    Gelu,
    LeakyRelu,
    Silu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(rename = "type")]
    pub model_type: ModelType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_dim: Option<usize>,
}

impl ModelSpec {
    pub fn from_json(text: &str) -> Result<ModelSpec> {
        let spec: ModelSpec = serde_json::from_str(text)
            .map_err(|e| Error::invalid(format!("model spec is not valid: {e}")))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(format!(
                "model spec: dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.hidden.contains(&0) {
            return Err(Error::invalid(
                "model spec: hidden layer sizes must be positive",
            ));
        }
        if self.model_type != ModelType::Mlp && !self.hidden.is_empty() {
            return Err(Error::invalid(
                "model spec: only type 'mlp' has hidden layers",
            ));
        }
        if let Some(c) = self.num_classes {
            if c < 2 {
                return Err(Error::invalid(format!(
                    "model spec: num_classes must be at least 2, got {c}"
                )));
            }
        }
        if self.model_type == ModelType::LogisticRegression && self.num_classes.is_none() {
            return Err(Error::invalid(
                "model spec: logistic_regression needs num_classes",
            ));
        }
        Ok(())
    }

    /// The loss used when the user names none: cross-entropy for
    /// classifiers, mse otherwise.
    pub fn default_loss(&self) -> Loss {
        if self.num_classes.is_some() {
            Loss::CrossEntropy
        } else {
            Loss::Mse
        }
    }

    /// Number of outputs the final layer needs for `loss`.
    pub fn task(&self, loss: Loss) -> Result<Task> {
        match loss {
            Loss::CrossEntropy => loss.task(self.num_classes),
            Loss::BinaryCrossEntropy => {
                if matches!(self.num_classes, Some(c) if c != 2) {
                    return Err(Error::invalid(
                        "binary cross-entropy needs a model with num_classes 2 (or none)",
                    ));
                }
                Ok(Task::Binary)
            }
            Loss::Mse => {
                if self.num_classes.is_some() {
                    return Err(Error::invalid(
                        "mse loss on a classifier spec (num_classes set); use cross_entropy or drop num_classes",
                    ));
                }
                if self.output_dim.unwrap_or(1) != 1 {
                    return Err(Error::invalid(
                        "regression models predict one value: output_dim must be 1",
                    ));
                }
                Ok(Task::Regression)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_mlp() {
        let s = ModelSpec::from_json(
            r#"{"type":"mlp","hidden":[16,8],"activation":"tanh","dropout":0.2,"num_classes":3}"#,
        )
        .unwrap();
        assert_eq!(s.hidden, vec![16, 8]);
        assert_eq!(s.activation, Activation::Tanh);
        assert_eq!(s.default_loss(), Loss::CrossEntropy);
        assert_eq!(
            s.task(Loss::CrossEntropy).unwrap(),
            Task::Multiclass { classes: 3 }
        );
        assert_eq!(ModelSpec::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        let cases = [
            (r#"{"type":"tree"}"#, "unknown variant"),
            (r#"{"type":"mlp","hiden":[3]}"#, "unknown field"),
            (r#"{"type":"mlp","dropout":1.5}"#, "dropout"),
            (r#"{"type":"logistic_regression"}"#, "needs num_classes"),
            (r#"{"type":"mlp","num_classes":1}"#, "at least 2"),
            ("not json", "not valid"),
        ];
        for (text, needle) in cases {
            let e = ModelSpec::from_json(text).unwrap_err();
            assert!(e.message().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn regression_default() {
        let s = ModelSpec::from_json(r#"{"type":"linear_regression"}"#).unwrap();
        assert_eq!(s.default_loss(), Loss::Mse);
        assert_eq!(s.task(Loss::Mse).unwrap(), Task::Regression);
        assert!(s.task(Loss::CrossEntropy).is_err());
    }
}

//! What a model predicts (its task) and the loss that trains it. Both are
//! protocol values: they travel in job descriptions and state metadata.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The loss a model is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Mean squared error on one output (regression).
    Mse,
    /// Softmax cross-entropy over `classes` logits (multi-class).
    CrossEntropy,
    /// Sigmoid binary cross-entropy on one logit (binary classification).
    BinaryCrossEntropy,
}

impl Loss {
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::CrossEntropy => "cross_entropy",
            Loss::BinaryCrossEntropy => "bce",
        }
    }

    /// The task a model trained with this loss performs.
    pub fn task(self, classes: Option<usize>) -> Result<Task> {
        Ok(match self {
            Loss::Mse => Task::Regression,
            Loss::BinaryCrossEntropy => Task::Binary,
            Loss::CrossEntropy => {
                match classes {
                    Some(c) if c >= 2 => Task::Multiclass { classes: c },
                    Some(c) => {
                        return Err(Error::invalid(format!(
                            "cross-entropy needs at least 2 classes, the model has {c}"
                        )))
                    }
                    None => return Err(Error::invalid(
                        "cross-entropy needs the number of classes (num_classes in the model spec)",
                    )),
                }
            }
        })
    }
}

impl FromStr for Loss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "mse" | "l2" | "mean_squared_error" => Ok(Loss::Mse),
            "cross_entropy" | "ce" | "softmax" => Ok(Loss::CrossEntropy),
            "bce" | "binary_cross_entropy" | "logistic" => Ok(Loss::BinaryCrossEntropy),
            other => Err(Error::invalid(format!(
                "unknown loss '{other}'; expected mse, cross_entropy or bce"
            ))),
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the model's output means, which decides the prediction columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One value per row: `prediction` is that value.
    Regression,
    /// One logit per row: `probability` is `[1-p, p]`, `prediction` is 0 or 1.
    Binary,
    /// `classes` logits per row: `probability` is their softmax,
    /// `prediction` the index of the largest.
    Multiclass { classes: usize },
}

impl Task {
    /// Number of model outputs per row.
    pub fn outputs(self) -> usize {
        match self {
            Task::Regression | Task::Binary => 1,
            Task::Multiclass { classes } => classes,
        }
    }

    pub fn is_classifier(self) -> bool {
        !matches!(self, Task::Regression)
    }

    /// Number of entries in the `probability` column (0 for regression).
    pub fn classes(self) -> usize {
        match self {
            Task::Regression => 0,
            Task::Binary => 2,
            Task::Multiclass { classes } => classes,
        }
    }

    /// Text form used in state metadata: `regression`, `binary`,
    /// `multiclass:<classes>`.
    pub fn encode(self) -> String {
        match self {
            Task::Regression => "regression".into(),
            Task::Binary => "binary".into(),
            Task::Multiclass { classes } => format!("multiclass:{classes}"),
        }
    }

    pub fn decode(s: &str) -> Result<Task> {
        match s {
            "regression" => Ok(Task::Regression),
            "binary" => Ok(Task::Binary),
            other => other
                .strip_prefix("multiclass:")
                .and_then(|c| c.parse::<usize>().ok())
                .filter(|&c| c >= 2)
                .map(|classes| Task::Multiclass { classes })
                .ok_or_else(|| Error::invalid(format!("unknown task '{other}'"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_names_parse() {
        assert_eq!("MSE".parse::<Loss>().unwrap(), Loss::Mse);
        assert_eq!("cross-entropy".parse::<Loss>().unwrap(), Loss::CrossEntropy);
        assert_eq!("bce".parse::<Loss>().unwrap(), Loss::BinaryCrossEntropy);
        let e = "hinge".parse::<Loss>().unwrap_err();
        assert!(e.message().contains("unknown loss 'hinge'"));
    }

    #[test]
    fn task_codes_round_trip() {
        for t in [
            Task::Regression,
            Task::Binary,
            Task::Multiclass { classes: 7 },
        ] {
            assert_eq!(Task::decode(&t.encode()).unwrap(), t);
        }
        assert!(Task::decode("multiclass:1").is_err());
    }

    #[test]
    fn cross_entropy_needs_classes() {
        assert!(Loss::CrossEntropy.task(None).is_err());
        assert_eq!(
            Loss::CrossEntropy.task(Some(3)).unwrap(),
            Task::Multiclass { classes: 3 }
        );
    }
}

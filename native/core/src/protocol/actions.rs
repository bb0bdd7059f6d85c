//! DoAction: the actions' names, their typed bodies, and [`Action`], a
//! request parsed into one of them (the server matches on it, so a new
//! action is a new variant the compiler makes every match handle).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Action names (DoAction `type`).
pub mod action {
    pub const CREATE_JOB: &str = "create_job";
    pub const TRAIN_ROUND: &str = "train_round";
    pub const EVALUATE: &str = "evaluate";
    pub const DROP_JOB: &str = "drop_job";
    pub const REGISTER_MODEL: &str = "register_model";
    pub const UNLOAD_MODEL: &str = "unload_model";
    pub const EXPORT_MODEL: &str = "export_model";
    pub const HEALTH: &str = "health";
    pub const STATS: &str = "stats";
    pub const LINALG: &str = "linalg";
}

/// Every action's name and what ListActions says of it, in the order
/// ListActions lists them.
pub const ACTIONS: &[(&str, &str)] = &[
    (action::CREATE_JOB, "Create (or replace) a training job: {job, spec | torchscript_path | 'model' blob, features, label, loss?, optimizer?, device?, seed?, batch_size?}"),
    (action::TRAIN_ROUND, "Train one cached partition for one round from the 'state' blob: {job, partition, version, round, epochs?, steps?}; returns the result JSON and the new 'state' blob; cache miss = FAILED_PRECONDITION"),
    (action::EVALUATE, "Score a model state on a cached (validation) partition: {job, split? (validation), partition, version, round, state_id?, release?} with its 'state' blob (none: the job's initial weights); returns {rows, evaluation (sums that merge across partitions), metrics}"),
    (action::DROP_JOB, "Forget a job and its cached partitions: {name}"),
    (action::REGISTER_MODEL, "Register a servable model: {name, version?, spec | torchscript_path | 'model' blob, features?} with its 'state' blob"),
    (action::UNLOAD_MODEL, "Forget a model version (or all versions): {name, version?}"),
    (action::EXPORT_MODEL, "A trained model as TorchScript for torch.jit.load: {spec?} or a 'model' blob, with its 'state' blob; returns a 'torchscript' blob"),
    (action::HEALTH, "Server status, version and device"),
    (action::LINALG, "Matrix work (docs/linalg.md): {op: moments | product, job, partition, version} on a cached partition of a matrix job, or {op: eigen | orthonormalize | ritz | least_squares | matrix, ...} on blobs; float64 results"),
    (action::STATS, "Counters: rows in and predicted, rounds, cache bytes and evictions, jobs, models"),
];

/// A DoAction request, parsed: the action its `type` names, with its JSON
/// body typed. The blobs stay where they arrived (see
/// [`super::Envelope::split`]); each action's handler takes the ones it
/// needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Health,
    Stats,
    CreateJob(CreateJob),
    TrainRound(TrainRound),
    Evaluate(Evaluate),
    DropJob(Named),
    RegisterModel(RegisterModel),
    UnloadModel(Named),
    ExportModel(ExportModel),
    Linalg(super::Linalg),
}

impl Action {
    /// The action `kind` names, with `json` (the envelope's JSON) as its
    /// body. An unknown kind or a malformed body is invalid input that
    /// names the action.
    pub fn parse(kind: &str, json: serde_json::Value) -> Result<Action> {
        Ok(match kind {
            action::HEALTH => Action::Health,
            action::STATS => Action::Stats,
            action::CREATE_JOB => Action::CreateJob(body(kind, json)?),
            action::TRAIN_ROUND => Action::TrainRound(body(kind, json)?),
            action::EVALUATE => Action::Evaluate(body(kind, json)?),
            action::DROP_JOB => Action::DropJob(body(kind, json)?),
            action::REGISTER_MODEL => Action::RegisterModel(body(kind, json)?),
            action::UNLOAD_MODEL => Action::UnloadModel(body(kind, json)?),
            action::EXPORT_MODEL => Action::ExportModel(body(kind, json)?),
            action::LINALG => Action::Linalg(body(kind, json)?),
            other => {
                return Err(Error::invalid(format!(
                    "unknown action '{other}'; ListActions names the actions this server knows"
                )))
            }
        })
    }

    /// The name the action travels under (DoAction `type`).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Health => action::HEALTH,
            Action::Stats => action::STATS,
            Action::CreateJob(_) => action::CREATE_JOB,
            Action::TrainRound(_) => action::TRAIN_ROUND,
            Action::Evaluate(_) => action::EVALUATE,
            Action::DropJob(_) => action::DROP_JOB,
            Action::RegisterModel(_) => action::REGISTER_MODEL,
            Action::UnloadModel(_) => action::UNLOAD_MODEL,
            Action::ExportModel(_) => action::EXPORT_MODEL,
            Action::Linalg(_) => action::LINALG,
        }
    }
}

/// An envelope's JSON as the typed body of action `what` (the envelope's
/// own `blobs` listing is not part of the body).
pub fn body<T: serde::de::DeserializeOwned>(what: &str, mut json: serde_json::Value) -> Result<T> {
    if let Some(obj) = json.as_object_mut() {
        obj.remove("blobs");
    }
    serde_json::from_value(json).map_err(|e| Error::invalid(format!("malformed {what} body: {e}")))
}

/// `create_job`: what a training job trains and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    pub job: String,
    /// A built-in model spec (JSON object). Exactly one of `spec`,
    /// `torchscript_path` or a `model` blob gives the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// A TorchScript file on the server's file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torchscript_path: Option<String>,
    pub features: Vec<String>,
    pub label: String,
    /// mse, cross_entropy, bce; default from the spec and label type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// Optimizer settings: {"name": "adam", "lr": 0.001, ...}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Per-class weights of the training loss (one per class; two for a
    /// binary model), for imbalanced labels. Validation is unweighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<Vec<f64>>,
    /// When a job of this name exists, keep it (and its partitions) instead
    /// of replacing it: what each Spark task sends, so tasks sharing a
    /// server never drop each other's partitions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_existing: bool,
    /// Train and validate on the partitions cached for this other job
    /// instead of partitions of its own: the trials of a search are jobs
    /// that share one cached copy of the data (docs/tuning.md). Partitions
    /// are put under that job's name; this job adopts its feature layout
    /// and loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// A matrix job (docs/linalg.md): partitions are cached as a dense
    /// matrix of `features` for `linalg` kernels; no model, no label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<super::MatrixOptions>,
}

fn default_batch_size() -> usize {
    256
}

/// `train_round`: train one partition for one round, from the state in the
/// `state` blob (or the job's initial state when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRound {
    pub job: String,
    pub partition: u32,
    pub version: String,
    pub round: u64,
    #[serde(default = "one")]
    pub epochs: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Drop the partition from the cache after this round (the caller's
    /// last round), instead of leaving it to the LRU budget. A job training
    /// on another job's data (a trial) frees its models and input state
    /// instead: the data stays for the other trials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release: bool,
    /// Names the input state, the same for every partition of a round. The
    /// server keeps the last state it was sent under its id (one per job),
    /// so the job's other partitions on that server may send the id alone;
    /// a server without it answers `needs_state` and trains nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_id: Option<String>,
}

fn validation() -> super::Split {
    super::Split::Validation
}

fn one() -> usize {
    1
}

/// The JSON part of `train_round`'s result; the new state follows as the
/// `state` blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRoundResult {
    pub job: String,
    pub partition: u32,
    pub round: u64,
    pub samples: u64,
    pub steps: u64,
    /// A diverged round's NaN loss goes out as JSON `null` (JSON has no NaN)
    /// and reads back as NaN.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss_first: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss_last: f64,
    pub seconds: f64,
    /// The learning rate of the round's last step (where the schedule ended
    /// the round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// The request named a `state_id` this server does not hold and sent no
    /// state: nothing was trained; send the state and ask again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_state: bool,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl TrainRoundResult {
    /// The answer to a request whose input state must be sent.
    pub fn needs_state(req: &TrainRound) -> Self {
        TrainRoundResult {
            job: req.job.clone(),
            partition: req.partition,
            round: req.round,
            samples: 0,
            steps: 0,
            loss_first: 0.0,
            loss_last: 0.0,
            seconds: 0.0,
            learning_rate: None,
            needs_state: true,
        }
    }
}

/// `evaluate`: score a state on one cached partition (a validation partition
/// is a partition of the job under its own `version`), without training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    pub job: String,
    /// Which split's partition (default: validation).
    #[serde(default = "validation")]
    pub split: super::Split,
    pub partition: u32,
    pub version: String,
    /// The round whose averaged state this is (for logs and the result).
    pub round: u64,
    /// As in [`TrainRound::state_id`]: the same id names the same state for
    /// evaluations and the next round's training, so a server keeps one copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_id: Option<String>,
    /// Drop the partition from the cache afterwards (the last evaluation);
    /// for a trial, free its models and input state (as `train_round`'s).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release: bool,
}

/// `evaluate`'s result: the partition's sums (merge them across partitions
/// with [`crate::evaluation::Evaluation::merge`]) and, for convenience, the
/// metrics of this partition alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateResult {
    pub job: String,
    pub partition: u32,
    pub round: u64,
    pub rows: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<crate::evaluation::Evaluation>,
    /// NaN (an undefined metric) travels as `null`.
    #[serde(default)]
    pub metrics: std::collections::BTreeMap<String, Option<f64>>,
    pub seconds: f64,
    /// As in [`TrainRoundResult::needs_state`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_state: bool,
}

impl EvaluateResult {
    /// The answer to a request whose input state must be sent.
    pub fn needs_state(req: &Evaluate) -> Self {
        EvaluateResult {
            job: req.job.clone(),
            partition: req.partition,
            round: req.round,
            rows: 0,
            evaluation: None,
            metrics: Default::default(),
            seconds: 0.0,
            needs_state: true,
        }
    }
}

/// `drop_job` and `unload_model` name what to forget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Named {
    #[serde(alias = "job")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// `register_model`: a servable model under a name. The model comes from
/// `spec`, `torchscript_path` or a `model` blob; its weights from the
/// `state` blob (required for specs, optional for TorchScript).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterModel {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torchscript_path: Option<String>,
    /// Feature columns DoExchange reads (default: those in the state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// For TorchScript models without a state: the loss decides the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// For TorchScript models without a state: features per row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_width: Option<usize>,
}

/// `export_model`: a trained model as a TorchScript archive for plain
/// PyTorch. The model comes from `spec` or a `model` blob (TorchScript), its
/// weights from the `state` blob; the answer carries the archive as its
/// `torchscript` blob.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_into_their_typed_bodies() {
        let json = serde_json::json!({"name": "m", "version": 2, "blobs": []});
        let a = Action::parse(action::UNLOAD_MODEL, json).unwrap();
        assert_eq!(
            a,
            Action::UnloadModel(Named {
                name: "m".into(),
                version: Some(2)
            })
        );
        assert_eq!(a.name(), action::UNLOAD_MODEL);
        let e = Action::parse("fly", serde_json::json!({})).unwrap_err();
        assert!(e.message().contains("unknown action 'fly'"), "{e}");
        let e = Action::parse(action::TRAIN_ROUND, serde_json::json!({"job": 3})).unwrap_err();
        assert!(e.message().contains("malformed train_round body"), "{e}");
        // Health and stats take any body; ListActions lists each action once.
        assert_eq!(
            Action::parse(action::STATS, serde_json::json!({})).unwrap(),
            Action::Stats
        );
        let names: std::collections::HashSet<_> = ACTIONS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), ACTIONS.len());
        assert_eq!(ACTIONS.len(), 10);
        // linalg's ops are tagged by `op`, and an unknown op or field is refused.
        let a = Action::parse(
            action::LINALG,
            serde_json::json!({"op": "product", "job": "m", "partition": 2, "version": "v1", "k": 3}),
        )
        .unwrap();
        assert!(
            matches!(&a, Action::Linalg(super::super::Linalg::Product(p)) if p.k == 3 && p.on().partition == 2)
        );
        assert!(Action::parse(action::LINALG, serde_json::json!({"op": "invert"})).is_err());
        assert!(Action::parse(
            action::LINALG,
            serde_json::json!({"op": "eigen", "k": 1, "extra": true})
        )
        .is_err());
    }

    #[test]
    fn a_nan_loss_survives_json_as_null() {
        let req = TrainRound {
            job: "j".into(),
            partition: 1,
            version: "v".into(),
            round: 2,
            epochs: 1,
            steps: None,
            release: false,
            state_id: Some("r2".into()),
        };
        let mut result = TrainRoundResult::needs_state(&req);
        result.loss_last = f64::NAN;
        let text = serde_json::to_string(&result).unwrap();
        assert!(text.contains("\"loss_last\":null"), "{text}");
        let back: TrainRoundResult = serde_json::from_str(&text).unwrap();
        assert!(back.loss_last.is_nan() && back.loss_first == 0.0 && back.needs_state);
        // Results without `needs_state` (older servers) read as trained ones.
        let plain: TrainRoundResult = serde_json::from_str(
            r#"{"job":"j","partition":1,"round":2,"samples":5,"steps":1,"loss_first":0.5,"loss_last":0.25,"seconds":0.1}"#,
        )
        .unwrap();
        assert!(!plain.needs_state && plain.samples == 5);
    }
}

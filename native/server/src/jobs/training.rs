//! Training jobs: a job created with a model (a spec, TorchScript or a
//! blob) caches its partitions as training rows and runs `train_round` and
//! `evaluate` on them, keeping trainers and the round's input state between
//! rounds.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use bytes::Bytes;
use stoker_core::protocol::{
    CreateJob, Evaluate, EvaluateResult, PartitionKey, TrainRound, TrainRoundResult,
};
use stoker_core::{Error, ErrorKind, Result, State};
use stoker_engine::model::ModelSource;
use stoker_engine::{
    Budget, DeviceSpec, Fixed, OptimizerConfig, Rows, Setup, TrainOptions, Trainer,
};

use super::{lock, Cached, Job, Partition, Work};
use crate::model_root::ModelRoot;

pub(super) struct Training {
    /// The model, columns, loss, optimizer, device and seed (the same
    /// setup `stoker train` uses).
    setup: Setup,
    batch_size: usize,
    class_weights: Option<Vec<f64>>,
}

/// Trainers a job keeps between rounds (about the rounds a node runs at once).
const IDLE_TRAINERS: usize = 4;

impl Job {
    /// A training job as `req` asks (see [`Job::new`]).
    pub(super) fn for_training(
        req: CreateJob,
        model_blob: Option<Vec<u8>>,
        default_device: DeviceSpec,
        model_bytes: usize,
        root: &ModelRoot,
    ) -> Result<Job> {
        let source = ModelSource::one_of(
            req.spec.as_ref(),
            req.torchscript_path.as_deref(),
            model_blob,
            "create_job",
            |path| root.read(path),
        )?;
        let optimizer: OptimizerConfig = match req.optimizer {
            Some(v) => {
                serde_json::from_value(v).map_err(|e| Error::invalid(format!("optimizer: {e}")))?
            }
            None => OptimizerConfig::default(),
        };
        optimizer.validate()?;
        let device = match req.device {
            Some(d) => d.parse::<DeviceSpec>()?,
            None => default_device,
        }
        .resolve()?;
        if req.batch_size == 0 {
            return Err(Error::invalid("batch_size must be at least 1"));
        }
        if req.features.is_empty() {
            return Err(Error::invalid(
                "create_job needs at least one feature column",
            ));
        }
        if let Some(data) = &req.data {
            if data.is_empty() || data.contains('/') || *data == req.job {
                return Err(Error::invalid(format!(
                    "job '{}': data job '{data}' must be another job's name (non-empty, no '/')",
                    req.job
                )));
            }
        }
        Ok(Job {
            name: req.job,
            data: req.data,
            work: Work::Train(Box::new(Training {
                setup: Setup {
                    source,
                    features: req.features,
                    label: req.label,
                    loss: req.loss.as_deref().map(str::parse).transpose()?,
                    optimizer,
                    device,
                    seed: req.seed,
                    budget: Some(Budget::training(
                        model_bytes,
                        req.batch_size,
                        "--job-model-mb",
                    )),
                },
                batch_size: req.batch_size,
                class_weights: req.class_weights,
            })),
            resolved: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            round_input: Mutex::new(None),
        })
    }

    /// A training partition: its rows as device tensors, the job's layout
    /// and loss fixed by the first partition and later ones checked against
    /// them.
    pub(super) fn prepare_rows(
        &self,
        train: &Training,
        key: PartitionKey,
        first: &RecordBatch,
        batches: &[RecordBatch],
    ) -> Result<Partition> {
        let mine = train
            .setup
            .fix(std::slice::from_ref(first), Rows::Partition)?;
        // The first partition fixes the job's layout and loss, but only once
        // it has converted cleanly: a rejected put must not fix them.
        let fixed = match lock(&self.resolved).clone() {
            Some(fixed) => {
                if fixed.layout.width() != mine.layout.width() {
                    return Err(Error::invalid(format!(
                        "{key} has {} features per row, earlier partitions had {}",
                        mine.layout.width(),
                        fixed.layout.width()
                    )));
                }
                fixed
            }
            None => mine,
        };
        let task = train.setup.model(&fixed)?.task();
        let data = train
            .setup
            .dataset(&fixed, batches, task)
            .map_err(|e| e.context(key.to_string()))?;
        lock(&self.resolved).get_or_insert(fixed);
        Ok(Partition::new(
            key,
            data.rows(),
            data.bytes(),
            Cached::Rows(data),
        ))
    }

    /// The feature layout and loss the job's partitions fixed, if any arrived.
    pub fn fixed(&self) -> Option<Fixed> {
        lock(&self.resolved).clone()
    }

    /// Takes the layout and loss of the job whose partitions this one
    /// trains on (kept if already fixed: every put to that job is checked
    /// against the first).
    pub fn adopt(&self, fixed: Fixed) {
        lock(&self.resolved).get_or_insert(fixed);
    }

    /// Keeps `state` as the input state named `id`, replacing the last one.
    pub fn remember_input(&self, id: &str, state: &Bytes) {
        *lock(&self.round_input) = Some((id.to_string(), state.clone()));
    }

    /// Drops the trainers kept between rounds and the input state: a
    /// paused trial holds nothing but its definition.
    pub fn free(&self) {
        lock(&self.idle).clear();
        *lock(&self.round_input) = None;
    }

    /// The input state named `id`, if it is the one this job holds.
    pub fn input(&self, id: &str) -> Option<Bytes> {
        lock(&self.round_input)
            .as_ref()
            .filter(|(held, _)| held == id)
            .map(|(_, state)| state.clone())
    }

    /// Runs one local round on a partition: build the model, load the
    /// input state (or start from the job's seeded initial weights), train,
    /// and return the new state.
    pub fn train_round(
        &self,
        partition: &Partition,
        req: &TrainRound,
        input: Option<&Bytes>,
        cancel: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(TrainRoundResult, State)> {
        let train = self.training()?;
        let (mut trainer, fixed) = self.loaded(input)?;
        let opts = TrainOptions {
            epochs: req.epochs,
            max_steps: req.steps,
            batch_size: train.batch_size,
            shuffle: true,
            seed: train.setup.seed,
            round: req.round,
            partition: req.partition as u64,
            cancel: Some(cancel),
            class_weights: train.class_weights.clone(),
        };
        let data = partition.dataset()?;
        let report = trainer.train(&data, &opts, &mut |_| {})?;
        let state = train
            .setup
            .state(&trainer, &fixed, req.round, report.samples as u64)?;
        self.keep(trainer);
        let result = TrainRoundResult {
            job: self.name.clone(),
            partition: req.partition,
            round: req.round,
            samples: report.samples as u64,
            steps: report.steps as u64,
            loss_first: report.epochs.first().map(|e| e.loss).unwrap_or(f64::NAN),
            loss_last: report.final_loss(),
            seconds: report.seconds,
            learning_rate: Some(report.learning_rate),
            needs_state: false,
        };
        Ok((result, state))
    }

    /// Scores the input state (or the job's initial weights) on a cached
    /// partition: the model in eval mode, no gradients, nothing trained.
    pub fn evaluate(
        &self,
        partition: &Partition,
        req: &Evaluate,
        input: Option<&Bytes>,
    ) -> Result<EvaluateResult> {
        let started = Instant::now();
        let (mut trainer, _) = self.loaded(input)?;
        let data = partition.dataset()?;
        let evaluation = stoker_engine::evaluate(trainer.model_mut(), &data)
            .map_err(|e| e.context(format!("evaluating {}", partition.key)))?;
        self.keep(trainer);
        let metrics = evaluation
            .metrics()?
            .into_iter()
            .map(|(k, v)| (k, Some(v).filter(|v| v.is_finite())))
            .collect();
        Ok(EvaluateResult {
            job: self.name.clone(),
            partition: req.partition,
            round: req.round,
            rows: evaluation.rows,
            evaluation: Some(evaluation),
            metrics,
            seconds: started.elapsed().as_secs_f64(),
            needs_state: false,
        })
    }

    /// A trainer holding the input state (a kept one when there is one), or
    /// the job's seeded initial weights when there is no input, with the
    /// job's fixed layout and loss.
    fn loaded(&self, input: Option<&Bytes>) -> Result<(Trainer, Fixed)> {
        let setup = &self.training()?.setup;
        let fixed = lock(&self.resolved)
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::CacheMiss, "job has no partitions yet"))?;
        let trainer = match input {
            Some(bytes) => {
                let state = State::from_shared(bytes)?;
                let mut trainer = match self.reusable() {
                    Some(t) => t,
                    None => setup.trainer(&fixed)?,
                };
                trainer
                    .load_state(&state)
                    .map_err(|e| e.context("input state"))?;
                trainer
            }
            // Round 0 starts from the job's seeded initial weights.
            None => setup.trainer(&fixed)?,
        };
        Ok((trainer, fixed))
    }

    /// An idle trainer of this job, if one is kept. Only built-in networks are
    /// kept (see [`Job::keep`]): every
    /// tensor they hold is a parameter or optimizer slot, which loading a
    /// state overwrites; a TorchScript module may hold buffers no state has.
    fn reusable(&self) -> Option<Trainer> {
        lock(&self.idle).pop()
    }

    fn keep(&self, trainer: Trainer) {
        if trainer.model().network().is_builtin() {
            let mut idle = lock(&self.idle);
            if idle.len() < IDLE_TRAINERS {
                idle.push(trainer);
            }
        }
    }

    /// The job's initial state (round 0 weights from its seed), once its
    /// layout is known.
    pub fn initial_state(&self) -> Result<Vec<u8>> {
        let fixed = lock(&self.resolved).clone().ok_or_else(|| {
            Error::not_found(format!(
                "job '{}' has no state before its first partition",
                self.name
            ))
        })?;
        self.training()?
            .setup
            .trainer(&fixed)?
            .state(0, 0)?
            .to_bytes()
    }

    /// The job's training setup; a matrix job has none.
    fn training(&self) -> Result<&Training> {
        match &self.work {
            Work::Train(t) => Ok(t),
            Work::Matrix(_) => Err(Error::invalid(format!(
                "job '{}' is a matrix job (linalg); it does not train or evaluate a model",
                self.name
            ))),
        }
    }
}

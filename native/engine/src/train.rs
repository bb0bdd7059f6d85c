//! Local training: epochs of shuffled mini-batches over a [`Dataset`], and
//! the state (parameters + optimizer) going in and out of a round.

use std::time::Instant;

use stoker_core::{Error, Loss, Result, State, Task};
use tch::{Kind, Reduction, Tensor};

use crate::data::Dataset;
use crate::model::Model;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::rng::Rng;
use crate::torch::internal;

/// Serialises training calls whose networks draw from libtorch's global
/// random generator (dropout), so seeded runs repeat exactly.
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How one call to [`Trainer::train`] runs (one local round in Spark).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps, if set (overrides epochs).
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub shuffle: bool,
    /// Job seed; with `round` and `partition` it fixes shuffling and dropout.
    pub seed: u64,
    pub round: u64,
    pub partition: u64,
    /// Checked between steps: when set, training stops with an
    /// `unavailable` error (the caller went away).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Per-class weights of the training loss (imbalanced labels): one per
    /// class of a classifier (two for a binary one), none for regression.
    pub class_weights: Option<Vec<f64>>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 1,
            max_steps: None,
            batch_size: 256,
            shuffle: true,
            seed: 42,
            round: 0,
            partition: 0,
            cancel: None,
            class_weights: None,
        }
    }
}

/// Reported after each epoch, for progress lines and history.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub epochs: usize,
    /// Mean training loss over the epoch's samples.
    pub loss: f64,
    pub rows: usize,
    pub seconds: f64,
}

impl EpochReport {
    pub fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Summary of one [`Trainer::train`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
    pub steps: usize,
    /// Rows in the dataset (the state's weight when averaging).
    pub samples: usize,
    pub seconds: f64,
    /// The learning rate of the last step (the schedule's, at the round's end).
    pub learning_rate: f64,
}

impl TrainReport {
    /// Loss of the last epoch.
    pub fn final_loss(&self) -> f64 {
        self.epochs.last().map(|e| e.loss).unwrap_or(f64::NAN)
    }
}

/// A model with its optimizer.
pub struct Trainer {
    model: Model,
    optimizer: Optimizer,
}

impl Trainer {
    pub fn new(model: Model, config: OptimizerConfig) -> Result<Trainer> {
        let optimizer = Optimizer::new(config, model.network().parameters())?;
        Ok(Trainer { model, optimizer })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    pub fn into_model(self) -> Model {
        self.model
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Parameters, buffers (BatchNorm statistics) and optimizer state, with metadata.
    pub fn state(&self, round: u64, samples: u64) -> Result<State> {
        let mut tensors = self.model.export_weights()?;
        tensors.extend(self.optimizer.export(self.model.network().parameters())?);
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut meta = self.model.state_meta(round, samples);
        meta.extra.insert(
            "optimizer".into(),
            serde_json::to_string(self.optimizer.config()).unwrap_or_default(),
        );
        Ok(State { meta, tensors })
    }

    /// Loads parameters and, when present, optimizer state.
    pub fn load_state(&mut self, state: &State) -> Result<()> {
        self.model.load_weights(state)?;
        self.optimizer
            .import(self.model.network().parameters(), state)
    }

    /// Trains on `data`; `progress` is called after every epoch.
    pub fn train(
        &mut self,
        data: &Dataset,
        opts: &TrainOptions,
        progress: &mut dyn FnMut(&EpochReport),
    ) -> Result<TrainReport> {
        if opts.batch_size == 0 {
            return Err(Error::invalid("batch size must be at least 1"));
        }
        if data.width() != self.model.input_width() {
            return Err(Error::invalid(format!(
                "model expects {} features per row, the data has {}",
                self.model.input_width(),
                data.width()
            )));
        }
        let rows = data.rows();
        if rows == 0 {
            return Err(Error::invalid("no rows to train on"));
        }
        // Dropout draws from libtorch's process-wide generator. Seeding it per
        // (job, round, partition) makes reruns repeat, as long as no other
        // training consumes it meanwhile: networks that draw from it hold
        // RNG_LOCK for the whole call (others train concurrently).
        let _rng = if self.model.network().uses_torch_rng() {
            Some(
                RNG_LOCK
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            )
        } else {
            None
        };
        tch::manual_seed(
            Rng::derive(opts.seed, &[opts.round, opts.partition, 0xd0]).next_u64() as i64,
        );
        let device = self.model.device();
        let weights = self.class_weights(opts.class_weights.as_deref())?;
        let started = Instant::now();
        let mut steps = 0;
        let mut epochs = Vec::new();
        let epoch_count = match opts.max_steps {
            Some(s) => s.div_ceil(rows.div_ceil(opts.batch_size)).max(1),
            None => opts.epochs,
        };
        // The schedule follows progress through the round (see schedule.rs).
        let schedule = self.optimizer.config().schedule.clone();
        let round_steps = opts
            .max_steps
            .unwrap_or(epoch_count * rows.div_ceil(opts.batch_size))
            .max(1);
        for epoch in 0..epoch_count {
            let epoch_start = Instant::now();
            let order = if opts.shuffle {
                let perm = Rng::derive(opts.seed, &[opts.round, opts.partition, epoch as u64])
                    .permutation(rows);
                Some(
                    Tensor::f_from_slice(&perm)
                        .and_then(|t| t.f_to_device(device))
                        .map_err(internal("shuffle order"))?,
                )
            } else {
                None
            };
            // Loss is summed on the device and read once per epoch: reading
            // it every step would synchronise the GPU every step.
            let mut loss_sum = Tensor::f_zeros([], (Kind::Double, device))
                .map_err(internal("loss accumulator"))?;
            let mut seen = 0usize;
            let mut start = 0usize;
            while start < rows {
                if opts.max_steps.is_some_and(|m| steps >= m) {
                    break;
                }
                if opts
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
                {
                    return Err(Error::new(
                        stoker_core::ErrorKind::Unavailable,
                        "training cancelled: the caller went away",
                    ));
                }
                let len = opts.batch_size.min(rows - start);
                let (x, y) = batch(data, order.as_ref(), start, len)?;
                if !schedule.is_constant() {
                    let t = opts.round as f64 + steps as f64 / round_steps as f64;
                    self.optimizer.set_lr_scale(schedule.factor(t));
                }
                let loss = self.step(&x, &y, weights.as_ref())?;
                loss_sum = loss_sum
                    .f_add(
                        &loss
                            .f_detach()
                            .and_then(|l| l.f_mul_scalar(len as f64))
                            .map_err(internal("loss"))?,
                    )
                    .map_err(internal("loss accumulator"))?;
                seen += len;
                steps += 1;
                start += len;
            }
            if seen == 0 {
                break;
            }
            let loss = loss_sum
                .f_double_value(&[])
                .map_err(internal("reading loss"))?
                / seen as f64;
            if !loss.is_finite() {
                return Err(Error::invalid(format!(
                    "training diverged: loss is {loss} in epoch {}; lower the learning rate or scale the features",
                    epoch + 1
                )));
            }
            let report = EpochReport {
                epoch: epoch + 1,
                epochs: epoch_count,
                loss,
                rows: seen,
                seconds: epoch_start.elapsed().as_secs_f64(),
            };
            progress(&report);
            epochs.push(report);
        }
        Ok(TrainReport {
            epochs,
            steps,
            samples: rows,
            seconds: started.elapsed().as_secs_f64(),
            learning_rate: self.optimizer.learning_rate(),
        })
    }

    /// The class weights as a device tensor, checked against the task.
    fn class_weights(&self, weights: Option<&[f64]>) -> Result<Option<Tensor>> {
        let Some(w) = weights else { return Ok(None) };
        let task = self.model.task();
        if !task.is_classifier() {
            return Err(Error::invalid(
                "class weights apply to classifiers; this model is a regression",
            ));
        }
        if w.len() != task.classes() {
            return Err(Error::invalid(format!(
                "{} class weights for a model with {} classes",
                w.len(),
                task.classes()
            )));
        }
        if w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) || w.iter().all(|v| *v == 0.0) {
            return Err(Error::invalid(format!(
                "class weights must be non-negative and not all zero, got {w:?}"
            )));
        }
        let w: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        Tensor::f_from_slice(&w)
            .and_then(|t| t.f_to_device(self.model.device()))
            .map(Some)
            .map_err(internal("class weights"))
    }

    /// One optimizer step on a batch; returns the batch's mean loss.
    fn step(&mut self, x: &Tensor, y: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
        let out = self.model.logits(x, true)?;
        let loss = match weights {
            Some(w) => weighted_loss(self.model.loss(), &out, y, w)?,
            None => loss(self.model.loss(), self.model.task(), &out, y)?,
        };
        let params = self.model.network().parameters();
        self.optimizer.zero_grad(params)?;
        loss.f_backward().map_err(internal("backward"))?;
        self.optimizer.step(params)?;
        Ok(loss)
    }
}

fn batch(
    data: &Dataset,
    order: Option<&Tensor>,
    start: usize,
    len: usize,
) -> Result<(Tensor, Tensor)> {
    let r = match order {
        Some(order) => order.f_narrow(0, start as i64, len as i64).and_then(|idx| {
            Ok((
                data.features.f_index_select(0, &idx)?,
                data.labels.f_index_select(0, &idx)?,
            ))
        }),
        None => data
            .features
            .f_narrow(0, start as i64, len as i64)
            .and_then(|x| Ok((x, data.labels.f_narrow(0, start as i64, len as i64)?))),
    };
    r.map_err(internal("selecting a batch"))
}

/// The loss of a batch with per-class weights: cross-entropy's weighted mean
/// (PyTorch's `weight=`, normalised by the rows' weights), or for binary
/// cross-entropy each row weighted by its class's weight, normalised alike.
fn weighted_loss(loss: Loss, out: &Tensor, y: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let r = match loss {
        Loss::CrossEntropy => {
            out.f_cross_entropy_loss::<&Tensor>(y, Some(weights), Reduction::Mean, -100, 0.0)
        }
        Loss::BinaryCrossEntropy => (|| {
            let rows = weights.f_index_select(0, &y.f_to_kind(Kind::Int64)?)?;
            let per_row = out
                .f_view([-1])?
                .f_binary_cross_entropy_with_logits::<&Tensor>(
                    y,
                    Some(&rows),
                    None,
                    Reduction::Sum,
                )?;
            per_row.f_div(&rows.f_sum(Kind::Float)?)
        })(),
        Loss::Mse => return Err(Error::invalid("class weights apply to classifiers")),
    };
    r.map_err(internal(format!("computing weighted {loss} loss")))
}

/// The mean loss of a batch. `out` is `[rows, outputs]`.
pub fn loss(loss: Loss, task: Task, out: &Tensor, y: &Tensor) -> Result<Tensor> {
    let r = match (loss, task) {
        (Loss::CrossEntropy, _) => {
            out.f_cross_entropy_loss::<Tensor>(y, None, Reduction::Mean, -100, 0.0)
        }
        (Loss::BinaryCrossEntropy, _) => out.f_view([-1]).and_then(|o| {
            o.f_binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::Mean)
        }),
        (Loss::Mse, _) => out
            .f_view([-1])
            .and_then(|o| o.f_mse_loss(y, Reduction::Mean)),
    };
    r.map_err(internal(format!("computing {loss} loss")))
}

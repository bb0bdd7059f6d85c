//! DoAction: each action of [`Action`] run against the registries. The
//! request arrives parsed (handler.rs); a match on the enum, not on
//! strings, so an action added to core's protocol is a compile error here
//! until it is handled. Answers are envelopes written as buffers, so a
//! trained state goes out as the tensors the engine exported.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use stoker_core::protocol::{
    Action, CreateJob, Envelope, Evaluate, EvaluateResult, ExportModel, PartitionKey,
    RegisterModel, TrainRound, TrainRoundResult,
};
use stoker_core::{Error, ErrorKind, Result, State};
use stoker_engine::model::ModelSource;
use stoker_engine::Budget;
use stoker_wire::outgoing::ActionResult;

use crate::jobs::Job;
use crate::service::{blocking, Service};
use crate::stats::Snapshot;

/// The blobs of an action body, left where they arrived: a state can be
/// hundreds of MB, so one is copied only where a handler needs it owned.
pub struct Blobs {
    body: Bytes,
    ranges: Vec<(String, Range<usize>)>,
}

impl Blobs {
    /// The blobs [`Envelope::split`] found in `body`.
    pub fn new(body: Bytes, ranges: Vec<(String, Range<usize>)>) -> Blobs {
        Blobs { body, ranges }
    }

    pub fn get(&self, name: &str) -> Option<Bytes> {
        self.ranges
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| self.body.slice(r.clone()))
    }

    fn owned(&self, name: &str) -> Option<Vec<u8>> {
        self.get(name).map(|b| b.to_vec())
    }
}

pub(crate) fn answer(json: serde_json::Value) -> Result<Vec<ActionResult>> {
    Ok(vec![ActionResult::one(Envelope::new(json)?.encode()?)])
}

fn json_of(value: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::internal(format!("encoding JSON: {e}")))
}

/// The input state of a `train_round` or `evaluate`: the `state` blob (kept
/// under `state_id` for the round's other requests), the state kept under
/// `state_id`, or none (the job's initial weights). `None` when the request
/// names a state this server does not hold and sent none: the caller must
/// send it.
fn input_state(job: &Job, state_id: Option<&str>, blobs: &Blobs) -> Option<Option<Bytes>> {
    match (state_id, blobs.get("state")) {
        (Some(id), Some(state)) => {
            job.remember_input(id, &state);
            Some(Some(state))
        }
        (Some(id), None) => job.input(id).map(Some),
        (None, state) => Some(state),
    }
}

impl Service {
    pub async fn action(
        self: Arc<Self>,
        action: Action,
        blobs: Blobs,
    ) -> Result<Vec<ActionResult>> {
        match action {
            Action::Health => answer(serde_json::json!({
                "status": "serving",
                "version": env!("CARGO_PKG_VERSION"),
                "device": self.device.resolve().map(stoker_engine::device::name).unwrap_or_else(|e| e.to_string()),
                "cuda_devices": stoker_engine::device::cuda_devices(),
            })),
            Action::Stats => answer(Snapshot::of(&self).to_json()),
            Action::CreateJob(req) => self.create_job(req, blobs).await,
            Action::TrainRound(req) => self.train_round(req, blobs).await,
            Action::Evaluate(req) => self.evaluate(req, blobs).await,
            Action::DropJob(req) => {
                self.jobs.drop_job(&req.name)?;
                answer(serde_json::json!({"dropped": req.name}))
            }
            Action::RegisterModel(req) => self.register_model(req, blobs).await,
            Action::UnloadModel(req) => {
                self.models.unload(&req.name, req.version)?;
                answer(serde_json::json!({"unloaded": req.name, "version": req.version}))
            }
            Action::ExportModel(req) => export_model(req, blobs, self.models.budget()).await,
            Action::Linalg(req) => self.linalg(req, blobs).await,
        }
    }

    async fn create_job(&self, req: CreateJob, blobs: Blobs) -> Result<Vec<ActionResult>> {
        let keep = req.keep_existing;
        let model = blobs.owned("model");
        let (device, budget) = (self.device, self.jobs.model_bytes());
        let root = self.model_root.clone();
        let job = blocking(move || Job::new(req, model, device, budget, &root)).await?;
        let name = job.name.clone();
        let created = self.jobs.create(job, keep);
        if created {
            tracing::info!(job = %name, "created job");
        }
        answer(serde_json::json!({"job": name, "created": created}))
    }

    async fn train_round(
        self: Arc<Self>,
        req: TrainRound,
        blobs: Blobs,
    ) -> Result<Vec<ActionResult>> {
        let (job, data) = self.jobs.with_data(&req.job)?;
        let Some(state) = input_state(&job, req.state_id.as_deref(), &blobs) else {
            return answer(json_of(&TrainRoundResult::needs_state(&req))?);
        };
        let key = PartitionKey::train(data, req.partition, req.version.clone());
        let part = self.jobs.partition(&key)?;
        let release = req.release;
        let releasing = job.clone();
        let started = std::time::Instant::now();
        // If the client goes away, this future is dropped and the guard
        // stops the round at its next step instead of letting it hold the
        // partition (and the device) to the end.
        let cancel = CancelOnDrop::new();
        let flag = cancel.flag();
        let me = self.clone();
        let trained = blocking(move || {
            // The input state is read where it arrived and the new one goes
            // out as the tensors the engine exported: the reply is the
            // envelope's head, then those buffers.
            let r =
                job.train_round(&part, &req, state.as_ref(), flag)
                    .and_then(|(result, state)| {
                        let json = serde_json::to_value(&result)
                            .map_err(|e| Error::internal(format!("encoding JSON: {e}")))?;
                        let (head, tensors) = state.to_chunks()?;
                        let size = head.len() + tensors.iter().map(Bytes::len).sum::<usize>();
                        let mut out = Envelope::prefix(&json, &[("state", size)])?;
                        out.extend_from_slice(&head);
                        let chunks = std::iter::once(Bytes::from(out)).chain(tensors);
                        Ok((result, ActionResult(chunks.collect())))
                    });
            if r.as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::Unavailable)
            {
                me.counters
                    .train_rounds_abandoned
                    .fetch_add(1, Ordering::Relaxed);
            }
            r
        })
        .await;
        // The round is over either way; only a dropped caller cancels.
        cancel.disarm();
        let (result, out) = trained?;
        if release {
            self.jobs.release_after(&releasing, &key);
        }
        self.counters.train_rounds.fetch_add(1, Ordering::Relaxed);
        self.counters
            .train_latency
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(job = %result.job, partition = result.partition, round = result.round,
            samples = result.samples, loss = result.loss_last, seconds = result.seconds, "trained round");
        Ok(vec![out])
    }

    async fn evaluate(self: Arc<Self>, req: Evaluate, blobs: Blobs) -> Result<Vec<ActionResult>> {
        let (job, data) = self.jobs.with_data(&req.job)?;
        let Some(state) = input_state(&job, req.state_id.as_deref(), &blobs) else {
            return answer(json_of(&EvaluateResult::needs_state(&req))?);
        };
        let key = PartitionKey {
            job: data,
            split: req.split,
            partition: req.partition,
            version: req.version.clone(),
        };
        let part = self.jobs.partition(&key)?;
        let release = req.release;
        let releasing = job.clone();
        let result = blocking(move || job.evaluate(&part, &req, state.as_ref())).await?;
        if release {
            self.jobs.release_after(&releasing, &key);
        }
        self.counters.evaluations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(job = %result.job, partition = result.partition, round = result.round,
            rows = result.rows, seconds = result.seconds, "evaluated");
        answer(json_of(&result)?)
    }

    async fn register_model(
        self: Arc<Self>,
        req: RegisterModel,
        blobs: Blobs,
    ) -> Result<Vec<ActionResult>> {
        let (model, state) = (blobs.owned("model"), blobs.owned("state"));
        let me = self.clone();
        let (name, limit) = (req.name.clone(), self.model_load_timeout);
        let register = blocking(move || me.models.register(req, model, state, &me.model_root));
        // libtorch cannot interrupt a forward, so a model whose probe never
        // returns keeps its blocking thread; the request still answers, and
        // the count says how many threads are held that way.
        let served = match tokio::time::timeout(limit, register).await {
            Ok(served) => served?,
            Err(_) => {
                self.counters
                    .model_loads_timed_out
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Error::invalid(format!(
                    "model '{name}' did not load within {} s: its forward on one probe row \
                     did not return (a TorchScript loop that never ends?); raise \
                     stoker serve --model-load-timeout-s if it is only slow",
                    limit.as_secs()
                )));
            }
        };
        tracing::info!(model = %served.name, version = served.version, "registered model");
        answer(serde_json::json!({
            "name": served.name, "version": served.version, "task": served.task,
            "features": served.features,
        }))
    }
}

async fn export_model(req: ExportModel, blobs: Blobs, budget: Budget) -> Result<Vec<ActionResult>> {
    let model = blobs.owned("model");
    let state = blobs.get("state").ok_or_else(|| {
        Error::invalid("export_model needs the trained state as its 'state' blob")
    })?;
    let archive = blocking(move || {
        let source = ModelSource::one_of(req.spec.as_ref(), None, model, "export_model", |_| {
            Err(Error::invalid(
                "export_model takes the model as 'spec' or a 'model' blob",
            ))
        })?;
        stoker_engine::model::export_torchscript(
            &source,
            &State::from_shared(&state)?,
            Some(&budget),
        )
    })
    .await?;
    let bytes = archive.len();
    let out =
        Envelope::new(serde_json::json!({ "bytes": bytes }))?.with_blob("torchscript", archive);
    Ok(vec![ActionResult::one(out.encode()?)])
}

/// Sets its flag when dropped unless disarmed: tells blocking work that the
/// request it serves was abandoned.
struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl CancelOnDrop {
    fn new() -> Self {
        CancelOnDrop {
            flag: Arc::new(AtomicBool::new(false)),
            armed: true,
        }
    }

    fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Relaxed);
            tracing::info!("a train_round's caller went away; stopping the round");
        }
    }
}

//! The Flight service: descriptors and actions of docs/protocol.md mapped
//! onto the job and model registries. Every handler returns a stoker error
//! mapped to its gRPC code; compute runs on blocking threads so the gRPC
//! runtime keeps serving other requests meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, PutResult, Ticket};
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use stoker_core::protocol::{
    action, CreateJob, Envelope, ExportModel, ModelKey, Named, PartitionKey, RegisterModel,
    TrainRound, TrainRoundResult, JOBS_PATH, MODELS_PATH,
};
use stoker_core::{Error, ErrorKind, Result, State};
use stoker_engine::DeviceSpec;
use stoker_wire::outgoing::{encode_batches, ActionResult, Outgoing};
use tonic::{Request, Status};

use super::jobs::{Job, Jobs};
use super::metrics::{Histogram, LATENCY_BOUNDS};
use super::models::{Models, ServedModel};
use stoker_core::predictions::{append, OutputColumns};
use stoker_wire::status::to_status;

/// Shared server state.
pub struct Service {
    pub jobs: Jobs,
    pub models: Models,
    pub device: DeviceSpec,
    pub token: Option<String>,
    pub max_message_bytes: usize,
    pub counters: Counters,
}

pub struct Counters {
    pub rows_in: AtomicU64,
    pub rows_predicted: AtomicU64,
    pub train_rounds: AtomicU64,
    /// Rounds stopped early because their caller went away.
    pub train_rounds_abandoned: AtomicU64,
    pub requests_failed: AtomicU64,
    pub exchange_latency: Histogram,
    pub train_latency: Histogram,
    pub put_latency: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            rows_in: AtomicU64::new(0),
            rows_predicted: AtomicU64::new(0),
            train_rounds: AtomicU64::new(0),
            train_rounds_abandoned: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            exchange_latency: Histogram::new(LATENCY_BOUNDS),
            train_latency: Histogram::new(LATENCY_BOUNDS),
            put_latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

pub(super) type Stream<T> = BoxStream<'static, std::result::Result<T, Status>>;

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("worker thread failed: {e}")))?
}

pub(super) fn flight_error(e: FlightError) -> Error {
    stoker_wire::status::from_flight(e)
}

/// The flight data of a DoPut or DoExchange: the first message's
/// descriptor, and the whole stream (first message included) for decoding.
type DataStream = BoxStream<'static, std::result::Result<FlightData, FlightError>>;

async fn split_descriptor(
    mut input: Stream<FlightData>,
) -> Result<(Option<FlightDescriptor>, DataStream)> {
    let first = input
        .next()
        .await
        .transpose()
        .map_err(|s| stoker_wire::status::from_status(&s))?;
    let rest = input.map_err(FlightError::from);
    Ok(match first {
        // Some clients (pyarrow's DoExchange) open with a message that
        // carries only the descriptor; it holds no Arrow data to decode.
        Some(f) if f.data_header.is_empty() && f.data_body.is_empty() => {
            (f.flight_descriptor, rest.boxed())
        }
        Some(f) => (
            f.flight_descriptor.clone(),
            stream::once(async { Ok(f) }).chain(rest).boxed(),
        ),
        None => (None, rest.boxed()),
    })
}

/// Reads and drops a DoPut stream (the `_echo` transport check).
async fn drain(data: DataStream) -> Result<PutResult> {
    let mut decoded = FlightRecordBatchStream::new_from_flight_data(data);
    let (mut rows, mut bytes) = (0usize, 0usize);
    while let Some(batch) = decoded.next().await {
        let batch = batch.map_err(flight_error)?;
        rows += batch.num_rows();
        bytes += batch.get_array_memory_size();
    }
    let meta = serde_json::json!({"rows": rows, "bytes": bytes});
    Ok(PutResult {
        app_metadata: Bytes::from(meta.to_string()),
    })
}

fn descriptor_path(d: Option<&FlightDescriptor>) -> Result<Vec<String>> {
    let d = d.ok_or_else(|| Error::invalid("the first message carries no flight descriptor"))?;
    if d.path.is_empty() {
        return Err(Error::invalid(
            "the flight descriptor has no path; see docs/protocol.md",
        ));
    }
    Ok(d.path.clone())
}

impl Service {
    pub(super) fn authorize<T>(&self, req: &Request<T>) -> Result<()> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Error::new(ErrorKind::Unauthenticated, "wrong token")),
            None => Err(Error::new(
                ErrorKind::Unauthenticated,
                "this server needs a token: send the header 'authorization: Bearer <token>'",
            )),
        }
    }

    pub(super) fn fail(&self, e: Error) -> Status {
        self.counters
            .requests_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(kind = %e.kind(), error = %e.message(), "request failed");
        to_status(e)
    }

    fn tier_stats(&self) -> serde_json::Map<String, serde_json::Value> {
        let m = &self.models;
        [
            ("device", &m.device_tier),
            ("host", &m.host_tier),
            ("disk", &m.disk_tier),
        ]
        .iter()
        .map(|(name, t)| {
            let mut v = serde_json::json!({
                "hits": t.hits.load(Ordering::Relaxed),
                "misses": t.misses.load(Ordering::Relaxed),
                "evictions": t.evictions.load(Ordering::Relaxed),
            });
            if *name == "host" {
                let (used, budget) = m.host_bytes();
                v["bytes"] = used.into();
                v["budget_bytes"] = budget.into();
            }
            (name.to_string(), v)
        })
        .collect()
    }

    fn stats_json(&self) -> serde_json::Value {
        let c = &self.counters;
        serde_json::json!({
            "rows_in": c.rows_in.load(Ordering::Relaxed),
            "rows_predicted": c.rows_predicted.load(Ordering::Relaxed),
            "train_rounds": c.train_rounds.load(Ordering::Relaxed),
            "train_rounds_abandoned": c.train_rounds_abandoned.load(Ordering::Relaxed),
            "requests_failed": c.requests_failed.load(Ordering::Relaxed),
            "cache": {
                "bytes": self.jobs.cached_bytes(),
                "budget_bytes": self.jobs.budget(),
                "evictions": self.jobs.evictions.load(Ordering::Relaxed),
            },
            "jobs": self.jobs.list().iter().map(|j| serde_json::json!({
                "name": j.name, "partitions": j.partitions, "rows": j.rows, "bytes": j.bytes,
            })).collect::<Vec<_>>(),
            "models": self.models.list().iter().map(|m| {
                let b = &m.batching;
                serde_json::json!({
                    "name": m.name, "version": m.version, "task": m.task,
                    "features": m.features, "bytes": m.param_bytes,
                    "host_bytes": m.artifact_bytes(),
                    "tier": m.tier().as_str(),
                    "requests": b.requests.load(Ordering::Relaxed),
                    "forward_passes": b.forward_passes.load(Ordering::Relaxed),
                    "rows": b.rows.load(Ordering::Relaxed),
                    "max_pass_rows": b.max_pass_rows.load(Ordering::Relaxed),
                    "max_pass_requests": b.max_pass_requests.load(Ordering::Relaxed),
                })
            }).collect::<Vec<_>>(),
            "tiers": self.tier_stats(),
        })
    }

    pub(super) async fn action(
        self: Arc<Self>,
        kind: String,
        body: Bytes,
    ) -> Result<Vec<ActionResult>> {
        // Blobs stay slices of the request (a state can be hundreds of MB):
        // one is copied only where a handler needs it owned.
        let (json, ranges) = Envelope::split(&body)?;
        let env = Envelope {
            json,
            blobs: Vec::new(),
        };
        let blob = |name: &str| -> Option<Bytes> {
            ranges
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| body.slice(r.clone()))
        };
        let one =
            |e: Envelope| -> Result<Vec<ActionResult>> { Ok(vec![ActionResult::one(e.encode()?)]) };
        match kind.as_str() {
            action::HEALTH => one(Envelope::new(serde_json::json!({
                "status": "serving",
                "version": env!("CARGO_PKG_VERSION"),
                "device": self.device.resolve().map(stoker_engine::device::name).unwrap_or_else(|e| e.to_string()),
                "cuda_devices": stoker_engine::device::cuda_devices(),
            }))?),
            action::STATS => one(Envelope::new(self.stats_json())?),
            action::CREATE_JOB => {
                let req: CreateJob = env.parse(action::CREATE_JOB)?;
                let keep = req.keep_existing;
                let blob = blob("model").map(|b| b.to_vec());
                let device = self.device;
                let job = blocking(move || Job::new(req, blob, device)).await?;
                let name = job.name.clone();
                let created = self.jobs.create(job, keep);
                if created {
                    tracing::info!(job = %name, "created job");
                }
                one(Envelope::new(
                    serde_json::json!({"job": name, "created": created}),
                )?)
            }
            action::TRAIN_ROUND => {
                let req: TrainRound = env.parse(action::TRAIN_ROUND)?;
                let job = self.jobs.get(&req.job)?;
                let state = match (req.state_id.as_deref(), blob("state")) {
                    (Some(id), Some(state)) => {
                        job.remember_input(id, &state);
                        Some(state)
                    }
                    (Some(id), None) => match job.input(id) {
                        Some(state) => Some(state),
                        None => {
                            let answer = TrainRoundResult::needs_state(&req);
                            return one(Envelope::new(answer)?);
                        }
                    },
                    (None, state) => state,
                };
                let key = PartitionKey {
                    job: req.job.clone(),
                    partition: req.partition,
                    version: req.version.clone(),
                };
                let part = self.jobs.partition(&key)?;
                let release = req.release;
                let started = std::time::Instant::now();
                // If the client goes away, this future is dropped and the
                // guard stops the round at its next step instead of letting
                // it hold the partition (and the device) to the end.
                let cancel = CancelOnDrop::new();
                let flag = cancel.flag();
                let me = self.clone();
                let trained = blocking(move || {
                    // The input state is read where it arrived and the new
                    // one goes out as the tensors the engine exported: the
                    // reply is the envelope's head, then those buffers.
                    let r = job.train_round(&part, &req, state.as_ref(), flag).and_then(
                        |(result, state)| {
                            let json = serde_json::to_value(&result)
                                .map_err(|e| Error::internal(format!("encoding JSON: {e}")))?;
                            let (head, tensors) = state.to_chunks()?;
                            let size = head.len() + tensors.iter().map(Bytes::len).sum::<usize>();
                            let mut out = Envelope::prefix(&json, &[("state", size)])?;
                            out.extend_from_slice(&head);
                            let chunks = std::iter::once(Bytes::from(out)).chain(tensors);
                            Ok((result, ActionResult(chunks.collect())))
                        },
                    );
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
                    self.jobs.release(&key);
                }
                self.counters.train_rounds.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .train_latency
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(job = %result.job, partition = result.partition, round = result.round,
                    samples = result.samples, loss = result.loss_last, seconds = result.seconds, "trained round");
                Ok(vec![out])
            }
            action::DROP_JOB => {
                let req: Named = env.parse(action::DROP_JOB)?;
                self.jobs.drop_job(&req.name)?;
                one(Envelope::new(serde_json::json!({"dropped": req.name}))?)
            }
            action::REGISTER_MODEL => {
                let req: RegisterModel = env.parse(action::REGISTER_MODEL)?;
                let (model, state) = (
                    blob("model").map(|b| b.to_vec()),
                    blob("state").map(|b| b.to_vec()),
                );
                let me = self.clone();
                let served = blocking(move || me.models.register(req, model, state)).await?;
                tracing::info!(model = %served.name, version = served.version, "registered model");
                one(Envelope::new(serde_json::json!({
                    "name": served.name, "version": served.version, "task": served.task,
                    "features": served.features,
                }))?)
            }
            action::UNLOAD_MODEL => {
                let req: Named = env.parse(action::UNLOAD_MODEL)?;
                self.models.unload(&req.name, req.version)?;
                one(Envelope::new(
                    serde_json::json!({"unloaded": req.name, "version": req.version}),
                )?)
            }
            action::EXPORT_MODEL => {
                let req: ExportModel = env.parse(action::EXPORT_MODEL)?;
                let model = blob("model").map(|b| b.to_vec());
                let state = blob("state").ok_or_else(|| {
                    Error::invalid("export_model needs the trained state as its 'state' blob")
                })?;
                let archive = blocking(move || {
                    let source =
                        super::model_source(req.spec.as_ref(), None, model, action::EXPORT_MODEL)?;
                    stoker_engine::model::export_torchscript(&source, &State::from_shared(&state)?)
                })
                .await?;
                let bytes = archive.len();
                one(Envelope::new(serde_json::json!({ "bytes": bytes }))?
                    .with_blob("torchscript", archive))
            }
            other => Err(Error::invalid(format!(
                "unknown action '{other}'; ListActions names the actions this server knows"
            ))),
        }
    }

    pub(super) async fn put(self: Arc<Self>, input: Stream<FlightData>) -> Result<PutResult> {
        let started = std::time::Instant::now();
        let (descriptor, data) = split_descriptor(input).await?;
        let path = descriptor_path(descriptor.as_ref())?;
        if super::transport::is_echo(&path) {
            return drain(data).await;
        }
        let key = PartitionKey::from_path(&path)?;
        // Fail before reading any data when the job does not exist.
        let job = self.jobs.get(&key.job)?;
        let mut decoded = FlightRecordBatchStream::new_from_flight_data(data);
        let mut batches: Vec<RecordBatch> = Vec::new();
        let mut bytes = 0usize;
        let budget = self.jobs.budget();
        // Partitions arriving at once share the budget while they stream in:
        // eight executors uploading together cannot hold eight budgets.
        let mut reserved = self.jobs.reserve_incoming();
        while let Some(batch) = decoded.next().await {
            let batch = batch.map_err(flight_error)?;
            // Logical sizes: decoded IPC arrays share one message buffer, so
            // get_array_memory_size would count it once per column.
            let mut size = 0;
            for c in batch.columns() {
                size += c.to_data().get_slice_memory_size().map_err(Error::from)?;
            }
            bytes += size;
            if bytes > budget || !reserved.add(size) {
                return Err(Error::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "partition {} of job '{}' does not fit the cache budget of {budget} bytes (--cache-mb) \
                         beside the partitions arriving at the same time",
                        key.partition, key.job
                    ),
                ));
            }
            batches.push(batch);
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let k = key.clone();
        let job_for_insert = job.clone();
        let partition = blocking(move || job.prepare(k, &batches)).await?;
        let stored = partition.bytes;
        let replaced = self.jobs.insert(&job_for_insert, partition)?;
        self.counters
            .rows_in
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.counters
            .put_latency
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(job = %key.job, partition = key.partition, version = %key.version, rows, bytes = stored, replaced, "cached partition");
        let meta = serde_json::json!({"rows": rows, "bytes": stored, "replaced": replaced});
        Ok(PutResult {
            app_metadata: Bytes::from(meta.to_string()),
        })
    }

    /// Predictions for a DoExchange: the model is looked up before any data
    /// is read (an unknown name fails the call at once); batches are
    /// predicted one at a time, in order.
    pub(super) async fn exchange(
        self: Arc<Self>,
        input: Stream<FlightData>,
        keep: Vec<String>,
    ) -> Result<Stream<Outgoing>> {
        let (descriptor, data) = split_descriptor(input).await?;
        let path = descriptor_path(descriptor.as_ref())?;
        let max_bytes = stoker_core::protocol::data_message_bytes(self.max_message_bytes);
        if super::transport::is_echo(&path) {
            let echoed = FlightRecordBatchStream::new_from_flight_data(data);
            let me = self.clone();
            return Ok(encode_batches(echoed, max_bytes)
                .map_err(move |e| me.fail(flight_error(e)))
                .boxed());
        }
        let key = ModelKey::from_path(&path)?;
        let served = self.models.get(&key)?;
        let decoded = FlightRecordBatchStream::new_from_flight_data(data);
        let me = self.clone();
        let mut rows = 0usize;
        let predictions = decoded.and_then(move |batch| {
            let (served, keep, me) = (served.clone(), keep.clone(), me.clone());
            let first_row = rows;
            rows += batch.num_rows();
            async move {
                let out = me
                    .clone()
                    .predict(served, batch, keep, first_row)
                    .await
                    .map_err(to_flight)?;
                me.counters
                    .rows_predicted
                    .fetch_add(out.num_rows() as u64, Ordering::Relaxed);
                Ok(out)
            }
        });
        let me = self.clone();
        let encoded =
            encode_batches(predictions, max_bytes).map_err(move |e| me.fail(flight_error(e)));
        Ok(encoded.boxed())
    }

    /// One stream batch through the model's batcher: features are
    /// converted on this stream's blocking thread, the forward pass is
    /// shared with concurrent streams.
    async fn predict(
        self: Arc<Self>,
        served: Arc<ServedModel>,
        batch: RecordBatch,
        keep: Vec<String>,
        first_row: usize,
    ) -> Result<RecordBatch> {
        let started = std::time::Instant::now();
        let (s, b) = (served.clone(), batch.clone());
        let features = blocking(move || s.features_of(&b, first_row)).await?;
        let me = self.clone();
        let batcher = blocking(move || me.models.batcher(&served)).await?;
        let outputs = batcher.predict(features).await?;
        let out = append(&batch, Some(&keep), &outputs, &OutputColumns::default());
        self.counters
            .exchange_latency
            .observe(started.elapsed().as_secs_f64());
        out
    }

    pub(super) fn flight_infos(&self) -> Vec<FlightInfo> {
        let mut out = Vec::new();
        for j in self.jobs.list() {
            let d = FlightDescriptor::new_path(vec![JOBS_PATH.into(), j.name.clone()]);
            let info = FlightInfo::new()
                .with_descriptor(d)
                .with_total_records(j.rows as i64)
                .with_total_bytes(j.bytes as i64)
                .with_endpoint(
                    FlightEndpoint::new()
                        .with_ticket(Ticket::new(format!("{JOBS_PATH}/{}", j.name))),
                )
                .with_app_metadata(
                    serde_json::json!({"kind": "job", "partitions": j.partitions}).to_string(),
                );
            out.push(info);
        }
        for m in self.models.list() {
            let d = FlightDescriptor::new_path(vec![
                MODELS_PATH.into(),
                m.name.clone(),
                m.version.to_string(),
            ]);
            let info = FlightInfo::new()
                .with_descriptor(d)
                .with_total_records(m.batching.rows.load(Ordering::Relaxed) as i64)
                .with_total_bytes(m.param_bytes as i64)
                .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(format!(
                    "{MODELS_PATH}/{}/{}",
                    m.name, m.version
                ))))
                .with_app_metadata(
                    serde_json::json!({"kind": "model", "version": m.version, "task": m.task, "tier": m.tier().as_str()})
                        .to_string(),
                );
            out.push(info);
        }
        out
    }

    pub(super) fn ticket_state(&self, ticket: &[u8]) -> Result<Vec<u8>> {
        let text =
            std::str::from_utf8(ticket).map_err(|_| Error::invalid("ticket is not UTF-8"))?;
        let parts: Vec<String> = text.split('/').map(String::from).collect();
        match parts.first().map(String::as_str) {
            Some(JOBS_PATH) if parts.len() == 2 => self.jobs.get(&parts[1])?.initial_state(),
            Some(MODELS_PATH) => {
                let m = self.models.get(&ModelKey::from_path(&parts)?)?;
                self.models.state_bytes(&m)
            }
            _ => Err(Error::invalid(format!(
                "ticket '{text}' names neither 'jobs/JOB' nor 'models/NAME[/VERSION]'"
            ))),
        }
    }
}

/// Pass-through columns the client names in the `x-stoker-keep` header
/// (comma-separated).
pub(super) fn keep_columns(headers: &tonic::metadata::MetadataMap) -> Vec<String> {
    headers
        .get("x-stoker-keep")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn to_flight(e: Error) -> FlightError {
    FlightError::Tonic(Box::new(to_status(e)))
}

/// Sets its flag when dropped unless disarmed: tells blocking work that the
/// request it serves was abandoned.
struct CancelOnDrop {
    flag: Arc<std::sync::atomic::AtomicBool>,
    armed: bool,
}

impl CancelOnDrop {
    fn new() -> Self {
        CancelOnDrop {
            flag: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            armed: true,
        }
    }

    fn flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
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

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

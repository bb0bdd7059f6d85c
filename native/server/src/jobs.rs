//! Jobs and their cached partitions: a job trains a model
//! (jobs/training.rs) or caches a matrix for `linalg` (jobs/matrix.rs).
//!
//! A job is created by `create_job`; its partitions arrive by DoPut and are
//! converted once, on arrival, into device tensors (checked: a null or NaN
//! fails the put and names the column and row). The cache holds partitions
//! of all jobs within one byte budget, evicting the least recently used; a
//! `train_round` for an evicted or never-sent partition is a `cache_miss`,
//! and the client sends the partition again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lock;
use crate::model_root::ModelRoot;
use std::time::Instant;

use arrow::array::RecordBatch;
use bytes::Bytes;
use stoker_core::protocol::{CreateJob, PartitionKey, Split};
use stoker_core::{Error, ErrorKind, Result};
use stoker_engine::{Dataset, DeviceSpec, Fixed, Trainer};

mod matrix;
mod reservation;
#[cfg(test)]
mod tests;
mod training;

use matrix::MatrixWork;
use training::Training;

pub use reservation::Reservation;

/// What `create_job` asked for, checked.
pub struct Job {
    pub name: String,
    /// The job whose cached partitions this one trains and validates on
    /// (`create_job`'s `data`): a search's trials share one copy. None: its
    /// own.
    pub data: Option<String>,
    /// What the job does with its partitions: train, or matrix work.
    work: Work,
    /// Fixed by the first partition: the feature layout and the loss.
    resolved: Mutex<Option<Fixed>>,
    /// Trainers between rounds, reused by the next `train_round` that loads a
    /// state: building a model draws random weights and zero-fills the
    /// optimizer, and every buffer of a new model is first-touched memory,
    /// all of which a round that loads a state throws away. At most
    /// [`IDLE_TRAINERS`] are kept; they go with the job.
    idle: Mutex<Vec<Trainer>>,
    /// The last input state sent with a `state_id`, under that id: the
    /// round's other partitions on this server name it instead of sending
    /// it again (one upload per server and round instead of one per
    /// partition). It holds the request it arrived in; the next round's
    /// state replaces it, and it goes with the job.
    round_input: Mutex<Option<(String, Bytes)>>,
}

/// A training job's model and how it trains, or a matrix job's columns.
enum Work {
    // Boxed: a job holds one, and the setup is most of a job's size.
    Train(Box<Training>),
    Matrix(MatrixWork),
}

/// What a cached partition holds: training rows, or a matrix job's matrix.
enum Cached {
    Rows(Dataset),
    Matrix(stoker_engine::linalg::Matrix),
}

/// A partition on the server, ready to train on.
pub struct Partition {
    pub key: PartitionKey,
    pub rows: usize,
    pub bytes: usize,
    data: Mutex<Cached>,
    last_used: Mutex<Instant>,
}

impl Job {
    /// A job as `req` asks, its models held to `model_bytes` (the server's
    /// `--job-model-mb`) with their training state and a batch's activations.
    pub fn new(
        req: CreateJob,
        model_blob: Option<Vec<u8>>,
        default_device: DeviceSpec,
        model_bytes: usize,
        root: &ModelRoot,
    ) -> Result<Job> {
        if req.job.is_empty() || req.job.contains('/') {
            return Err(Error::invalid(format!(
                "job name '{}' must be non-empty and have no '/'",
                req.job
            )));
        }
        if req.matrix.is_some() {
            return Job::matrix(req, default_device);
        }
        Job::for_training(req, model_blob, default_device, model_bytes, root)
    }

    /// Converts a partition's batches into device tensors, fixing the job's
    /// layout and loss on the first partition and checking later ones
    /// against them.
    pub fn prepare(&self, key: PartitionKey, batches: &[RecordBatch]) -> Result<Partition> {
        let first = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Error::invalid(format!("{key} has no rows")))?;
        match &self.work {
            Work::Train(t) => self.prepare_rows(t, key, first, batches),
            Work::Matrix(m) => m.prepare(key, first, batches),
        }
    }
}

impl Partition {
    /// A partition that holds `data` (`rows` rows, `bytes` on its device),
    /// used now.
    fn new(key: PartitionKey, rows: usize, bytes: usize, data: Cached) -> Partition {
        Partition {
            key,
            rows,
            bytes,
            data: Mutex::new(data),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// The partition's tensors for one round, marked used now. A shallow
    /// copy (new handles on the same storage): the lock is held for the
    /// copy only, so several trials' rounds read one partition at once
    /// (libtorch reads of a tensor no one writes are thread-safe, and
    /// training never writes its dataset).
    fn dataset(&self) -> Result<Dataset> {
        *lock(&self.last_used) = Instant::now();
        match &*lock(&self.data) {
            Cached::Rows(d) => Ok(d.shallow_clone()),
            Cached::Matrix(_) => Err(Error::invalid(format!(
                "{} is a matrix job's partition; it holds no training rows",
                self.key
            ))),
        }
    }
}

/// A partition's place in the cache: one per (job, split, partition), the
/// latest version replacing earlier ones.
fn cache_id(key: &PartitionKey) -> (String, Split, u32) {
    (key.job.clone(), key.split, key.partition)
}

/// All jobs and the partition cache.
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    partitions: Mutex<HashMap<(String, Split, u32), Arc<Partition>>>,
    budget: usize,
    /// What one job's model may take (`--job-model-mb`).
    model_bytes: usize,
    /// Bytes of partitions still streaming in.
    incoming: Arc<std::sync::atomic::AtomicUsize>,
    pub evictions: std::sync::atomic::AtomicU64,
}

/// Summary of a job for listings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobInfo {
    pub name: String,
    pub partitions: usize,
    pub rows: usize,
    pub bytes: usize,
}

impl Jobs {
    pub fn new(budget_bytes: usize, model_bytes: usize) -> Jobs {
        Jobs {
            jobs: Mutex::new(HashMap::new()),
            partitions: Mutex::new(HashMap::new()),
            budget: budget_bytes,
            model_bytes,
            incoming: Default::default(),
            evictions: Default::default(),
        }
    }

    /// Adds a job; creating a job that exists with the same name replaces
    /// it (and drops its partitions), so a restarted driver starts clean,
    /// unless `keep_existing` asks to keep the one there. Returns whether
    /// the job was created.
    pub fn create(&self, job: Job, keep_existing: bool) -> bool {
        let name = job.name.clone();
        // Lock order: partitions, then jobs.
        let mut parts = lock(&self.partitions);
        let mut jobs = lock(&self.jobs);
        if keep_existing && jobs.contains_key(&name) {
            return false;
        }
        parts.retain(|(j, _, _), _| *j != name);
        jobs.insert(name, Arc::new(job));
        true
    }

    /// Drops one partition from the cache (after its last round), and the
    /// job with its last partition: a finished fit leaves nothing behind.
    /// A task of the job that still needs the server later finds the job
    /// missing and creates it again (`keep_existing`).
    pub fn release(&self, key: &PartitionKey) {
        // Lock order: partitions, then jobs.
        let mut parts = lock(&self.partitions);
        parts.remove(&cache_id(key));
        if !parts.keys().any(|(j, _, _)| *j == key.job) {
            lock(&self.jobs).remove(&key.job);
        }
    }

    /// The job `name` and the name of the job whose partitions it trains
    /// on (its own, or its `data` job's, whose layout it adopts). A data job
    /// this server lacks is `not_found`, as a missing job is: the caller
    /// creates both and sends the partitions.
    pub fn with_data(&self, name: &str) -> Result<(Arc<Job>, String)> {
        let job = self.get(name)?;
        let Some(data) = job.data.clone() else {
            return Ok((job, name.to_string()));
        };
        let source = lock(&self.jobs).get(&data).cloned().ok_or_else(|| {
            Error::not_found(format!(
                "job '{name}' trains on the partitions of job '{data}', which this server does \
                 not have; create it with create_job first"
            ))
        })?;
        if let Some(fixed) = source.fixed() {
            job.adopt(fixed);
        }
        Ok((job, data))
    }

    pub fn get(&self, name: &str) -> Result<Arc<Job>> {
        lock(&self.jobs).get(name).cloned().ok_or_else(|| {
            Error::not_found(format!(
                "no job named '{name}'; create it with create_job first"
            ))
        })
    }

    /// Drops a job and its partitions, and the jobs that train on them (a
    /// search's trials go with its data job).
    pub fn drop_job(&self, name: &str) -> Result<()> {
        {
            let mut jobs = lock(&self.jobs);
            jobs.remove(name)
                .ok_or_else(|| Error::not_found(format!("no job named '{name}'")))?;
            jobs.retain(|_, j| j.data.as_deref() != Some(name));
        }
        lock(&self.partitions).retain(|(j, _, _), _| j != name);
        Ok(())
    }

    /// What a request's `release` asks after it: `key`'s partition leaves
    /// the cache (and the job with its last one), or, for a job that trains
    /// on another job's partitions, the job frees its models and input
    /// state, leaving the shared data to the other trials.
    pub fn release_after(&self, job: &Job, key: &PartitionKey) {
        if job.data.is_some() {
            job.free();
        } else {
            self.release(key);
        }
    }

    /// Caches a partition, replacing any earlier put of the same (job,
    /// partition), evicting least recently used partitions to fit.
    /// `job` is the job that prepared the partition: if the job was
    /// replaced or dropped while the partition streamed in, it is refused.
    pub fn insert(&self, job: &Arc<Job>, partition: Partition) -> Result<bool> {
        if partition.bytes > self.budget {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "{} needs {} bytes, more than the whole cache budget of {} bytes (--cache-mb)",
                    partition.key, partition.bytes, self.budget
                ),
            ));
        }
        let id = cache_id(&partition.key);
        let mut parts = lock(&self.partitions);
        // Lock order: partitions, then jobs (as `list` does).
        let current = lock(&self.jobs).get(&partition.key.job).cloned();
        if !current.is_some_and(|c| Arc::ptr_eq(&c, job)) {
            return Err(Error::not_found(format!(
                "job '{}' was dropped or created anew while its {} was sent; send it again",
                partition.key.job, partition.key
            )));
        }
        let replaced = parts.remove(&id).is_some();
        let mut used: usize = parts.values().map(|p| p.bytes).sum();
        while used + partition.bytes > self.budget {
            let oldest = parts
                .iter()
                .min_by_key(|(_, p)| *lock(&p.last_used))
                .map(|(k, p)| (k.clone(), p.bytes));
            let Some((k, bytes)) = oldest else { break };
            parts.remove(&k);
            used -= bytes;
            self.evictions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(job = %k.0, split = ?k.1, partition = k.2, bytes, "evicted partition to fit the cache budget");
        }
        parts.insert(id, Arc::new(partition));
        Ok(replaced)
    }

    /// The cached partition at exactly this version, or a cache miss.
    pub fn partition(&self, key: &PartitionKey) -> Result<Arc<Partition>> {
        let parts = lock(&self.partitions);
        match parts.get(&cache_id(key)) {
            Some(p) if p.key.version == key.version => Ok(p.clone()),
            Some(p) => Err(Error::new(
                ErrorKind::CacheMiss,
                format!(
                    "{key} is cached at version '{}', not '{}'; send it again",
                    p.key.version, key.version
                ),
            )),
            None => Err(Error::new(
                ErrorKind::CacheMiss,
                format!("{key} is not cached; send it (DoPut) and retry"),
            )),
        }
    }

    pub fn list(&self) -> Vec<JobInfo> {
        let parts = lock(&self.partitions);
        let mut out: Vec<JobInfo> = lock(&self.jobs)
            .keys()
            .map(|name| {
                let mine: Vec<&Arc<Partition>> =
                    parts.values().filter(|p| &p.key.job == name).collect();
                JobInfo {
                    name: name.clone(),
                    partitions: mine.len(),
                    rows: mine.iter().map(|p| p.rows).sum(),
                    bytes: mine.iter().map(|p| p.bytes).sum(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A reservation against the budget for a partition streaming in.
    pub fn reserve_incoming(&self) -> Reservation {
        Reservation::new(self.incoming.clone(), self.budget)
    }

    pub fn cached_bytes(&self) -> usize {
        lock(&self.partitions).values().map(|p| p.bytes).sum()
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// What one job's model may take of the device (`--job-model-mb`).
    pub fn model_bytes(&self) -> usize {
        self.model_bytes
    }
}

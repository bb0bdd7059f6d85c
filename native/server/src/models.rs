//! The model registry: servable models by name and version, kept in three
//! tiers, each with a byte budget and least-recently-used eviction downward:
//!
//! - device: the model is loaded on the server's device, owned by its
//!   batching thread, and shared by every stream that calls it;
//! - host: its artifact (spec or TorchScript bytes, state bytes) is in
//!   memory, ready to load;
//! - disk: its artifact is only in the model directory (`--model-dir`).
//!
//! A request for a model in a lower tier loads it back up transparently;
//! stats count hits and misses per tier. With a model directory, registered
//! models survive restarts: the server finds them there at start-up.
//!
//! Without a model directory the host tier is the bottom, and its budget
//! still holds: a long-lived server that Spark keeps registering models on
//! (a daily retrain, a search over many models) must not grow until the
//! kernel kills it. The least recently used model that no stream is using
//! is forgotten; a later call for it gets NOT_FOUND, on which Spark tasks
//! register it again. When nothing can go, the registration that needs the
//! room fails with RESOURCE_EXHAUSTED naming `--host-model-mb`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use stoker_core::protocol::{ModelKey, RegisterModel};
use stoker_core::{Error, ErrorKind, FeatureLayout, Loss, Result, State};
use stoker_engine::model::ModelSource;
use stoker_engine::torch::filled_matrix;
use stoker_engine::{Budget, Device, Model};
use tch::Tensor;

use super::batcher::{BatchLimits, BatchStats, Batcher};
use super::lock;
use crate::model_root::ModelRoot;
use files::{read_artifact, write_artifact};

mod files;
#[cfg(test)]
mod tests;

/// Where a model currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Device,
    Host,
    Disk,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Device => "device",
            Tier::Host => "host",
            Tier::Disk => "disk",
        }
    }
}

/// Everything needed to load a model again.
struct Artifact {
    source: ModelSource,
    state: Option<Vec<u8>>,
}

impl Artifact {
    fn bytes(&self) -> usize {
        let source = match &self.source {
            ModelSource::Spec(s) => s.to_json().len(),
            ModelSource::TorchScript(b) => b.len(),
        };
        source + self.state.as_ref().map_or(0, Vec::len)
    }
}

/// What the model directory keeps beside the artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    features: Vec<String>,
    task: String,
    loss: Option<String>,
    input_width: Option<usize>,
    param_bytes: usize,
    /// Features per row the built model takes (absent in older manifests).
    #[serde(default)]
    width: Option<usize>,
}

pub struct ServedModel {
    pub name: String,
    pub version: u32,
    pub features: Vec<String>,
    pub task: String,
    /// Bytes of the parameters on the device.
    pub param_bytes: usize,
    loss: Option<String>,
    input_width: Option<usize>,
    /// Features per row the model takes, when known: a batch is checked
    /// against it before its dense matrix is allocated.
    width: Option<usize>,
    batcher: Mutex<Option<Arc<Batcher>>>,
    /// Held while loading onto the device, so concurrent streams that miss
    /// load one copy, not one each.
    loading: Mutex<()>,
    artifact: Mutex<Option<Arc<Artifact>>>,
    last_used: Mutex<Instant>,
    pub batching: Arc<BatchStats>,
}

impl ServedModel {
    pub fn tier(&self) -> Tier {
        if lock(&self.batcher).is_some() {
            Tier::Device
        } else if lock(&self.artifact).is_some() {
            Tier::Host
        } else {
            Tier::Disk
        }
    }

    /// The features of a batch as a host matrix, checked (errors name the
    /// column and the row within the stream).
    pub fn features_of(&self, batch: &RecordBatch, first_row: usize) -> Result<Tensor> {
        let layout = FeatureLayout::resolve(&batch.schema(), &self.features, Some(batch))
            .map_err(|e| e.context(format!("model '{}'", self.name)))?;
        // Before the allocation: a sparse vector's declared size sets the
        // width, and a few bytes can declare 2^31 values per row.
        if let Some(width) = self.width.filter(|w| *w != layout.width()) {
            return Err(Error::invalid(format!(
                "model '{}' takes {width} features per row; columns {} give {}",
                self.name,
                self.features.join(", "),
                layout.width()
            )));
        }
        filled_matrix::<f32>(batch.num_rows(), layout.width(), |buf| {
            layout.write_batches(std::slice::from_ref(batch), first_row, buf)
        })
    }

    /// Bytes of the model's artifact held in host memory (0 when only on disk).
    pub fn artifact_bytes(&self) -> usize {
        lock(&self.artifact).as_ref().map_or(0, |a| a.bytes())
    }
}

/// Registry settings (from `stoker serve` flags).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub device: Device,
    pub device_bytes: usize,
    pub host_bytes: usize,
    pub model_dir: Option<PathBuf>,
    pub limits: BatchLimits,
}

#[derive(Default)]
pub struct TierCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

pub struct Models {
    config: RegistryConfig,
    models: Mutex<HashMap<String, BTreeMap<u32, Arc<ServedModel>>>>,
    pub device_tier: TierCounters,
    pub host_tier: TierCounters,
    pub disk_tier: TierCounters,
}

fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "model name '{name}' must be non-empty and use only letters, digits, '-', '_' and '.'"
        )))
    }
}

impl Models {
    pub fn new(config: RegistryConfig) -> Result<Models> {
        let models = Models {
            config,
            models: Mutex::new(HashMap::new()),
            device_tier: Default::default(),
            host_tier: Default::default(),
            disk_tier: Default::default(),
        };
        models.scan_model_dir()?;
        Ok(models)
    }

    /// The budget a served model is built within.
    pub fn budget(&self) -> Budget {
        Budget::serving(self.config.device_bytes, "--device-model-mb")
    }

    fn build(
        &self,
        artifact: &Artifact,
        loss: Option<&str>,
        width: Option<usize>,
    ) -> Result<Model> {
        match &artifact.state {
            Some(bytes) => Model::from_state(
                &artifact.source,
                &State::from_bytes(bytes)?,
                self.config.device,
                Some(&self.budget()),
            ),
            None => {
                if let ModelSource::Spec(_) = artifact.source {
                    return Err(Error::invalid(
                        "a built-in model spec needs its trained weights as a 'state' blob",
                    ));
                }
                let width = width.ok_or_else(|| {
                    Error::invalid("a TorchScript model without a state needs 'input_width'")
                })?;
                let loss: Loss = loss.unwrap_or("mse").parse()?;
                Model::build_within(
                    &artifact.source,
                    loss,
                    width,
                    self.config.device,
                    0,
                    Some(&self.budget()),
                )
            }
        }
    }

    /// Builds, checks and registers a model; it starts in the device tier.
    pub fn register(
        &self,
        req: RegisterModel,
        model_blob: Option<Vec<u8>>,
        state_blob: Option<Vec<u8>>,
        root: &ModelRoot,
    ) -> Result<Arc<ServedModel>> {
        valid_name(&req.name)?;
        let artifact = Arc::new(Artifact {
            source: ModelSource::one_of(
                req.spec.as_ref(),
                req.torchscript_path.as_deref(),
                model_blob,
                "register_model",
                |path| root.read(path),
            )?,
            state: state_blob,
        });
        let model = self.build(&artifact, req.loss.as_deref(), req.input_width)?;
        let recorded = match &artifact.state {
            Some(b) => State::from_bytes(b)?.meta.extra.get("features").cloned(),
            None => None,
        };
        let features = match (req.features.clone(), recorded) {
            (Some(f), _) => f,
            (None, Some(f)) => stoker_core::protocol::column_list(&f),
            (None, None) => return Err(Error::invalid(
                "register_model needs 'features' (the state does not record its feature columns)",
            )),
        };
        let manifest = Manifest {
            features: features.clone(),
            task: model.task().encode(),
            loss: req.loss.clone(),
            input_width: req.input_width,
            param_bytes: model.parameter_count() * 4,
            width: Some(model.input_width()),
        };
        let name = req.name.clone();
        let batching = Arc::new(BatchStats::default());
        let batcher = Arc::new(Batcher::start(
            model,
            self.config.limits,
            batching.clone(),
            name.clone(),
        )?);
        // The version is picked, written and published under one lock, so
        // concurrent registrations never share a version or its directory.
        let served = {
            let mut models = lock(&self.models);
            let versions = models.entry(name.clone()).or_default();
            let version = req
                .version
                .unwrap_or_else(|| versions.keys().next_back().map_or(1, |v| v + 1));
            if let Some(dir) = &self.config.model_dir {
                write_artifact(
                    &dir.join(&name).join(version.to_string()),
                    &artifact,
                    &manifest,
                )?;
            }
            let served = Arc::new(ServedModel {
                name,
                version,
                features,
                task: manifest.task.clone(),
                param_bytes: manifest.param_bytes,
                loss: req.loss,
                input_width: req.input_width,
                width: manifest.width,
                batcher: Mutex::new(Some(batcher)),
                loading: Mutex::new(()),
                artifact: Mutex::new(Some(artifact)),
                last_used: Mutex::new(Instant::now()),
                batching,
            });
            versions.insert(version, served.clone());
            served
        };
        if let Err(e) = self.enforce_budgets(&served) {
            // Nothing else could make room: the registration is undone and
            // every model registered before it stays as it was.
            self.forget(&served);
            return Err(e);
        }
        Ok(served)
    }

    pub fn get(&self, key: &ModelKey) -> Result<Arc<ServedModel>> {
        let models = lock(&self.models);
        let versions = models.get(&key.name).ok_or_else(|| {
            Error::not_found(format!("no model named '{}' is registered", key.name))
        })?;
        match key.version {
            Some(v) => versions.get(&v).cloned().ok_or_else(|| {
                Error::not_found(format!("model '{}' has no version {v}", key.name))
            }),
            None => {
                versions.values().next_back().cloned().ok_or_else(|| {
                    Error::not_found(format!("model '{}' has no versions", key.name))
                })
            }
        }
    }

    /// The model's batcher, loading it onto the device from the host or
    /// disk tier if it was evicted. Blocking: call off the async runtime.
    pub fn batcher(&self, served: &Arc<ServedModel>) -> Result<Arc<Batcher>> {
        *lock(&served.last_used) = Instant::now();
        if let Some(b) = lock(&served.batcher).as_ref() {
            self.device_tier.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b.clone());
        }
        let _loading = lock(&served.loading);
        // Another stream may have loaded it while we waited.
        if let Some(b) = lock(&served.batcher).as_ref() {
            self.device_tier.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b.clone());
        }
        self.device_tier.misses.fetch_add(1, Ordering::Relaxed);
        let held = lock(&served.artifact).clone();
        let artifact = match held {
            Some(a) => {
                self.host_tier.hits.fetch_add(1, Ordering::Relaxed);
                a
            }
            None => {
                self.host_tier.misses.fetch_add(1, Ordering::Relaxed);
                // Files that went away (a cleaned local directory) are a model
                // this server no longer has: NOT_FOUND, so Spark registers it again.
                let a = Arc::new(read_artifact(&self.model_path(served)?).map_err(|e| {
                    Error::not_found(format!(
                        "model '{}' version {} can no longer be read from the model directory ({}); register it again",
                        served.name,
                        served.version,
                        e.message()
                    ))
                })?);
                self.disk_tier.hits.fetch_add(1, Ordering::Relaxed);
                *lock(&served.artifact) = Some(a.clone());
                a
            }
        };
        let model = self.build(&artifact, served.loss.as_deref(), served.input_width)?;
        let batcher = Arc::new(Batcher::start(
            model,
            self.config.limits,
            served.batching.clone(),
            served.name.clone(),
        )?);
        *lock(&served.batcher) = Some(batcher.clone());
        tracing::info!(model = %served.name, version = served.version, "loaded model onto the device");
        // Loading back adds nothing to the host tier without a model
        // directory, so this cannot fail there; the request is served either way.
        if let Err(e) = self.enforce_budgets(served) {
            tracing::warn!(model = %served.name, error = %e, "over the host budget after loading");
        }
        Ok(batcher)
    }

    /// The state a model was registered with (from memory or disk).
    pub fn state_bytes(&self, served: &ServedModel) -> Result<Vec<u8>> {
        let held = lock(&served.artifact).clone();
        let artifact = match held {
            Some(a) => a,
            None => Arc::new(read_artifact(&self.model_path(served)?)?),
        };
        artifact.state.clone().ok_or_else(|| {
            Error::not_found(format!(
                "model '{}' was registered without a state",
                served.name
            ))
        })
    }

    fn model_path(&self, served: &ServedModel) -> Result<PathBuf> {
        let dir = self
            .config
            .model_dir
            .as_ref()
            .ok_or_else(|| Error::internal(format!("model '{}' is in no tier", served.name)))?;
        Ok(dir.join(&served.name).join(served.version.to_string()))
    }

    /// Evicts least recently used models downward until each tier fits its
    /// budget; `keep` (the model just used or registered) stays. The error
    /// (no model directory, and every other model in use) names the budget.
    fn enforce_budgets(&self, keep: &Arc<ServedModel>) -> Result<()> {
        let all = self.list();
        let mut on_device: Vec<&Arc<ServedModel>> =
            all.iter().filter(|m| m.tier() == Tier::Device).collect();
        on_device.sort_by_key(|m| *lock(&m.last_used));
        let mut used: usize = on_device.iter().map(|m| m.param_bytes).sum();
        for m in on_device {
            if used <= self.config.device_bytes {
                break;
            }
            if Arc::ptr_eq(m, keep) {
                continue;
            }
            lock(&m.batcher).take();
            used -= m.param_bytes;
            self.device_tier.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(model = %m.name, version = m.version, "evicted from the device tier to host");
        }
        // Every artifact held in memory counts against the host budget, also
        // those of models on the device.
        let mut resident: Vec<&Arc<ServedModel>> =
            all.iter().filter(|m| m.artifact_bytes() > 0).collect();
        resident.sort_by_key(|m| *lock(&m.last_used));
        let mut used: usize = resident.iter().map(|m| m.artifact_bytes()).sum();
        for m in resident {
            if used <= self.config.host_bytes {
                break;
            }
            let bytes = m.artifact_bytes();
            if self.config.model_dir.is_some() {
                // Any artifact can be read back from disk when needed.
                lock(&m.artifact).take();
                tracing::info!(model = %m.name, version = m.version, "dropped the model's artifact from host memory (it stays on disk)");
            } else {
                // `all` and the registry hold two references; a stream using
                // the model holds a third (or its batcher).
                let in_use = Arc::strong_count(m) > 2
                    || lock(&m.batcher)
                        .as_ref()
                        .is_some_and(|b| Arc::strong_count(b) > 1);
                if Arc::ptr_eq(m, keep) || in_use {
                    continue;
                }
                self.forget(m);
                tracing::info!(model = %m.name, version = m.version, "unloaded: the host budget is full and there is no model directory (a later call registers it again)");
            }
            used -= bytes;
            self.host_tier.evictions.fetch_add(1, Ordering::Relaxed);
        }
        if used > self.config.host_bytes {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "model '{}' version {}: the registered models need {} bytes of host memory, over the server's host budget of {} bytes (--host-model-mb), and no other model can go (in use); unload models, raise --host-model-mb, or give the server a --model-dir",
                    keep.name, keep.version, used, self.config.host_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Removes this exact registration (not a newer one of the same name and
    /// version) from the registry; nothing on disk changes.
    fn forget(&self, served: &Arc<ServedModel>) {
        let mut models = lock(&self.models);
        if let Some(versions) = models.get_mut(&served.name) {
            if versions
                .get(&served.version)
                .is_some_and(|m| Arc::ptr_eq(m, served))
            {
                versions.remove(&served.version);
            }
            if versions.is_empty() {
                models.remove(&served.name);
            }
        }
    }

    /// Bytes of model artifacts held in host memory, and the budget.
    pub fn host_bytes(&self) -> (usize, usize) {
        let used = self.list().iter().map(|m| m.artifact_bytes()).sum();
        (used, self.config.host_bytes)
    }

    /// Forgets one version, or every version when `version` is None (also
    /// from the model directory).
    pub fn unload(&self, name: &str, version: Option<u32>) -> Result<()> {
        let mut models = lock(&self.models);
        let versions = models
            .get_mut(name)
            .ok_or_else(|| Error::not_found(format!("no model named '{name}' is registered")))?;
        let removed: Vec<u32> = match version {
            Some(v) => {
                versions.remove(&v).ok_or_else(|| {
                    Error::not_found(format!("model '{name}' has no version {v}"))
                })?;
                vec![v]
            }
            None => std::mem::take(versions).into_keys().collect(),
        };
        if versions.is_empty() {
            models.remove(name);
        }
        drop(models);
        // Files go after the lock is released: lookups need not wait on disk.
        if let Some(dir) = &self.config.model_dir {
            for v in removed {
                let _ = std::fs::remove_dir_all(dir.join(name).join(v.to_string()));
            }
        }
        Ok(())
    }

    pub fn list(&self) -> Vec<Arc<ServedModel>> {
        let models = lock(&self.models);
        let mut out: Vec<_> = models.values().flat_map(|v| v.values().cloned()).collect();
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        out
    }

    /// Registers what a model directory holds, in the disk tier.
    fn scan_model_dir(&self) -> Result<()> {
        let Some(dir) = &self.config.model_dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for name in entries.flatten() {
            let Ok(versions) = std::fs::read_dir(name.path()) else {
                continue;
            };
            let model_name = name.file_name().to_string_lossy().to_string();
            for v in versions.flatten() {
                let Ok(version) = v.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(text) = std::fs::read_to_string(v.path().join("manifest.json")) else {
                    continue;
                };
                let Ok(m) = serde_json::from_str::<Manifest>(&text) else {
                    tracing::warn!(path = %v.path().display(), "skipping a model directory entry with a bad manifest");
                    continue;
                };
                let served = Arc::new(ServedModel {
                    name: model_name.clone(),
                    version,
                    features: m.features,
                    task: m.task,
                    param_bytes: m.param_bytes,
                    loss: m.loss,
                    input_width: m.input_width,
                    width: m.width,
                    batcher: Mutex::new(None),
                    loading: Mutex::new(()),
                    artifact: Mutex::new(None),
                    last_used: Mutex::new(Instant::now()),
                    batching: Arc::new(BatchStats::default()),
                });
                lock(&self.models)
                    .entry(model_name.clone())
                    .or_default()
                    .insert(version, served);
                tracing::info!(model = %model_name, version, "found model in the model directory");
            }
        }
        Ok(())
    }
}

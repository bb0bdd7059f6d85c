//! Servable models by name and version. One copy of each model lives on
//! the server's device and every DoExchange stream for it shares that copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::RecordBatch;
use stoker_core::predictions::{append, OutputColumns};
use stoker_core::protocol::{ModelKey, RegisterModel};
use stoker_core::{Error, FeatureLayout, Loss, Result, State};
use stoker_engine::model::ModelSource;
use stoker_engine::Device;
use stoker_engine::{Model, ModelSpec};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct ServedModel {
    pub name: String,
    pub version: u32,
    pub features: Vec<String>,
    pub task: String,
    pub bytes: usize,
    state: Option<Vec<u8>>,
    model: Mutex<Model>,
    pub rows: AtomicU64,
    pub batches: AtomicU64,
}

impl ServedModel {
    /// Predictions for one batch, appended to the `keep` columns.
    pub fn predict(
        &self,
        batch: &RecordBatch,
        keep: &[String],
        first_row: usize,
    ) -> Result<RecordBatch> {
        let layout = FeatureLayout::resolve(&batch.schema(), &self.features, Some(batch))
            .map_err(|e| e.context(format!("model '{}'", self.name)))?;
        let outputs =
            lock(&self.model).predict_batches(std::slice::from_ref(batch), &layout, first_row)?;
        self.rows
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        append(batch, Some(keep), &outputs, &OutputColumns::default())
    }

    /// The state the model was registered with, if any.
    pub fn state(&self) -> Option<&[u8]> {
        self.state.as_deref()
    }
}

#[derive(Default)]
pub struct Models {
    models: Mutex<HashMap<String, BTreeMap<u32, Arc<ServedModel>>>>,
}

impl Models {
    /// Builds and registers a model; returns its version.
    pub fn register(
        &self,
        req: RegisterModel,
        model_blob: Option<Vec<u8>>,
        state_blob: Option<Vec<u8>>,
        device: Device,
    ) -> Result<Arc<ServedModel>> {
        if req.name.is_empty() || req.name.contains('/') {
            return Err(Error::invalid(format!(
                "model name '{}' must be non-empty and have no '/'",
                req.name
            )));
        }
        let source = match (&req.spec, &req.torchscript_path, model_blob) {
            (Some(spec), None, None) => ModelSource::Spec(ModelSpec::from_json(&spec.to_string())?),
            (None, Some(path), None) => ModelSource::from_file(std::path::Path::new(path))?,
            (None, None, Some(bytes)) => ModelSource::from_bytes(bytes)?,
            _ => return Err(Error::invalid(
                "register_model needs exactly one of 'spec', 'torchscript_path' or a 'model' blob",
            )),
        };
        let state = state_blob.as_deref().map(State::from_bytes).transpose()?;
        let model = match &state {
            Some(s) => Model::from_state(&source, s, device)?,
            None => {
                let ModelSource::TorchScript(_) = source else {
                    return Err(Error::invalid(
                        "a built-in model spec needs its trained weights as a 'state' blob",
                    ));
                };
                let width = req.input_width.ok_or_else(|| {
                    Error::invalid("a TorchScript model without a state needs 'input_width'")
                })?;
                let loss: Loss = req.loss.as_deref().unwrap_or("mse").parse()?;
                Model::build(&source, loss, width, device, 0)?
            }
        };
        let features = match (
            &req.features,
            state.as_ref().and_then(|s| s.meta.extra.get("features")),
        ) {
            (Some(f), _) => f.clone(),
            (None, Some(f)) => f.split(',').map(String::from).collect(),
            (None, None) => return Err(Error::invalid(
                "register_model needs 'features' (the state does not record its feature columns)",
            )),
        };
        let mut models = lock(&self.models);
        let versions = models.entry(req.name.clone()).or_default();
        let version = req
            .version
            .unwrap_or_else(|| versions.keys().next_back().map(|v| v + 1).unwrap_or(1));
        let served = Arc::new(ServedModel {
            name: req.name.clone(),
            version,
            features,
            task: model.task().encode(),
            bytes: model.parameter_count() * 4,
            state: state_blob,
            model: Mutex::new(model),
            rows: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        versions.insert(version, served.clone());
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

    /// Forgets one version, or every version when `version` is None.
    pub fn unload(&self, name: &str, version: Option<u32>) -> Result<()> {
        let mut models = lock(&self.models);
        let versions = models
            .get_mut(name)
            .ok_or_else(|| Error::not_found(format!("no model named '{name}' is registered")))?;
        match version {
            Some(v) => {
                versions.remove(&v).ok_or_else(|| {
                    Error::not_found(format!("model '{name}' has no version {v}"))
                })?;
                if versions.is_empty() {
                    models.remove(name);
                }
            }
            None => {
                models.remove(name);
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
}

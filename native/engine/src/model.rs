//! A model: a network on a device with the task and loss it was built for,
//! plus loading parameters from a state and batched inference.

use std::collections::BTreeMap;

use stoker_core::{
    Error, FeatureLayout, Loss, Outputs, Result, State, StateMeta, Task, TensorData,
};
use tch::{Device, Kind, Tensor};

use crate::budget::Budget;
use crate::network::{Mlp, Network, Script};
use crate::optim::copy_into;
use crate::spec::{ModelSpec, ModelType};
use crate::torch::{filled_matrix, internal, to_vec_f32};

/// Where a model's architecture comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A built-in model from a JSON spec.
    Spec(ModelSpec),
    /// A TorchScript archive (the bytes of a `torch.jit.save` file).
    TorchScript(Vec<u8>),
}

impl ModelSource {
    /// Reads a spec (`.json`) or TorchScript file (anything else).
    pub fn from_file(path: &std::path::Path) -> Result<ModelSource> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading model {}", path.display()), e))?;
        Self::from_bytes(bytes).map_err(|e| e.context(format!("model {}", path.display())))
    }

    /// The model a request names (`create_job`, `register_model`,
    /// `export_model`): exactly one of a built-in spec (JSON), a path to a
    /// TorchScript file (read by `read`, which decides which paths may be
    /// read), or a spec or TorchScript archive as bytes; `what` names the
    /// request in the error.
    pub fn one_of(
        spec: Option<&serde_json::Value>,
        path: Option<&str>,
        bytes: Option<Vec<u8>>,
        what: &str,
        read: impl FnOnce(&str) -> Result<Vec<u8>>,
    ) -> Result<ModelSource> {
        match (spec, path, bytes) {
            (Some(spec), None, None) => {
                Ok(ModelSource::Spec(ModelSpec::from_json(&spec.to_string())?))
            }
            (None, Some(path), None) => {
                ModelSource::from_bytes(read(path)?).map_err(|e| e.context(format!("model {path}")))
            }
            (None, None, Some(bytes)) => ModelSource::from_bytes(bytes),
            _ => Err(Error::invalid(format!(
                "{what} needs exactly one of 'spec', 'torchscript_path' or a 'model' blob"
            ))),
        }
    }

    /// A JSON spec if the bytes look like JSON, else TorchScript.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<ModelSource> {
        let text = std::str::from_utf8(&bytes).ok().map(str::trim_start);
        match text {
            Some(t) if t.starts_with('{') => Ok(ModelSource::Spec(ModelSpec::from_json(t)?)),
            _ => Ok(ModelSource::TorchScript(bytes)),
        }
    }

    /// The loss used when the user names none: a spec's classifier setting
    /// decides; otherwise integer labels mean cross-entropy, float labels mse.
    pub fn default_loss(&self, label_is_integer: bool) -> Loss {
        match self {
            ModelSource::Spec(s) if s.num_classes.is_some() => Loss::CrossEntropy,
            ModelSource::Spec(s) if s.model_type == ModelType::LinearRegression => Loss::Mse,
            _ if label_is_integer => Loss::CrossEntropy,
            _ => Loss::Mse,
        }
    }

    /// The text recorded in state metadata: the spec JSON, or `torchscript`.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Spec(s) => s.to_json(),
            ModelSource::TorchScript(_) => "torchscript".into(),
        }
    }
}

/// A network on a device, with its task and loss.
pub struct Model {
    network: Network,
    task: Task,
    loss: Loss,
    device: Device,
    input_width: usize,
    source: String,
}

/// Rows per forward pass during inference: large enough to keep a GPU busy,
/// small enough to bound activation memory.
pub(crate) const INFERENCE_CHUNK: i64 = 65_536;

impl Model {
    /// Builds a model for inputs of `input_width` features trained with
    /// `loss`. A spec needs `num_classes` for cross-entropy; a TorchScript
    /// module's number of classes is its output width, found by running it
    /// once on a row of zeros (which also checks it accepts the input).
    pub fn build(
        source: &ModelSource,
        loss: Loss,
        input_width: usize,
        device: Device,
        seed: u64,
    ) -> Result<Model> {
        Model::build_within(source, loss, input_width, device, seed, None)
    }

    /// [`Model::build`], refused before anything is allocated when the
    /// model would not fit `budget` (a server's; see [`Budget`]).
    pub fn build_within(
        source: &ModelSource,
        loss: Loss,
        input_width: usize,
        device: Device,
        seed: u64,
        budget: Option<&Budget>,
    ) -> Result<Model> {
        if let Some(b) = budget {
            b.check_before_build(source, loss, input_width)?;
        }
        let (network, task) = match source {
            ModelSource::Spec(spec) => {
                let task = spec.task(loss)?;
                let mlp = Mlp::new(spec, input_width, task.outputs(), seed, device)?;
                (Network::Builtin(mlp), task)
            }
            ModelSource::TorchScript(bytes) => {
                let mut script = Network::Script(Script::load(bytes, device)?);
                if let Some(b) = budget {
                    let parameters = script.parameters().iter().map(|(_, t)| t.numel()).sum();
                    b.check_parameters(parameters, input_width)?;
                }
                let probe = Tensor::f_zeros([1, input_width as i64], (Kind::Float, device))
                    .map_err(internal("probe input"))?;
                let out = tch::no_grad(|| script.forward(&probe, false))
                    .map_err(|e| e.context(format!("with {input_width} input features")))?;
                let width = out.size()[1] as usize;
                let task = match loss {
                    Loss::CrossEntropy => loss.task(Some(width))?,
                    _ if width != 1 => {
                        return Err(Error::invalid(format!(
                            "TorchScript model returns {width} outputs per row; loss {loss} needs 1"
                        )))
                    }
                    _ => loss.task(None)?,
                };
                (script, task)
            }
        };
        Ok(Model {
            network,
            task,
            loss,
            device,
            input_width,
            source: source.describe(),
        })
    }

    /// Builds the model a state was written for and loads its parameters;
    /// the state's widths are checked against `budget` first (a state from
    /// a client is untrusted input).
    pub fn from_state(
        source: &ModelSource,
        state: &State,
        device: Device,
        budget: Option<&Budget>,
    ) -> Result<Model> {
        let meta = &state.meta.extra;
        let loss: Loss = meta
            .get("loss")
            .ok_or_else(|| {
                Error::invalid("state has no 'loss' metadata; was it written by stoker?")
            })?
            .parse()?;
        let width: usize = meta
            .get("input_width")
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| Error::invalid("state has no 'input_width' metadata"))?;
        let mut model = Model::build_within(source, loss, width, device, 0, budget)?;
        model.load_weights(state)?;
        Ok(model)
    }

    pub fn task(&self) -> Task {
        self.task
    }

    pub fn loss(&self) -> Loss {
        self.loss
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn input_width(&self) -> usize {
        self.input_width
    }

    pub fn model_id(&self) -> String {
        self.network.model_id()
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Total number of parameters.
    pub fn parameter_count(&self) -> usize {
        self.network
            .parameters()
            .iter()
            .map(|(_, t)| t.numel())
            .sum()
    }

    /// Metadata every state of this model carries.
    pub fn state_meta(&self, round: u64, samples: u64) -> StateMeta {
        let mut extra = BTreeMap::new();
        extra.insert("task".into(), self.task.encode());
        extra.insert("loss".into(), self.loss.to_string());
        extra.insert("model".into(), self.source.clone());
        extra.insert("input_width".into(), self.input_width.to_string());
        // Which tensors are buffers (BatchNorm statistics), not parameters: what
        // the driver's outer optimizer must average, never extrapolate.
        let buffers: Vec<String> = self
            .network
            .buffers()
            .map(|b| b.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default();
        if !buffers.is_empty() {
            extra.insert(stoker_core::state::BUFFERS_META.into(), buffers.join(","));
        }
        StateMeta {
            model_id: self.model_id(),
            round,
            samples,
            extra,
        }
    }

    /// The model's part of a state: its parameters, then its buffers
    /// (TorchScript modules' BatchNorm statistics and other float or int64
    /// buffers, see [`Network::buffers`]), under their `state_dict` names.
    pub fn export_weights(&self) -> Result<Vec<TensorData>> {
        let mut tensors = self
            .network
            .parameters()
            .iter()
            .map(|(name, t)| crate::torch::state_tensor(name.clone(), t))
            .collect::<Result<Vec<_>>>()?;
        for (name, t) in self.network.buffers()? {
            tensors.push(crate::torch::buffer_state_tensor(name, &t)?);
        }
        Ok(tensors)
    }

    /// Loads parameters and buffers from a state of this model; a missing
    /// tensor or a shape mismatch names the tensor. A state that holds no
    /// buffer at all (written before buffers were part of states) leaves the
    /// module's own buffers as the archive has them.
    pub fn load_weights(&mut self, state: &State) -> Result<()> {
        let id = self.model_id();
        if !state.meta.model_id.is_empty() && state.meta.model_id != id {
            return Err(Error::invalid(format!(
                "state is for model '{}' but this model is '{id}' (different architecture or input width)",
                state.meta.model_id
            )));
        }
        for (name, t) in self.network.parameters() {
            let data = state
                .tensor(name)
                .ok_or_else(|| Error::invalid(format!("state has no tensor '{name}'")))?;
            let mut target = t.shallow_clone();
            copy_into(&mut target, data, t.size())?;
        }
        let buffers = self.network.buffers()?;
        if !buffers.iter().any(|(name, _)| state.tensor(name).is_some()) {
            return Ok(());
        }
        for (name, mut t) in buffers {
            let data = state.tensor(&name).ok_or_else(|| {
                Error::invalid(format!("state has no tensor for buffer '{name}'"))
            })?;
            let size = t.size();
            copy_into(&mut t, data, size)?;
        }
        Ok(())
    }

    pub(crate) fn check_width(&self, width: usize) -> Result<()> {
        if width != self.input_width {
            return Err(Error::invalid(format!(
                "model expects {} features per row, the input has {width}",
                self.input_width
            )));
        }
        Ok(())
    }

    /// Raw outputs `[rows, outputs]` for a host or device feature matrix.
    pub(crate) fn logits(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let out = self.network.forward(x, train)?;
        let width = out.size()[1] as usize;
        if width != self.task.outputs() {
            return Err(Error::invalid(format!(
                "model returns {width} outputs per row but its task ({}) needs {}",
                self.task.encode(),
                self.task.outputs()
            )));
        }
        Ok(out)
    }

    /// What the engine predicts from raw outputs: the value, P(class 1), or
    /// the class probabilities (see [`Outputs`]).
    pub(crate) fn outputs_of(&self, out: Tensor) -> Result<Tensor> {
        match self.task {
            Task::Regression => Ok(out),
            Task::Binary => out.f_sigmoid().map_err(internal("sigmoid")),
            Task::Multiclass { .. } => out.f_softmax(-1, Kind::Float).map_err(internal("softmax")),
        }
    }

    /// Predictions for a `[rows, width]` feature matrix (on any device),
    /// in chunks, in eval mode, without gradients.
    pub fn predict_tensor(&mut self, x: &Tensor) -> Result<Outputs> {
        let size = x.size();
        if size.len() != 2 {
            return Err(Error::invalid(format!(
                "features must be a matrix, got shape {size:?}"
            )));
        }
        self.check_width(size[1] as usize)?;
        let rows = size[0];
        let _guard = tch::no_grad_guard();
        let mut values = Vec::with_capacity(rows as usize * self.task.outputs());
        let mut start = 0;
        while start < rows {
            let len = INFERENCE_CHUNK.min(rows - start);
            let chunk = x
                .f_narrow(0, start, len)
                .and_then(|c| c.f_to_device(self.device))
                .map_err(internal("moving features to the device"))?;
            let out = self.logits(&chunk, false)?;
            if out.size()[0] != len {
                return Err(Error::invalid(format!(
                    "model returned {} rows of output for {len} rows of input",
                    out.size()[0]
                )));
            }
            values.extend(to_vec_f32(&self.outputs_of(out)?)?);
            start += len;
        }
        Ok(Outputs {
            task: self.task,
            values,
        })
    }

    /// Predictions for Arrow batches, converted with `layout`; `first_row`
    /// numbers the first row in errors.
    pub fn predict_batches(
        &mut self,
        batches: &[arrow::array::RecordBatch],
        layout: &FeatureLayout,
        first_row: usize,
    ) -> Result<Outputs> {
        self.check_width(layout.width())?;
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let x = filled_matrix::<f32>(rows, layout.width(), |buf| {
            layout.write_batches(batches, first_row, buf)
        })?;
        self.predict_tensor(&x)
    }

    /// The model as a TorchScript archive that plain PyTorch loads with
    /// `torch.jit.load` and that returns what this model's network returns
    /// (raw outputs: for classifiers, logits whose softmax or sigmoid is
    /// stoker's probability). A TorchScript model is the archive it came
    /// from with the current parameters and buffers written in; a built-in
    /// model is its forward traced in eval mode, its weights constants of the
    /// graph (an archive to serve, not to train further). The archive holds
    /// tensors on this model's device: see [`export_torchscript`] for one
    /// that loads anywhere.
    pub fn to_torchscript(&mut self) -> Result<Vec<u8>> {
        let traced;
        let module = match &mut self.network {
            Network::Script(s) => s.module_for_export()?,
            Network::Builtin(m) => {
                traced = m.traced(self.input_width)?;
                &traced
            }
        };
        // tch saves modules to files only.
        let dir = tempfile::tempdir()
            .map_err(|e| Error::io("creating a directory for the TorchScript export", e))?;
        let path = dir.path().join("model.pt");
        module
            .save(&path)
            .map_err(internal("writing the TorchScript archive"))?;
        std::fs::read(&path).map_err(|e| Error::io("reading the TorchScript export back", e))
    }
}

/// A trained model as a TorchScript archive for plain PyTorch
/// ([`Model::to_torchscript`]), built on the CPU so it loads on any machine:
/// what `stoker export`, the server's `export_model` action and
/// `StokerModel.exportTorchScript` return.
pub fn export_torchscript(
    source: &ModelSource,
    state: &State,
    budget: Option<&Budget>,
) -> Result<Vec<u8>> {
    Model::from_state(source, state, Device::Cpu, budget)?.to_torchscript()
}

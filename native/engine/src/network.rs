//! The network a model runs: a built-in MLP from a spec, or a TorchScript
//! module saved by PyTorch. Both expose their parameters as a named list
//! (PyTorch `state_dict` names), which the optimizer and the state format
//! use; tensors in the list share storage with the module, so updating them
//! in place updates the module.

use stoker_core::{Error, ErrorKind, Result};
use tch::{CModule, Device, Kind, Tensor};

use crate::rng::Rng;
use crate::spec::{Activation, ModelSpec};
use crate::torch::{err, internal};

/// A named parameter.
pub type Parameter = (String, Tensor);

pub enum Network {
    Builtin(Mlp),
    Script(Script),
}

impl Network {
    /// Runs the network on a batch `[rows, width]`; the result is
    /// `[rows, outputs]`.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let out = match self {
            Network::Builtin(m) => m.forward(x, train)?,
            Network::Script(s) => s.forward(x, train)?,
        };
        if out.dim() == 1 {
            return out
                .f_view([-1, 1])
                .map_err(internal("reshaping model output"));
        }
        if out.dim() != 2 {
            return Err(Error::invalid(format!(
                "model output has shape {:?}; stoker expects [rows] or [rows, outputs]",
                out.size()
            )));
        }
        Ok(out)
    }

    pub fn parameters(&self) -> &[Parameter] {
        match self {
            Network::Builtin(m) => &m.params,
            Network::Script(s) => &s.params,
        }
    }

    /// The buffers that belong in a state (TorchScript modules only: a
    /// built-in network holds nothing but its parameters). Float buffers
    /// (BatchNorm's running statistics) and int64 counters
    /// (`num_batches_tracked`) are; buffers of other types (boolean masks,
    /// lookup tables) are constants of the architecture and stay as the
    /// archive has them.
    pub fn buffers(&self) -> Result<Vec<Parameter>> {
        match self {
            Network::Builtin(_) => Ok(Vec::new()),
            Network::Script(s) => Ok(crate::buffers::named_buffers(&s.module)?
                .into_iter()
                .filter(|(_, t)| matches!(t.kind(), Kind::Float | Kind::Double | Kind::Int64))
                .collect()),
        }
    }

    /// A built-in network (its parameters are all the tensors it holds).
    pub fn is_builtin(&self) -> bool {
        matches!(self, Network::Builtin(_))
    }

    /// Whether training draws from libtorch's global random generator:
    /// built-in models with dropout, and any TorchScript module (which may
    /// hold dropout or other random layers stoker cannot see).
    pub fn uses_torch_rng(&self) -> bool {
        match self {
            Network::Builtin(m) => m.spec.dropout > 0.0,
            Network::Script(_) => true,
        }
    }

    /// `mlp`, `linear_regression`, ... or `torchscript`.
    pub fn kind(&self) -> &'static str {
        match self {
            Network::Builtin(m) => match m.spec.model_type {
                crate::spec::ModelType::LinearRegression => "linear_regression",
                crate::spec::ModelType::LogisticRegression => "logistic_regression",
                crate::spec::ModelType::Mlp => "mlp",
            },
            Network::Script(_) => "torchscript",
        }
    }

    /// A stable identifier of the architecture: kind plus a hash of the
    /// parameter names and shapes. Two networks with the same id can
    /// exchange and average states.
    pub fn model_id(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                h ^= *b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (name, t) in self.parameters() {
            feed(name.as_bytes());
            for d in t.size() {
                feed(&d.to_le_bytes());
            }
        }
        let numel: i64 = self
            .parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        format!("{}-{}p-{:016x}", self.kind(), numel, h)
    }
}

/// A multilayer perceptron; with no hidden layers it is a linear (or
/// logistic) model.
pub struct Mlp {
    pub spec: ModelSpec,
    params: Vec<Parameter>,
}

impl Mlp {
    /// Builds the layers for `input` features and `outputs` outputs and
    /// initialises them like PyTorch's `nn.Linear` (uniform in
    /// ±1/sqrt(fan_in)), from stoker's own seeded generator.
    pub fn new(
        spec: &ModelSpec,
        input: usize,
        outputs: usize,
        seed: u64,
        device: Device,
    ) -> Result<Mlp> {
        if let Some(d) = spec.input_dim {
            if d != input {
                return Err(Error::invalid(format!(
                    "model spec says input_dim {d} but the feature columns give {input} features per row"
                )));
            }
        }
        let mut rng = Rng::derive(seed, &[0x1417]);
        let mut sizes = vec![input];
        sizes.extend(&spec.hidden);
        sizes.push(outputs);
        let mut params = Vec::new();
        for (i, pair) in sizes.windows(2).enumerate() {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut init = |shape: Vec<i64>, n: usize| -> Result<Tensor> {
                let values: Vec<f32> = (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect();
                Tensor::f_from_slice(&values)
                    .and_then(|t| t.f_view(shape.as_slice()))
                    .and_then(|t| t.f_to_device(device))
                    .map(|t| t.set_requires_grad(true))
                    .map_err(internal("initialising parameters"))
            };
            let w = init(vec![fan_out as i64, fan_in as i64], fan_in * fan_out)?;
            let b = init(vec![fan_out as i64], fan_out)?;
            params.push((format!("layers.{i}.weight"), w));
            params.push((format!("layers.{i}.bias"), b));
        }
        Ok(Mlp {
            spec: spec.clone(),
            params,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let weights: Vec<&Tensor> = self.params.iter().map(|(_, t)| t).collect();
        self.forward_with(&weights, x, train)
    }

    /// The network as a TorchScript module: its forward in eval mode traced
    /// by libtorch, with the current weights as constants of the graph. The
    /// tracer refuses constants that require gradients, so it traces
    /// detached aliases of the weights (no copy).
    pub fn traced(&self, width: usize) -> Result<CModule> {
        let device = self.params.first().map_or(Device::Cpu, |(_, t)| t.device());
        let input = Tensor::f_zeros([1, width as i64], (Kind::Float, device))
            .map_err(internal("tracing input"))?;
        let detached: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, t)| t.f_detach())
            .collect::<std::result::Result<_, _>>()
            .map_err(internal("detaching weights for tracing"))?;
        let weights: Vec<&Tensor> = detached.iter().collect();
        let mut failed = None;
        let module =
            CModule::create_by_tracing("StokerMlp", "forward", &[input], &mut |xs| match self
                .forward_with(&weights, &xs[0], false)
            {
                Ok(out) => vec![out],
                Err(e) => {
                    let out = xs[0].shallow_clone();
                    failed = Some(e);
                    vec![out]
                }
            })
            .map_err(internal("tracing the built-in model"))?;
        match failed {
            Some(e) => Err(e),
            None => Ok(module),
        }
    }

    fn forward_with(&self, weights: &[&Tensor], x: &Tensor, train: bool) -> Result<Tensor> {
        let layers = weights.len() / 2;
        let mut h = x.shallow_clone();
        for i in 0..layers {
            let (w, b) = (weights[2 * i], weights[2 * i + 1]);
            h = h.f_linear(w, Some(b)).map_err(|e| {
                Error::invalid(format!(
                    "layer {i} of the model cannot take the input: {}",
                    crate::torch::clean_message(&e)
                ))
            })?;
            if i + 1 < layers {
                h = activate(&h, self.spec.activation).map_err(internal("activation"))?;
                if self.spec.dropout > 0.0 {
                    h = h
                        .f_dropout(self.spec.dropout, train)
                        .map_err(internal("dropout"))?;
                }
            }
        }
        Ok(h)
    }
}

fn activate(h: &Tensor, a: Activation) -> std::result::Result<Tensor, tch::TchError> {
    match a {
        Activation::Relu => h.f_relu(),
        Activation::Tanh => h.f_tanh(),
        Activation::Sigmoid => h.f_sigmoid(),
        Activation::Gelu => h.f_gelu("none"),
        Activation::LeakyRelu => h.f_leaky_relu(),
        Activation::Silu => h.f_silu(),
    }
}

/// A TorchScript module (`torch.jit.save`), trainable: its parameters are
/// updated in place by the optimizer.
pub struct Script {
    module: CModule,
    params: Vec<Parameter>,
    training: Option<bool>,
}

impl Script {
    /// Loads a module from bytes onto `device`. Bytes that are not a
    /// TorchScript archive are an `InvalidInput` error.
    pub fn load(bytes: &[u8], device: Device) -> Result<Script> {
        let mut reader = std::io::Cursor::new(bytes);
        let module = CModule::load_data_on_device(&mut reader, device).map_err(err(
            ErrorKind::InvalidInput,
            "TorchScript model could not be loaded (is it a file written by torch.jit.save?)",
        ))?;
        let params = module.named_parameters().map_err(err(
            ErrorKind::InvalidInput,
            "reading TorchScript parameters",
        ))?;
        if params.is_empty() {
            return Err(Error::invalid(
                "TorchScript model has no parameters to train",
            ));
        }
        for (name, t) in &params {
            if t.kind() != Kind::Float {
                return Err(Error::invalid(format!(
                    "TorchScript parameter '{name}' is {:?}; stoker trains float32 models",
                    t.kind()
                )));
            }
        }
        Ok(Script {
            module,
            params,
            training: None,
        })
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.training != Some(train) {
            let r = if train {
                self.module.f_set_train()
            } else {
                self.module.f_set_eval()
            };
            r.map_err(internal("switching TorchScript train/eval mode"))?;
            self.training = Some(train);
        }
        self.module.forward_ts(&[x]).map_err(|e| {
            Error::invalid(format!(
                "TorchScript model failed on a batch of shape {:?}: {}",
                x.size(),
                crate::torch::clean_message(&e)
            ))
        })
    }

    /// The module in eval mode, with its current parameters and buffers:
    /// what an export saves, so `torch.jit.load` gives a module that
    /// predicts as `transform` does without a call to `.eval()`.
    pub fn module_for_export(&mut self) -> Result<&CModule> {
        if self.training != Some(false) {
            self.module
                .f_set_eval()
                .map_err(internal("switching TorchScript to eval mode"))?;
            self.training = Some(false);
        }
        Ok(&self.module)
    }
}

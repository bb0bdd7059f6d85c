//! Optimizers whose state is plain named tensors, so it can be exported,
//! averaged across partitions and loaded back (tch's optimizers hide their
//! state inside libtorch). The update rules follow `torch.optim.SGD`,
//! `Adam` and `AdamW` (non-amsgrad, non-foreach), so a model trained here and
//! in PyTorch from the same weights and batches follows the same path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use stoker_core::state::OPTIMIZER_PREFIX;
use stoker_core::{Error, Result, TensorData};
use tch::{Kind, Tensor};

use crate::network::Parameter;
use crate::torch::internal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    #[serde(alias = "adam_w")]
    Adamw,
}

impl FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::Adamw),
            _ => Err(Error::invalid(format!(
                "unknown optimizer '{s}'; expected sgd, adam or adamw"
            ))),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::Adamw => "adamw",
        })
    }
}

/// Optimizer settings. Defaults: Adam, lr 1e-3, PyTorch's betas and eps,
/// no weight decay (AdamW defaults to 0.01 as in PyTorch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    #[serde(rename = "name")]
    pub kind: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: Option<f64>,
    /// The learning rate's schedule across rounds (constant by default).
    pub schedule: crate::schedule::Schedule,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.0,
            nesterov: false,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: None,
            schedule: Default::default(),
        }
    }
}

impl OptimizerConfig {
    pub fn weight_decay(&self) -> f64 {
        self.weight_decay.unwrap_or(match self.kind {
            OptimizerKind::Adamw => 0.01,
            _ => 0.0,
        })
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(format!(
                "learning rate must be positive, got {}",
                self.lr
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::invalid(format!(
                "momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err(Error::invalid("Adam betas must be in [0, 1)"));
        }
        if self.weight_decay() < 0.0 || self.eps <= 0.0 {
            return Err(Error::invalid("weight decay must be >= 0 and eps > 0"));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(Error::invalid("nesterov needs a momentum > 0"));
        }
        self.schedule.validate()
    }

    fn slots(&self) -> &'static [&'static str] {
        match self.kind {
            OptimizerKind::Sgd if self.momentum > 0.0 => &["momentum_buffer"],
            OptimizerKind::Sgd => &[],
            OptimizerKind::Adam | OptimizerKind::Adamw => &["exp_avg", "exp_avg_sq"],
        }
    }
}

/// An optimizer with its state: per-parameter slots and the step count.
pub struct Optimizer {
    config: OptimizerConfig,
    /// `slots[i][k]` is slot `k` of parameter `i`.
    slots: Vec<Vec<Tensor>>,
    step: i64,
    /// Room for a step's intermediates (see [`Optimizer::step`]).
    scratch: Option<Tensor>,
    /// The schedule's factor of the learning rate for the next steps.
    lr_scale: f64,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, params: &[Parameter]) -> Result<Optimizer> {
        config.validate()?;
        let slots = params
            .iter()
            .map(|(_, p)| {
                config
                    .slots()
                    .iter()
                    .map(|_| p.f_zeros_like().map_err(internal("optimizer state")))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Optimizer {
            config,
            slots,
            step: 0,
            scratch: None,
            lr_scale: 1.0,
        })
    }

    /// Scales the learning rate of the steps that follow (the schedule's
    /// factor at this point of training).
    pub fn set_lr_scale(&mut self, scale: f64) {
        self.lr_scale = scale;
    }

    /// The learning rate the next step uses.
    pub fn learning_rate(&self) -> f64 {
        self.config.lr * self.lr_scale
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Back to a fresh optimizer's state (zero slots, step 0), in place.
    pub fn reset(&mut self) -> Result<()> {
        if self.step == 0 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        for t in self.slots.iter_mut().flatten() {
            let _ = t.f_zero_().map_err(internal("optimizer reset"))?;
        }
        self.step = 0;
        Ok(())
    }

    /// Clears the gradients of `params` before a backward pass.
    pub fn zero_grad(&self, params: &[Parameter]) -> Result<()> {
        for (_, p) in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_detach_().map_err(internal("zero_grad"))?;
                let _ = g.f_zero_().map_err(internal("zero_grad"))?;
            }
        }
        Ok(())
    }

    /// One update of every parameter from its gradient, in place: every
    /// intermediate goes into one scratch buffer kept across steps (and
    /// rounds, when the trainer is reused), so a step allocates nothing the
    /// size of the model; fresh multi-megabyte temporaries cost more in page
    /// faults than the arithmetic itself.
    pub fn step(&mut self, params: &[Parameter]) -> Result<()> {
        self.step += 1;
        let _guard = tch::no_grad_guard();
        let scratch = self.scratch(params)?;
        let c = &self.config;
        let lr = c.lr * self.lr_scale;
        let wd = c.weight_decay();
        let t = self.step as i32;
        for ((_, p), slots) in params.iter().zip(self.slots.iter_mut()) {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            let mut p = p.shallow_clone();
            let r: std::result::Result<(), tch::TchError> = (|| {
                let mut s = scratch
                    .f_narrow(0, 0, p.numel() as i64)?
                    .f_view(p.size().as_slice())?;
                if wd > 0.0 && c.kind != OptimizerKind::Adamw {
                    // The gradient is recomputed from zero every step: adding the
                    // decay to it in place is what `grad.add(param, alpha=wd)` does.
                    let _ = p.f_mul_scalar_out(&s, wd)?;
                    let _ = g.f_add_(&s)?;
                }
                match c.kind {
                    OptimizerKind::Sgd => {
                        let direction = match slots.first_mut() {
                            Some(buf) => {
                                let _ = buf.f_mul_scalar_(c.momentum)?;
                                let _ = buf.f_add_(&g)?;
                                if c.nesterov {
                                    let _ = buf.f_mul_scalar_out(&s, c.momentum)?;
                                    let _ = s.f_add_(&g)?;
                                    s.shallow_clone()
                                } else {
                                    buf.shallow_clone()
                                }
                            }
                            None => g.shallow_clone(),
                        };
                        let _ = direction.f_mul_scalar_out(&s, lr)?;
                        let _ = p.f_sub_(&s)?;
                    }
                    OptimizerKind::Adam | OptimizerKind::Adamw => {
                        if c.kind == OptimizerKind::Adamw && wd > 0.0 {
                            let _ = p.f_mul_scalar_(1.0 - lr * wd)?;
                        }
                        let (m, rest) = slots.split_at_mut(1);
                        let (m, v) = (&mut m[0], &mut rest[0]);
                        // m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
                        let _ = m.f_lerp_(&g, 1.0 - c.beta1)?;
                        let _ = g.f_mul_out(&s, &g)?;
                        let _ = v.f_lerp_(&s, 1.0 - c.beta2)?;
                        let bc1 = 1.0 - c.beta1.powi(t);
                        let bc2 = 1.0 - c.beta2.powi(t);
                        // p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
                        let _ = v.f_sqrt_out(&s)?;
                        let _ = s.f_div_scalar_(bc2.sqrt())?;
                        let _ = s.f_add_scalar_(c.eps)?;
                        let _ = m.f_div_out(&s, &s)?;
                        let _ = s.f_mul_scalar_(lr / bc1)?;
                        let _ = p.f_sub_(&s)?;
                    }
                }
                Ok(())
            })();
            r.map_err(internal("optimizer step"))?;
        }
        Ok(())
    }

    /// A flat buffer as large as the largest parameter, on its device.
    fn scratch(&mut self, params: &[Parameter]) -> Result<Tensor> {
        let largest = params.iter().map(|(_, p)| p.numel()).max().unwrap_or(0) as i64;
        if let Some(s) = &self.scratch {
            if s.numel() as i64 >= largest {
                return Ok(s.shallow_clone());
            }
        }
        let device = params
            .first()
            .map(|(_, p)| p.device())
            .unwrap_or(tch::Device::Cpu);
        let s = Tensor::f_empty([largest.max(1)], (Kind::Float, device))
            .map_err(internal("optimizer scratch"))?;
        self.scratch = Some(s.shallow_clone());
        Ok(s)
    }

    /// The optimizer state as named tensors:
    /// `optimizer/<param>/<slot>` and `optimizer/step`.
    pub fn export(&self, params: &[Parameter]) -> Result<Vec<TensorData>> {
        let mut out = Vec::new();
        for ((name, _), slots) in params.iter().zip(&self.slots) {
            for (slot, t) in self.config.slots().iter().zip(slots) {
                out.push(crate::torch::state_tensor(
                    format!("{OPTIMIZER_PREFIX}{name}/{slot}"),
                    t,
                )?);
            }
        }
        out.push(TensorData {
            name: format!("{OPTIMIZER_PREFIX}step"),
            dtype: stoker_core::state::DType::I64,
            shape: vec![],
            data: self.step.to_le_bytes().to_vec().into(),
        });
        Ok(out)
    }

    /// Loads optimizer state written by [`Optimizer::export`] for the same
    /// parameters. A state without optimizer tensors leaves a fresh
    /// optimizer (weights-only states are valid input): one that has
    /// stepped is reset, so a reused trainer starts like a new one.
    pub fn import(&mut self, params: &[Parameter], state: &stoker_core::State) -> Result<()> {
        let Some(step) = state.tensor(&format!("{OPTIMIZER_PREFIX}step")) else {
            return self.reset();
        };
        let step = step.to_f64().first().copied().unwrap_or(0.0);
        let _guard = tch::no_grad_guard();
        for ((name, p), slots) in params.iter().zip(self.slots.iter_mut()) {
            for (slot, t) in self.config.slots().iter().zip(slots.iter_mut()) {
                let key = format!("{OPTIMIZER_PREFIX}{name}/{slot}");
                let data = state.tensor(&key).ok_or_else(|| {
                    Error::invalid(format!(
                        "state has no optimizer tensor '{key}'; was it written with another optimizer than {}?",
                        self.config.kind
                    ))
                })?;
                copy_into(t, data, p.size())?;
            }
        }
        self.step = step.round() as i64;
        Ok(())
    }
}

/// Copies a state tensor into a live tensor of the same shape.
pub fn copy_into(target: &mut Tensor, data: &TensorData, expected: Vec<i64>) -> Result<()> {
    let shape: Vec<i64> = data.shape.iter().map(|&d| d as i64).collect();
    if shape != expected {
        return Err(Error::invalid(format!(
            "tensor '{}' has shape {:?} in the state but {:?} in the model",
            data.name, data.shape, expected
        )));
    }
    crate::torch::copy_from_state(target, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            "AdamW".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::Adamw
        );
        assert_eq!("sgd".parse::<OptimizerKind>().unwrap(), OptimizerKind::Sgd);
        assert!("lbfgs".parse::<OptimizerKind>().is_err());
    }

    #[test]
    fn config_validation() {
        let mut c = OptimizerConfig {
            lr: -1.0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .message()
            .contains("learning rate"));
        c.lr = 0.1;
        c.nesterov = true;
        assert!(c.validate().is_err());
        let j: OptimizerConfig =
            serde_json::from_str(r#"{"name":"sgd","lr":0.1,"momentum":0.9}"#).unwrap();
        assert_eq!(j.kind, OptimizerKind::Sgd);
        assert!(j.validate().is_ok());
    }

    fn quadratic_steps(config: OptimizerConfig) -> Vec<f32> {
        // Minimise sum((p - 3)^2) from p = 0.
        let p = Tensor::from_slice(&[0f32, 1.0]).set_requires_grad(true);
        let params = vec![("p".to_string(), p)];
        let mut opt = Optimizer::new(config, &params).unwrap();
        for _ in 0..200 {
            opt.zero_grad(&params).unwrap();
            let loss = (&params[0].1 - 3.0).pow_tensor_scalar(2).sum(Kind::Float);
            loss.backward();
            opt.step(&params).unwrap();
        }
        crate::torch::to_vec_f32(&params[0].1).unwrap()
    }

    #[test]
    fn every_optimizer_converges_on_a_quadratic() {
        for config in [
            OptimizerConfig {
                kind: OptimizerKind::Sgd,
                lr: 0.05,
                ..Default::default()
            },
            OptimizerConfig {
                kind: OptimizerKind::Sgd,
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            },
            OptimizerConfig {
                kind: OptimizerKind::Adam,
                lr: 0.1,
                ..Default::default()
            },
            OptimizerConfig {
                kind: OptimizerKind::Adamw,
                lr: 0.1,
                weight_decay: Some(0.0),
                ..Default::default()
            },
        ] {
            let v = quadratic_steps(config.clone());
            for x in v {
                assert!((x - 3.0).abs() < 0.05, "{config:?} ended at {x}");
            }
        }
    }

    #[test]
    fn state_exports_and_imports() {
        let p = Tensor::from_slice(&[1f32, 2.0]).set_requires_grad(true);
        let params = vec![("w".to_string(), p)];
        let mut opt = Optimizer::new(OptimizerConfig::default(), &params).unwrap();
        let loss = (&params[0].1 * 2.0).sum(Kind::Float);
        loss.backward();
        opt.step(&params).unwrap();
        let exported = opt.export(&params).unwrap();
        let names: Vec<_> = exported.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "optimizer/w/exp_avg",
                "optimizer/w/exp_avg_sq",
                "optimizer/step"
            ]
        );
        let state = stoker_core::State {
            tensors: exported,
            ..Default::default()
        };
        let mut fresh = Optimizer::new(OptimizerConfig::default(), &params).unwrap();
        fresh.import(&params, &state).unwrap();
        assert_eq!(fresh.steps(), 1);
        assert_eq!(fresh.export(&params).unwrap(), state.tensors);
    }
}

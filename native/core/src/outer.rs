//! The outer optimizer: Nesterov momentum applied on the driver to a round's
//! averaged change, as DiLoCo (Douillard et al., arXiv 2311.08105) and
//! FedAvg with server momentum do.
//!
//! Plain averaging sets the next state to the partitions' mean. The outer
//! step instead treats the round's change as a pseudo-gradient,
//! `g = previous − averaged`, keeps a momentum of it across rounds and takes
//! a Nesterov step from the previous state:
//!
//! ```text
//! m    = μ·m + g
//! next = previous − η·(g + μ·m)
//! ```
//!
//! With η = 1 and μ = 0 this is plain averaging. It moves parameters only:
//! optimizer tensors (the inner Adam moments, averaged) and buffers
//! (BatchNorm statistics, named by the state's `buffers` metadata) keep
//! their averages, since extrapolating a running variance can make it
//! negative. The momentum is a state of its own (the parameters' shapes,
//! float32) that the driver keeps and checkpoints between rounds.

use std::collections::{BTreeMap, HashSet};

use crate::error::{Error, Result};
use crate::state::{decode, encode, State, StateMeta, TensorData, BUFFERS_META, OPTIMIZER_PREFIX};

/// Model id recorded in a momentum state (its `model_id` is the model's).
const MOMENTUM_FORMAT_NOTE: &str = "outer_momentum";

/// One outer step: the next state (the averaged one with its parameters
/// moved) and the new momentum. `momentum` is None before the first step.
pub fn nesterov_step(
    previous: &[u8],
    averaged: &[u8],
    momentum: Option<&[u8]>,
    lr: f64,
    mu: f64,
) -> Result<(Vec<u8>, Vec<u8>)> {
    if !(lr.is_finite() && lr > 0.0 && (0.0..1.0).contains(&mu)) {
        return Err(Error::invalid(format!(
            "outer learning rate must be positive and momentum in [0, 1); got {lr} and {mu}"
        )));
    }
    let previous = State::from_bytes(previous).map_err(|e| e.context("previous state"))?;
    let mut averaged = State::from_bytes(averaged).map_err(|e| e.context("averaged state"))?;
    if previous.meta.model_id != averaged.meta.model_id {
        return Err(Error::invalid(format!(
            "the previous state is of model '{}', the averaged one of '{}'",
            previous.meta.model_id, averaged.meta.model_id
        )));
    }
    let momentum = momentum
        .map(State::from_bytes)
        .transpose()
        .map_err(|e| e.context("outer momentum"))?;
    let old: BTreeMap<&str, &TensorData> = momentum
        .as_ref()
        .map(|m| m.tensors.iter().map(|t| (t.name.as_str(), t)).collect())
        .unwrap_or_default();
    let before: BTreeMap<&str, &TensorData> = previous
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let buffers: HashSet<String> = averaged
        .meta
        .extra
        .get(BUFFERS_META)
        .map(|b| crate::protocol::column_list(b).into_iter().collect())
        .unwrap_or_default();
    let mut next_momentum = Vec::new();
    for t in averaged.tensors.iter_mut() {
        if t.name.starts_with(OPTIMIZER_PREFIX) || buffers.contains(&t.name) {
            continue;
        }
        if t.dtype == crate::state::DType::I64 {
            continue;
        }
        let p = before.get(t.name.as_str()).ok_or_else(|| {
            Error::invalid(format!("the previous state has no tensor '{}'", t.name))
        })?;
        if p.shape != t.shape {
            return Err(Error::invalid(format!(
                "tensor '{}' is {:?} in the previous state, {:?} in the averaged one",
                t.name, p.shape, t.shape
            )));
        }
        let m_old = match old.get(t.name.as_str()) {
            Some(m) if m.shape == t.shape => m.to_f64(),
            Some(m) => {
                return Err(Error::invalid(format!(
                    "outer momentum of '{}' is {:?}, the tensor {:?}",
                    t.name, m.shape, t.shape
                )))
            }
            None => vec![0.0; t.numel()],
        };
        let (prev, avg) = (decode(p.dtype, &p.data), decode(t.dtype, &t.data));
        let mut m_new = Vec::with_capacity(avg.len());
        let mut next = Vec::with_capacity(avg.len());
        for i in 0..avg.len() {
            let g = prev[i] - avg[i];
            let m = mu * m_old[i] + g;
            m_new.push(m);
            next.push(prev[i] - lr * (g + mu * m));
        }
        t.data = encode(t.dtype, &next).into();
        next_momentum.push(TensorData {
            name: t.name.clone(),
            dtype: crate::state::DType::F32,
            shape: t.shape.clone(),
            data: encode(crate::state::DType::F32, &m_new).into(),
        });
    }
    let mut extra = BTreeMap::new();
    extra.insert("kind".into(), MOMENTUM_FORMAT_NOTE.into());
    let momentum = State {
        meta: StateMeta {
            model_id: averaged.meta.model_id.clone(),
            round: averaged.meta.round,
            samples: 0,
            extra,
        },
        tensors: next_momentum,
    };
    Ok((averaged.to_bytes()?, momentum.to_bytes()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(values: &[f32], bn: f32, adam: f32) -> Vec<u8> {
        let mut extra = BTreeMap::new();
        extra.insert(BUFFERS_META.to_string(), "bn.running_var".to_string());
        State {
            meta: StateMeta {
                model_id: "m".into(),
                round: 1,
                samples: 10,
                extra,
            },
            tensors: vec![
                TensorData::from_f32("w", vec![values.len()], values),
                TensorData::from_f32("bn.running_var", vec![1], &[bn]),
                TensorData::from_f32(
                    "optimizer/w/exp_avg",
                    vec![values.len()],
                    &vec![adam; values.len()],
                ),
            ],
        }
        .to_bytes()
        .unwrap()
    }

    fn tensor(bytes: &[u8], name: &str) -> Vec<f32> {
        State::from_bytes(bytes)
            .unwrap()
            .tensor(name)
            .unwrap()
            .to_f32()
    }

    #[test]
    fn unit_rate_without_momentum_is_plain_averaging() {
        let (next, m) = nesterov_step(
            &state(&[1.0, 2.0], 1.0, 0.0),
            &state(&[0.5, 3.0], 0.2, 0.3),
            None,
            1.0,
            0.0,
        )
        .unwrap();
        assert_eq!(tensor(&next, "w"), [0.5, 3.0]);
        assert_eq!(tensor(&m, "w"), [0.5, -1.0]);
    }

    #[test]
    fn nesterov_moves_parameters_only_and_carries_momentum() {
        let prev = state(&[1.0], 1.0, 0.0);
        let avg = state(&[0.8], 0.5, 0.7);
        // g = 0.2; m = 0.2; next = 1 - 0.7 * (0.2 + 0.9 * 0.2) = 0.734
        let (next, m) = nesterov_step(&prev, &avg, None, 0.7, 0.9).unwrap();
        assert!((tensor(&next, "w")[0] - 0.734).abs() < 1e-6);
        // Buffers and optimizer tensors keep their averages.
        assert_eq!(tensor(&next, "bn.running_var"), [0.5]);
        assert_eq!(tensor(&next, "optimizer/w/exp_avg"), [0.7]);
        assert!(State::from_bytes(&m)
            .unwrap()
            .tensor("bn.running_var")
            .is_none());
        // The next round: g = 0.734 - 0.634 = 0.1; m = 0.9 * 0.2 + 0.1 = 0.28;
        // next = 0.734 - 0.7 * (0.1 + 0.9 * 0.28) = 0.4876
        let (next2, m2) =
            nesterov_step(&next, &state(&[0.634], 0.5, 0.7), Some(&m), 0.7, 0.9).unwrap();
        assert!((tensor(&m2, "w")[0] - 0.28).abs() < 1e-6);
        assert!((tensor(&next2, "w")[0] - 0.4876).abs() < 1e-6);
    }

    #[test]
    fn mismatches_and_bad_settings_are_refused_by_name() {
        let a = state(&[1.0], 1.0, 0.0);
        let b = state(&[1.0, 2.0], 1.0, 0.0);
        let e = nesterov_step(&a, &b, None, 0.7, 0.9)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor 'w'"), "{e}");
        let e = nesterov_step(&a, &a, None, 0.7, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("momentum in [0, 1)"), "{e}");
        assert!(nesterov_step(&a, b"junk", None, 1.0, 0.0).is_err());
    }
}

//! Weighted averaging of states in place, on their serialized bytes: what a
//! round's aggregation runs on the Spark driver and executors.
//!
//! A partial result of averaging is a state itself (the weighted mean of the
//! states merged into it, in their own dtypes) plus its weight, the samples it
//! covers. Merging another partial updates the first one's bytes in place,
//! `mean += w_b / (w_a + w_b) * (b - mean)`, so a round allocates nothing the
//! size of a state, a trained state is its own partial (no conversion), and a
//! partial is no larger than a state. [`WeightedSum`](crate::averaging::WeightedSum)
//! keeps float64 sums instead; this trades its last bits of precision (float32
//! rounding per merge, about 1e-7 relative) for a third of the bytes and passes.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::state::{corrupt, FORMAT};

/// Where one tensor's bytes lie in a serialized state.
struct Slot {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The tensors of a serialized state by name, and its model id.
fn layout(bytes: &[u8], what: &str) -> Result<(String, HashMap<String, Slot>)> {
    let (header_len, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| corrupt(format!("{what}: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(corrupt(format!("{what} has no stoker 'format' metadata")));
    }
    let base = 8 + header_len;
    let mut slots = HashMap::new();
    for (name, info) in header.tensors() {
        let (start, end) = (base + info.data_offsets.0, base + info.data_offsets.1);
        if end > bytes.len() || start > end {
            return Err(corrupt(format!(
                "{what}: tensor '{name}' lies outside the bytes"
            )));
        }
        slots.insert(
            name.clone(),
            Slot {
                dtype: info.dtype,
                shape: info.shape.clone(),
                start,
                end,
            },
        );
    }
    Ok((meta.get("model_id").cloned().unwrap_or_default(), slots))
}

/// Merges `other` (weight `other_weight`) into `mean` (weight `mean_weight`)
/// in place: afterwards `mean` holds the weighted mean of both, with weight
/// `mean_weight + other_weight`. Both must be states of one model with the
/// same tensors, dtypes and shapes; a mismatch names the tensor. Metadata is
/// left as `mean`'s (see [`with_samples`]). Integer tensors (the optimizer's
/// step count) are rounded.
pub fn merge(mean: &mut [u8], mean_weight: f64, other: &[u8], other_weight: f64) -> Result<()> {
    check_weights(mean_weight, other_weight)?;
    let (mine_id, mine) = layout(mean, "the first state")?;
    let (theirs_id, theirs) = layout(other, "the second state")?;
    if mine_id != theirs_id {
        return Err(Error::invalid(format!(
            "states of models '{mine_id}' and '{theirs_id}' cannot be averaged"
        )));
    }
    if let Some(name) = theirs.keys().find(|n| !mine.contains_key(*n)) {
        return Err(Error::invalid(format!(
            "the second state has tensor '{name}' that the first lacks"
        )));
    }
    // Every tensor is checked before any is changed: a refused merge leaves
    // the mean as it was.
    let mut pairs = Vec::with_capacity(mine.len());
    for (name, a) in &mine {
        let b = theirs
            .get(name)
            .ok_or_else(|| Error::invalid(format!("the second state lacks tensor '{name}'")))?;
        if a.dtype != b.dtype || a.shape != b.shape || a.end - a.start != b.end - b.start {
            return Err(Error::invalid(format!(
                "tensor '{name}' is {:?}{:?} in the first state but {:?}{:?} in the second",
                a.dtype, a.shape, b.dtype, b.shape
            )));
        }
        if !matches!(a.dtype, Dtype::F32 | Dtype::F64 | Dtype::I64) {
            return Err(Error::invalid(format!(
                "tensor '{name}' has dtype {:?}; states hold F32, F64 or I64",
                a.dtype
            )));
        }
        pairs.push((a, b));
    }
    let share = other_weight / (mean_weight + other_weight);
    for (a, b) in pairs {
        let (dst, src) = (&mut mean[a.start..a.end], &other[b.start..b.end]);
        match a.dtype {
            Dtype::F32 => lerp::<4>(dst, src, |d, s| {
                let (d, s) = (f32::from_le_bytes(d), f32::from_le_bytes(s));
                (d + share as f32 * (s - d)).to_le_bytes()
            }),
            Dtype::F64 => lerp::<8>(dst, src, |d, s| {
                let (d, s) = (f64::from_le_bytes(d), f64::from_le_bytes(s));
                (d + share * (s - d)).to_le_bytes()
            }),
            _ => lerp::<8>(dst, src, |d, s| {
                let (d, s) = (i64::from_le_bytes(d) as f64, i64::from_le_bytes(s) as f64);
                ((d + share * (s - d)).round() as i64).to_le_bytes()
            }),
        }
    }
    Ok(())
}

/// Both weights of a merge are positive and finite.
pub fn check_weights(mean_weight: f64, other_weight: f64) -> Result<()> {
    for (w, what) in [(mean_weight, "first"), (other_weight, "second")] {
        if !(w.is_finite() && w > 0.0) {
            return Err(Error::invalid(format!(
                "the {what} state's weight must be positive, got {w}"
            )));
        }
    }
    Ok(())
}

/// `dst[i] = f(dst[i], src[i])` over N-byte elements (equal lengths).
fn lerp<const N: usize>(dst: &mut [u8], src: &[u8], f: impl Fn([u8; N], [u8; N]) -> [u8; N]) {
    for (d, s) in dst.chunks_exact_mut(N).zip(src.chunks_exact(N)) {
        let mut a = [0u8; N];
        a.copy_from_slice(d);
        let mut b = [0u8; N];
        b.copy_from_slice(s);
        d.copy_from_slice(&f(a, b));
    }
}

/// The state with its `samples` metadata set (a merged mean covers the
/// samples of every state merged into it): the header is rewritten, the
/// tensor bytes copied once.
pub fn with_samples(state: &[u8], samples: u64) -> Result<Vec<u8>> {
    let (header_len, _) = SafeTensors::read_metadata(state).map_err(corrupt)?;
    let text = &state[8..8 + header_len];
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(text).map_err(corrupt)?;
    let meta = header
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| corrupt("no metadata"))?;
    meta.insert("samples".into(), samples.to_string().into());
    let mut json =
        serde_json::to_vec(&header).map_err(|e| Error::internal(format!("state header: {e}")))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let data = &state[8 + header_len..];
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::averaging::average;
    use crate::state::{State, StateMeta, TensorData};

    fn state(w: &[f32], step: i64, samples: u64) -> Vec<u8> {
        State {
            meta: StateMeta {
                model_id: "m".into(),
                round: 1,
                samples,
                extra: Default::default(),
            },
            tensors: vec![
                TensorData::from_f32("w", vec![2, 2], w),
                TensorData {
                    name: "optimizer/step".into(),
                    dtype: crate::state::DType::I64,
                    shape: vec![],
                    data: step.to_le_bytes().to_vec().into(),
                },
            ],
        }
        .to_bytes()
        .unwrap()
    }

    #[test]
    fn merging_in_any_order_gives_the_weighted_average() {
        let states = [
            (state(&[1.0, 2.0, 3.0, 4.0], 10, 100), 100.0),
            (state(&[5.0, -2.0, 0.5, 8.0], 12, 300), 300.0),
            (state(&[0.0, 1.0, 1.0, -4.0], 14, 50), 50.0),
        ];
        let expected = average::<_, crate::Error>(states.iter().map(|(b, w)| Ok((b, *w)))).unwrap();
        // ((a + b) + c) and (a + (c + b)): tree aggregation merges in any shape.
        let mut left = states[0].0.clone();
        merge(&mut left, 100.0, &states[1].0, 300.0).unwrap();
        merge(&mut left, 400.0, &states[2].0, 50.0).unwrap();
        let mut right = states[2].0.clone();
        merge(&mut right, 50.0, &states[1].0, 300.0).unwrap();
        let mut first = states[0].0.clone();
        merge(&mut first, 100.0, &right, 350.0).unwrap();
        for merged in [left, first] {
            let got = State::from_bytes(&with_samples(&merged, 450).unwrap()).unwrap();
            assert_eq!(got.meta.samples, 450);
            for (g, e) in got.tensors.iter().zip(&expected.tensors) {
                assert_eq!(g.name, e.name);
                for (x, y) in g.to_f64().iter().zip(e.to_f64()) {
                    assert!((x - y).abs() < 1e-5, "{}: {x} vs {y}", g.name);
                }
            }
        }
    }

    #[test]
    fn mismatches_name_the_tensor_and_leave_the_mean_alone() {
        let mut a = state(&[1.0, 2.0, 3.0, 4.0], 1, 1);
        let before = a.clone();
        let other = State {
            meta: StateMeta {
                model_id: "m".into(),
                ..Default::default()
            },
            tensors: vec![TensorData::from_f32("w", vec![4], &[1.0; 4])],
        }
        .to_bytes()
        .unwrap();
        let err = merge(&mut a, 1.0, &other, 1.0).unwrap_err().to_string();
        assert!(
            err.contains("'optimizer/step'") || err.contains("'w'"),
            "{err}"
        );
        assert!(merge(&mut a, 0.0, &before, 1.0).is_err());
        assert!(merge(&mut a, 1.0, b"junk", 1.0).is_err());
        assert_eq!(a, before);
    }
}

//! `state`: a state's bytes as a client sends them (`train_round`'s and
//! `register_model`'s `state` blob, the driver's averaging input): read
//! with `State::from_bytes`, `State::from_shared` and `StateMeta::read`
//! (which must agree), written back (`to_bytes` must read back equal),
//! averaged with itself (weights 1 and 2, `averaging::average`) and summed
//! as a partial sum that travels (`WeightedSum`). A state that names a
//! built-in model spec small enough to build (a 4 MiB budget) is loaded as
//! the server loads one: `Model::from_state` within a 64 MiB serving budget
//! (`register_model`), and into a trainer with its optimizer state
//! (`train_round`).

use bytes::Bytes;
use stoker_core::averaging::{average, WeightedSum};
use stoker_core::state::{DType, StateMeta};
use stoker_core::{Error, Loss, Result, State, TensorData};
use stoker_engine::model::{Model, ModelSource};
use stoker_engine::{Budget, Device, ModelSpec, OptimizerConfig, OptimizerKind, Trainer};

use super::{byte_mutator, check, reached, refused, Target};
use crate::mutate::{mutate_bytes, mutate_json, random_value, Rng};

pub fn target() -> Target {
    Target {
        name: "state",
        about: "state bytes -> State::from_bytes, StateMeta::read, to_bytes, averaging::average, WeightedSum -> Model::from_state, Trainer::load_state",
        seeds,
        run,
        mutate,
    }
}

/// A safetensors file's JSON header and the bytes after it.
fn split(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    Some((header, &bytes[8 + n..]))
}

/// Joins a header and data into a safetensors file (the length prefix
/// usually right).
fn join(rng: &mut Rng, header: &[u8], data: &[u8]) -> Vec<u8> {
    let n = match rng.below(16) {
        0 => rng.next_u64(),
        1 => header.len() as u64 + 1,
        2 => (header.len() as u64).wrapping_sub(1),
        _ => header.len() as u64,
    };
    let mut out = n.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// Metadata keys the readers and the engine look at.
const META_KEYS: &[&str] = &[
    "format",
    "model_id",
    "round",
    "samples",
    "model",
    "loss",
    "input_width",
    "task",
    "optimizer",
    "features",
    "label",
];

/// Half the time bytes; otherwise structure-aware: the JSON header mutated
/// as JSON (dtypes, shapes, offsets, metadata), a metadata value replaced
/// (the model spec it names mutated as JSON), or the tensor bytes mutated
/// under an intact header.
fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let parts = split(seed);
    let Some((header, data)) = parts.filter(|_| !rng.one_in(2)) else {
        return byte_mutator(rng, seed, others);
    };
    match rng.below(4) {
        0 | 1 => {
            let headers: Vec<Vec<u8>> = others
                .iter()
                .filter_map(|o| split(o).map(|(h, _)| h.to_vec()))
                .collect();
            let header = mutate_json(rng, header, &headers);
            join(rng, &header, data)
        }
        2 => {
            let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(header) else {
                return byte_mutator(rng, seed, others);
            };
            let key = rng.pick(META_KEYS).copied().unwrap_or("model");
            if let Some(meta) = json.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
                let old = meta.get(key).and_then(|v| v.as_str()).unwrap_or("{}");
                let new = if old.trim_start().starts_with('{') && !rng.one_in(4) {
                    let spec = mutate_json(rng, old.as_bytes(), &[]);
                    String::from_utf8_lossy(&spec).into_owned()
                } else {
                    match random_value(rng, 2) {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    }
                };
                meta.insert(key.to_string(), new.into());
            }
            let header = serde_json::to_vec(&json).unwrap_or_default();
            join(rng, &header, data)
        }
        _ => {
            let mut data = data.to_vec();
            mutate_bytes(rng, &mut data, &[]);
            join(rng, header, &data)
        }
    }
}

const BUDGET_BYTES: usize = 64 << 20;
const BUILD_BYTES: usize = 4 << 20;

fn tensor(name: &str, dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> TensorData {
    TensorData {
        name: name.into(),
        dtype,
        shape,
        data: data.into(),
    }
}

/// Synthetic states: parameters, optimizer slots and step, every dtype,
/// scalars and empty tensors, free-form metadata.
fn synthetic() -> Vec<State> {
    let meta = |samples| StateMeta {
        model_id: "m1".into(),
        round: 3,
        samples,
        extra: [
            ("task".to_string(), "regression".to_string()),
            ("features".to_string(), "a,b".to_string()),
        ]
        .into(),
    };
    vec![
        State {
            meta: meta(40),
            tensors: vec![
                TensorData::from_f32("fc.bias", vec![1], &[0.5]),
                TensorData::from_f32("fc.weight", vec![1, 3], &[1.0, -2.0, 3.0]),
                TensorData::from_f32("optimizer/fc.weight/exp_avg", vec![1, 3], &[0.1; 3]),
                TensorData::from_f32("optimizer/fc.weight/exp_avg_sq", vec![1, 3], &[0.01; 3]),
                tensor(
                    "optimizer/step",
                    DType::I64,
                    vec![],
                    10i64.to_le_bytes().to_vec(),
                ),
            ],
        },
        State {
            meta: meta(1),
            tensors: vec![
                tensor(
                    "w64",
                    DType::F64,
                    vec![2, 2],
                    [1.0f64, f64::NAN, f64::INFINITY, -0.0]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                ),
                tensor("empty", DType::F32, vec![0, 4], Vec::new()),
                tensor(
                    "counts",
                    DType::I64,
                    vec![3],
                    [i64::MIN, -1, i64::MAX]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                ),
            ],
        },
        State::default(),
    ]
}

/// Real states of small built-in models, with Adam's or SGD's slots.
fn trained() -> Vec<State> {
    let mut out = Vec::new();
    for (spec, loss, kind) in [
        (
            r#"{"type":"mlp","hidden":[4],"num_classes":3}"#,
            Loss::CrossEntropy,
            OptimizerKind::Adam,
        ),
        (
            r#"{"type":"linear_regression"}"#,
            Loss::Mse,
            OptimizerKind::Sgd,
        ),
    ] {
        let Ok(spec) = ModelSpec::from_json(spec) else {
            continue;
        };
        let source = ModelSource::Spec(spec);
        let Ok(model) = Model::build(&source, loss, 3, Device::Cpu, 1) else {
            continue;
        };
        let config = OptimizerConfig {
            kind,
            momentum: if kind == OptimizerKind::Sgd { 0.9 } else { 0.0 },
            ..OptimizerConfig::default()
        };
        let Ok(trainer) = Trainer::new(model, config) else {
            continue;
        };
        out.extend(trainer.state(2, 100).ok());
    }
    out
}

/// Hand-made safetensors: dtypes stoker refuses (F16, BF16), a plain file
/// without stoker's metadata, offsets that overlap.
fn handmade() -> Vec<Vec<u8>> {
    let file = |header: &str, data: &[u8]| {
        let mut h = header.as_bytes().to_vec();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend_from_slice(data);
        out
    };
    let meta =
        r#""__metadata__":{"format":"stoker.state.v1","model_id":"m","round":"1","samples":"2"}"#;
    vec![
        file(
            &format!(r#"{{{meta},"h":{{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}}}"#),
            &[0, 0x3c, 0, 0xc0],
        ),
        file(
            &format!(r#"{{{meta},"b":{{"dtype":"BF16","shape":[1,2],"data_offsets":[0,4]}}}}"#),
            &[0x80, 0x3f, 0, 0x40],
        ),
        file(
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &1f32.to_le_bytes(),
        ),
        file(
            &format!(
                r#"{{{meta},"a":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},"b":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#
            ),
            &2f32.to_le_bytes(),
        ),
    ]
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = synthetic()
        .iter()
        .chain(trained().iter())
        .filter_map(|s| s.to_bytes().ok())
        .collect();
    out.extend(handmade());
    out
}

fn run(input: &[u8]) -> Result<()> {
    let meta = StateMeta::read(input);
    let state = State::from_bytes(input).map_err(refused)?;
    assert_eq!(
        meta.as_ref().ok(),
        Some(&state.meta),
        "StateMeta::read agrees with State::from_bytes"
    );
    let shared = State::from_shared(&Bytes::copy_from_slice(input));
    assert_eq!(
        shared.as_ref().ok(),
        Some(&state),
        "State::from_shared agrees with State::from_bytes"
    );
    if let Some(bytes) = check(state.to_bytes()) {
        let back = State::from_bytes(&bytes);
        assert_eq!(
            back.as_ref().ok(),
            Some(&state),
            "a state reads back as written"
        );
    }
    if let Some(avg) = check(average::<_, Error>([Ok((input, 1.0)), Ok((input, 2.0))])) {
        reached("state: averaged");
        assert_eq!(
            avg.tensors.len(),
            state.tensors.len(),
            "an average keeps every tensor"
        );
    }
    if let Some(mut sum) = check(WeightedSum::from_bytes(input, 0.5)) {
        check(sum.add(&state, 1.5));
        if let Some(travelled) =
            check(sum.to_bytes()).and_then(|b| check(WeightedSum::from_sum_bytes(&b)))
        {
            check(travelled.average());
        }
    }
    load(&state);
    Ok(())
}

/// The model the state names (its `model` metadata, a spec) built from it,
/// when it is small, and its optimizer state loaded into a trainer.
fn load(state: &State) {
    let extra = &state.meta.extra;
    let Some(model) = extra
        .get("model")
        .filter(|m| m.trim_start().starts_with('{'))
    else {
        return;
    };
    let Some(source) = check(ModelSource::from_bytes(model.clone().into_bytes())) else {
        return;
    };
    let loss = extra.get("loss").and_then(|l| l.parse::<Loss>().ok());
    let width = extra
        .get("input_width")
        .and_then(|w| w.parse::<usize>().ok());
    if let (Some(loss), Some(width)) = (loss, width) {
        let small = Budget::training(BUILD_BYTES, 1, "");
        if small.check_before_build(&source, loss, width).is_err() {
            return;
        }
    }
    let budget = Budget::serving(BUDGET_BYTES, "--device-model-mb");
    let Some(model) = check(Model::from_state(
        &source,
        state,
        Device::Cpu,
        Some(&budget),
    )) else {
        return;
    };
    reached("state: model loaded");
    let config = extra
        .get("optimizer")
        .and_then(|o| serde_json::from_str::<OptimizerConfig>(o).ok())
        .unwrap_or_default();
    if let Some(mut trainer) = check(Trainer::new(model, config)) {
        if check(trainer.load_state(state)).is_some() {
            reached("state: trainer loaded");
        }
    }
}

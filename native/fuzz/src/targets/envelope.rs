//! `envelope`: a DoAction body as the server receives it, decoded with
//! `Envelope::decode` (magic, JSON length, JSON with its blob listing, the
//! blobs), then parsed as every action's typed body. A decoded envelope
//! must encode and decode again to the same blobs.

use serde_json::json;
use stoker_core::protocol::{action, Action, Envelope, ACTIONS, ENVELOPE_MAGIC};
use stoker_core::Result;

use super::{byte_mutator, check, reached, refused, Target};
use crate::mutate::{mutate_bytes, mutate_json, Rng};

pub fn target() -> Target {
    Target {
        name: "envelope",
        about: "DoAction body -> Envelope::decode -> Action::parse for every action",
        seeds,
        run,
        mutate,
    }
}

/// A body of every action, valid as the clients send them.
pub fn action_bodies() -> Vec<(&'static str, serde_json::Value)> {
    let spec = json!({"type": "mlp", "hidden": [8, 4], "activation": "relu", "dropout": 0.1, "num_classes": 3});
    vec![
        (
            action::CREATE_JOB,
            json!({"job": "churn", "spec": spec, "features": ["a", "b", "v"], "label": "y",
                   "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 0.01},
                   "device": "cpu", "seed": 7, "batch_size": 32, "keep_existing": true}),
        ),
        (
            action::CREATE_JOB,
            json!({"job": "reg", "spec": {"type": "linear_regression", "input_dim": 2},
                   "features": ["a", "b"], "label": "y", "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": true}}),
        ),
        (
            action::CREATE_JOB,
            json!({"job": "bin", "spec": {"type": "logistic_regression", "num_classes": 2},
                   "features": ["a"], "label": "y", "loss": "bce", "optimizer": {"name": "adamw", "weight_decay": 0.1}}),
        ),
        (
            action::CREATE_JOB,
            json!({"job": "ts", "torchscript_path": "models/net.pt", "features": ["a"], "label": "y"}),
        ),
        (
            action::TRAIN_ROUND,
            json!({"job": "churn", "partition": 3, "version": "v1", "round": 2, "epochs": 1,
                   "steps": 10, "release": true, "state_id": "r2"}),
        ),
        (
            action::EVALUATE,
            json!({"job": "churn", "split": "validation", "partition": 1, "version": "v1",
                   "round": 2, "state_id": "r3", "release": true}),
        ),
        (action::DROP_JOB, json!({"name": "churn"})),
        (
            action::REGISTER_MODEL,
            json!({"name": "churn", "version": 2, "spec": spec, "features": ["a", "b"]}),
        ),
        (
            action::REGISTER_MODEL,
            json!({"name": "ts", "loss": "mse", "input_width": 4, "features": ["a"]}),
        ),
        (
            action::EXPORT_MODEL,
            json!({"spec": {"type": "mlp", "hidden": [3], "output_dim": 1}}),
        ),
        (action::UNLOAD_MODEL, json!({"name": "churn", "version": 1})),
        (
            action::CREATE_JOB,
            json!({"job": "m", "features": ["a", "v"], "label": "", "matrix": {"precision": "float32"},
                   "keep_existing": true}),
        ),
        (
            action::LINALG,
            json!({"op": "moments", "job": "m", "partition": 0, "version": "v1", "release": true}),
        ),
        (
            action::LINALG,
            json!({"op": "product", "job": "m", "partition": 1, "version": "v1", "k": 4}),
        ),
        (
            action::LINALG,
            json!({"op": "eigen", "k": 3, "gramian": true}),
        ),
        (action::LINALG, json!({"op": "ritz", "n": 5, "k": 2})),
        (
            action::LINALG,
            json!({"op": "least_squares", "label": 0, "intercept": false, "ridge": 0.5}),
        ),
        (action::LINALG, json!({"op": "matrix", "of": "covariance"})),
        (action::HEALTH, json!({})),
        (action::STATS, json!({})),
    ]
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (kind, body) in action_bodies() {
        let Ok(env) = Envelope::new(body) else {
            continue;
        };
        out.extend(env.encode().ok());
        let blobs = match kind {
            action::CREATE_JOB => vec![("model", br#"{"type":"mlp","hidden":[2]}"#.to_vec())],
            action::TRAIN_ROUND => vec![("state", vec![0x42; 40])],
            action::REGISTER_MODEL | action::EXPORT_MODEL => {
                vec![
                    ("model", b"PK\x03\x04torchscript".to_vec()),
                    ("state", vec![7; 24]),
                ]
            }
            _ => vec![("extra", vec![1, 2, 3]), ("empty", vec![])],
        };
        let with = blobs
            .into_iter()
            .fold(env, |env, (name, bytes)| env.with_blob(name, bytes));
        out.extend(with.encode().ok());
    }
    out.push(Vec::new());
    out
}

/// Half the time bytes; otherwise the envelope's JSON (blob listing
/// included) is mutated as JSON and the body re-framed around it, so the
/// blob checks see sizes and names that disagree with the bytes.
fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    if rng.one_in(2) {
        return byte_mutator(rng, seed, others);
    }
    let Ok(env) = Envelope::decode(seed) else {
        return byte_mutator(rng, seed, others);
    };
    let json = serde_json::to_vec(&env.json).unwrap_or_default();
    let others: Vec<Vec<u8>> = others
        .iter()
        .filter_map(|o| Envelope::decode(o).ok())
        .filter_map(|e| serde_json::to_vec(&e.json).ok())
        .collect();
    let json = mutate_json(rng, &json, &others);
    if env.blobs.is_empty() && rng.one_in(2) {
        return json;
    }
    let mut out = ENVELOPE_MAGIC.to_vec();
    let len = if rng.one_in(8) {
        rng.next_u64() as u32
    } else {
        json.len() as u32
    };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&json);
    let mut blobs: Vec<u8> = env.blobs.into_iter().flat_map(|(_, b)| b).collect();
    if rng.one_in(3) {
        mutate_bytes(rng, &mut blobs, &[]);
    }
    out.extend_from_slice(&blobs);
    out
}

fn run(input: &[u8]) -> Result<()> {
    let env = Envelope::decode(input).map_err(refused)?;
    if !env.blobs.is_empty() {
        reached("envelope: blobs decoded");
    }
    let mut typed = 0;
    for (kind, _) in ACTIONS {
        if let Some(a) = check(Action::parse(kind, env.json.clone())) {
            if !matches!(a, Action::Health | Action::Stats) {
                typed += 1;
            }
        }
    }
    if typed > 0 {
        reached("envelope: a typed body parsed");
    }
    check(Action::parse("no_such_action", env.json.clone()));
    if let Some(encoded) = check(env.encode()) {
        let back = Envelope::decode(&encoded);
        assert!(back.is_ok(), "an encoded envelope decodes: {back:?}");
        if let Ok(back) = back {
            assert_eq!(
                back.blobs, env.blobs,
                "an envelope's blobs survive encoding"
            );
        }
    }
    Ok(())
}

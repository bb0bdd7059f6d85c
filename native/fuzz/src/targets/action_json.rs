//! `action_json`: an action's JSON body as a client writes it, parsed into
//! its typed body (`Action::parse`), and for the bodies that carry a model
//! (`create_job`, `register_model`, `export_model`) taken on as the server
//! takes it: the spec parsed (`ModelSpec::from_json` via
//! `ModelSource::one_of`), the optimizer, loss and device parsed, and the
//! model sized against a 64 MiB budget (`Budget::check_before_build`). A
//! spec the budget refuses is never built: `hidden: [1000000000]` must be
//! refused by arithmetic, not by the allocator. A spec that passes and is
//! small (a 4 MiB budget) is built for real on the CPU, trained two steps,
//! and its state written, read back and loaded (register: served, predicted;
//! export: traced to TorchScript). The built model must hold no more than
//! the budget counted.
//!
//! The input is the action name, a newline, and the JSON.

use serde_json::Value;
use stoker_core::protocol::{action, Action, CreateJob, ExportModel, RegisterModel, ACTIONS};
use stoker_core::{Error, Labels, Loss, Result, State, Task};
use stoker_engine::model::{export_torchscript, Model, ModelSource};
use stoker_engine::{Budget, Dataset, Device, DeviceSpec, OptimizerConfig, TrainOptions, Trainer};

use super::{check, envelope::action_bodies, reached, refused, Target};
use crate::mutate::{mutate_bytes, mutate_json, Rng};

pub fn target() -> Target {
    Target {
        name: "action_json",
        about: "action name + JSON body -> Action::parse -> ModelSpec, optimizer, Budget::check_before_build -> small models built, trained, saved, loaded",
        seeds,
        run,
        mutate,
    }
}

/// The model budget the server is given here (`--job-model-mb`,
/// `--device-model-mb`): small, so that sizes a real server would accept
/// are refused and their refusal exercised.
const BUDGET_BYTES: usize = 64 << 20;

/// Models within this much are built for real (a few per millisecond).
const BUILD_BYTES: usize = 4 << 20;

/// Rows of the tiny training set a built model trains on.
const ROWS: usize = 8;

fn seeds() -> Vec<Vec<u8>> {
    let mut bodies = action_bodies();
    // Specs at and past the budget's edge, for the mutations to push on.
    for spec in [
        serde_json::json!({"type": "mlp", "hidden": [1000000000], "num_classes": 2}),
        serde_json::json!({"type": "mlp", "hidden": [4096, 4096], "output_dim": 1}),
        serde_json::json!({"type": "mlp", "input_dim": 3, "hidden": [16, 16, 16], "activation": "gelu", "num_classes": 4}),
        serde_json::json!({"type": "logistic_regression", "input_dim": 2, "num_classes": 2}),
    ] {
        bodies.push((
            action::CREATE_JOB,
            serde_json::json!({"job": "j", "spec": spec.clone(), "features": ["a", "b", "c"], "label": "y", "batch_size": 4}),
        ));
        bodies.push((
            action::REGISTER_MODEL,
            serde_json::json!({"name": "m", "spec": spec.clone(), "input_width": 3}),
        ));
        bodies.push((action::EXPORT_MODEL, serde_json::json!({ "spec": spec })));
    }
    bodies
        .into_iter()
        .filter_map(|(kind, body)| {
            let mut out = format!("{kind}\n").into_bytes();
            out.extend(serde_json::to_vec(&body).ok()?);
            Some(out)
        })
        .collect()
}

/// The input's action name and JSON text.
fn split(input: &[u8]) -> (&[u8], &[u8]) {
    match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (&[], input),
    }
}

/// JSON-aware mutation of the body; one time in ten the action name
/// changes too (another action's name, or bytes).
fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let (kind, json) = split(seed);
    let mut kind = kind.to_vec();
    if rng.one_in(10) {
        match rng.pick(ACTIONS) {
            Some((name, _)) if rng.one_in(2) => kind = name.as_bytes().to_vec(),
            _ => mutate_bytes(rng, &mut kind, &[]),
        }
    }
    let others: Vec<Vec<u8>> = others.iter().map(|o| split(o).1.to_vec()).collect();
    let mut out = kind;
    out.push(b'\n');
    match serde_json::from_slice::<Value>(json) {
        Ok(mut body) if rng.one_in(3) => {
            for _ in 0..(1 + rng.below(3)) {
                mutate_model_fields(rng, &mut body);
            }
            out.extend(serde_json::to_vec(&body).unwrap_or_default());
        }
        _ => out.extend(mutate_json(rng, json, &others)),
    }
    out
}

/// Sizes where budgets, casts and allocators go wrong.
const SIZES: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    8,
    64,
    1000,
    4096,
    65_536,
    1 << 20,
    1 << 31,
    u32::MAX as u64,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

fn size(rng: &mut Rng) -> Value {
    let v = *rng.pick(SIZES).unwrap_or(&1);
    // Mostly small, so that the mutated body still builds now and then.
    let v = if rng.one_in(2) { v.min(16) } else { v };
    Value::from(v)
}

fn rate(rng: &mut Rng) -> Value {
    let rates = [0.0, 1e-3, 0.5, 0.999, 1.0, -0.1, 1e308, 1e-308, 2.0];
    serde_json::Number::from_f64(*rng.pick(&rates).unwrap_or(&0.1))
        .map_or(Value::Null, Value::Number)
}

/// A typed change to one field the engine reads (the spec's sizes, the
/// optimizer's rates, the batch size, the feature count): the body stays
/// well-typed more often than a random leaf change leaves it, so more
/// inputs reach the budget and the build.
fn mutate_model_fields(rng: &mut Rng, body: &mut Value) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    match rng.below(10) {
        0..=4 => {
            let spec = obj
                .entry("spec")
                .or_insert_with(|| serde_json::json!({"type": "mlp"}));
            let Some(spec) = spec.as_object_mut() else {
                return;
            };
            match rng.below(8) {
                0 | 1 => {
                    let n = rng.below(4);
                    spec.insert("hidden".into(), (0..n).map(|_| size(rng)).collect());
                }
                2 => {
                    spec.insert("input_dim".into(), size(rng));
                }
                3 => {
                    spec.insert("num_classes".into(), size(rng));
                }
                4 => {
                    spec.insert("output_dim".into(), size(rng));
                }
                5 => {
                    spec.insert("dropout".into(), rate(rng));
                }
                6 => {
                    let types = [
                        "mlp",
                        "linear_regression",
                        "logistic_regression",
                        "softmax",
                        "rnn",
                    ];
                    spec.insert("type".into(), (*rng.pick(&types).unwrap_or(&"mlp")).into());
                }
                _ => {
                    let keys: Vec<String> = spec.keys().cloned().collect();
                    if let Some(k) = rng.pick(&keys) {
                        spec.remove(k);
                    }
                }
            }
        }
        5 | 6 => {
            let opt = obj
                .entry("optimizer")
                .or_insert_with(|| serde_json::json!({"name": "adam"}));
            let Some(opt) = opt.as_object_mut() else {
                return;
            };
            let keys = ["lr", "momentum", "beta1", "beta2", "eps", "weight_decay"];
            let key = *rng.pick(&keys).unwrap_or(&"lr");
            opt.insert(key.into(), rate(rng));
            if rng.one_in(4) {
                let names = ["sgd", "adam", "adamw", "adam_w", "lbfgs"];
                opt.insert("name".into(), (*rng.pick(&names).unwrap_or(&"sgd")).into());
            }
            if rng.one_in(4) {
                opt.insert("nesterov".into(), Value::Bool(rng.one_in(2)));
            }
        }
        7 => {
            obj.insert("batch_size".into(), size(rng));
        }
        8 => {
            let n = rng.below(6);
            let features: Vec<Value> = (0..n).map(|i| Value::from(format!("f{i}"))).collect();
            obj.insert("features".into(), features.into());
            if rng.one_in(2) {
                obj.insert("input_width".into(), size(rng));
            }
        }
        _ => {
            let losses = ["mse", "cross_entropy", "bce", "logistic", "hinge"];
            obj.insert("loss".into(), (*rng.pick(&losses).unwrap_or(&"mse")).into());
        }
    }
}

fn run(input: &[u8]) -> Result<()> {
    let (kind, json) = split(input);
    let kind = std::str::from_utf8(kind)
        .map_err(|_| refused(Error::invalid("the action name is not UTF-8")))?;
    let json: Value = serde_json::from_slice(json)
        .map_err(|e| refused(Error::invalid(format!("not JSON: {e}"))))?;
    match Action::parse(kind, json).map_err(refused)? {
        Action::CreateJob(req) => create_job(req),
        Action::RegisterModel(req) => register_model(req),
        Action::ExportModel(req) => export_model(req),
        Action::TrainRound(_)
        | Action::Evaluate(_)
        | Action::DropJob(_)
        | Action::UnloadModel(_)
        | Action::Health
        | Action::Linalg(_)
        | Action::Stats => {}
    }
    Ok(())
}

/// No file is read for a client here (the server reads them only under
/// `--model-root`).
fn no_files(path: &str) -> Result<Vec<u8>> {
    Err(Error::invalid(format!(
        "torchscript_path '{path}': the fuzzer reads no files"
    )))
}

/// The loss asked for, or the spec's default.
fn loss_of(asked: Option<&str>, source: &ModelSource) -> Option<Loss> {
    match asked {
        Some(l) => check(l.parse()),
        None => Some(source.default_loss(true)),
    }
}

/// Sizes the model against the server's budget (a refusal ends here) and
/// builds it when it is small; the built model must hold no more than the
/// budget counted.
fn sized_model(
    source: &ModelSource,
    loss: Loss,
    width: usize,
    budget: &Budget,
    small: &Budget,
    seed: u64,
) -> Option<Model> {
    let sized = budget.check_before_build(source, loss, width);
    if sized.is_err() {
        reached("action_json: refused by the budget");
    }
    check(sized)?;
    small.check_before_build(source, loss, width).ok()?;
    let model = check(Model::build_within(
        source,
        loss,
        width,
        Device::Cpu,
        seed,
        Some(budget),
    ))?;
    let held = model
        .parameter_count()
        .saturating_mul(budget.bytes_per_parameter);
    assert!(
        held <= budget.bytes,
        "the built model holds {held} bytes of parameters, over the budget of {} it passed",
        budget.bytes
    );
    reached("action_json: model built");
    Some(model)
}

/// A state of `model` as bytes, read back (which must succeed).
fn saved(state: State) -> Option<State> {
    let bytes = check(state.to_bytes())?;
    let back = State::from_bytes(&bytes);
    assert!(back.is_ok(), "a written state reads back: {back:?}");
    back.ok()
}

fn create_job(req: CreateJob) {
    let Some(source) = check(ModelSource::one_of(
        req.spec.as_ref(),
        req.torchscript_path.as_deref(),
        None,
        "create_job",
        no_files,
    )) else {
        return;
    };
    let optimizer = match req.optimizer {
        Some(v) => check(
            serde_json::from_value::<OptimizerConfig>(v)
                .map_err(|e| Error::invalid(format!("optimizer: {e}"))),
        ),
        None => Some(OptimizerConfig::default()),
    };
    let Some(optimizer) = optimizer.filter(|o| check(o.validate()).is_some()) else {
        return;
    };
    if let Some(device) = &req.device {
        // Parsed as the server parses it; the fuzzer builds on the CPU.
        check(device.parse::<DeviceSpec>());
    }
    if req.batch_size == 0 || req.features.is_empty() {
        return;
    }
    let Some(loss) = loss_of(req.loss.as_deref(), &source) else {
        return;
    };
    let ModelSource::Spec(spec) = &source else {
        return;
    };
    let width = spec.input_dim.unwrap_or(req.features.len());
    let budget = Budget::training(BUDGET_BYTES, req.batch_size, "--job-model-mb");
    let small = Budget::training(BUILD_BYTES, req.batch_size.min(ROWS), "");
    let Some(model) = sized_model(&source, loss, width, &budget, &small, req.seed) else {
        return;
    };
    let task = model.task();
    let Some(mut trainer) = check(Trainer::new(model, optimizer)) else {
        return;
    };
    let labels = match task {
        Task::Multiclass { classes } => {
            Labels::Classes((0..ROWS).map(|i| (i % classes) as i64).collect())
        }
        Task::Binary => Labels::Values((0..ROWS).map(|i| (i % 2) as f32).collect()),
        Task::Regression => Labels::Values((0..ROWS).map(|i| i as f32 * 0.25).collect()),
    };
    let Ok(features) = tch::Tensor::f_ones([ROWS as i64, width as i64], tch::kind::FLOAT_CPU)
    else {
        return;
    };
    let Some(data) = check(Dataset::from_parts(features, labels, Device::Cpu)) else {
        return;
    };
    let opts = TrainOptions {
        epochs: 1,
        max_steps: Some(2),
        batch_size: req.batch_size,
        seed: req.seed,
        ..TrainOptions::default()
    };
    if check(trainer.train(&data, &opts, &mut |_| {})).is_some() {
        reached("action_json: trained");
    }
    let Some(state) = check(trainer.state(1, ROWS as u64)).and_then(saved) else {
        return;
    };
    let loaded = trainer.load_state(&state);
    assert!(loaded.is_ok(), "a trainer loads its own state: {loaded:?}");
}

fn register_model(req: RegisterModel) {
    let Some(source) = check(ModelSource::one_of(
        req.spec.as_ref(),
        req.torchscript_path.as_deref(),
        None,
        "register_model",
        no_files,
    )) else {
        return;
    };
    let Some(loss) = loss_of(req.loss.as_deref(), &source) else {
        return;
    };
    let ModelSource::Spec(spec) = &source else {
        return;
    };
    let width = req
        .input_width
        .or(spec.input_dim)
        .unwrap_or(req.features.as_ref().map_or(3, Vec::len));
    let budget = Budget::serving(BUDGET_BYTES, "--device-model-mb");
    let small = Budget::serving(BUILD_BYTES, "");
    let Some(model) = sized_model(&source, loss, width, &budget, &small, 0) else {
        return;
    };
    let Some(tensors) = check(model.export_weights()) else {
        return;
    };
    let Some(state) = saved(State {
        meta: model.state_meta(0, 0),
        tensors,
    }) else {
        return;
    };
    let served = Model::from_state(&source, &state, Device::Cpu, Some(&budget));
    assert!(
        served.is_ok(),
        "a model is built again from its own state: {:?}",
        served.as_ref().err()
    );
    if let Ok(mut served) = served {
        reached("action_json: served from its state");
        if let Ok(x) = tch::Tensor::f_zeros([2, width as i64], tch::kind::FLOAT_CPU) {
            if let Some(out) = check(served.predict_tensor(&x)) {
                assert_eq!(out.rows(), 2, "one prediction per row");
            }
        }
    }
}

fn export_model(req: ExportModel) {
    let Some(source) = check(ModelSource::one_of(
        req.spec.as_ref(),
        None,
        None,
        "export_model",
        no_files,
    )) else {
        return;
    };
    let ModelSource::Spec(spec) = &source else {
        return;
    };
    let loss = spec.default_loss();
    let width = spec.input_dim.unwrap_or(3);
    let budget = Budget::serving(BUDGET_BYTES, "--device-model-mb");
    let small = Budget::serving(BUILD_BYTES, "");
    let Some(model) = sized_model(&source, loss, width, &budget, &small, 1) else {
        return;
    };
    let Some(tensors) = check(model.export_weights()) else {
        return;
    };
    let state = State {
        meta: model.state_meta(0, 0),
        tensors,
    };
    if let Some(archive) = check(export_torchscript(&source, &state, Some(&budget))) {
        reached("action_json: exported");
        assert!(!archive.is_empty(), "an exported archive has bytes");
    }
}

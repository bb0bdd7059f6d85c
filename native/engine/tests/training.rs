//! The engine end to end on real libtorch: training reaches its accuracy
//! bar, reruns repeat, states round-trip and average, and bad inputs are
//! errors that name the culprit.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch};
use stoker_core::{ErrorKind, FeatureLayout, Loss, State, Task, WeightedSum};
use stoker_engine::model::ModelSource;
use stoker_engine::{
    Dataset, Model, ModelSpec, OptimizerConfig, OptimizerKind, TrainOptions, Trainer,
};
use tch::Device;

/// A small deterministic generator for test data.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.next().max(1e-7), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }
}

/// Two interleaved noisy rings plus two pure-noise columns: no linear model
/// separates them.
fn rings(rows: usize, seed: u64) -> RecordBatch {
    let mut r = Lcg(seed);
    let mut cols: Vec<Vec<f32>> = vec![Vec::new(); 4];
    let mut y = Vec::new();
    for _ in 0..rows {
        let class = (r.next() < 0.5) as i64;
        let radius = if class == 1 { 2.0 } else { 1.0 } + 0.15 * r.normal();
        let angle = r.next() * std::f32::consts::TAU;
        cols[0].push(radius * angle.cos());
        cols[1].push(radius * angle.sin());
        cols[2].push(r.normal());
        cols[3].push(r.normal());
        y.push(class);
    }
    let mut arrays: Vec<(&str, ArrayRef)> = ["a", "b", "c", "d"]
        .iter()
        .zip(cols)
        .map(|(n, c)| (*n, Arc::new(Float32Array::from(c)) as ArrayRef))
        .collect();
    arrays.push(("y", Arc::new(Int64Array::from(y))));
    RecordBatch::try_from_iter(arrays).unwrap()
}

fn features() -> Vec<String> {
    ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect()
}

fn mlp(dropout: f64) -> ModelSource {
    ModelSource::Spec(
        ModelSpec::from_json(&format!(
            r#"{{"type":"mlp","hidden":[32,32],"num_classes":2,"dropout":{dropout}}}"#
        ))
        .unwrap(),
    )
}

fn trainer(source: &ModelSource, seed: u64) -> Trainer {
    let model = Model::build(source, Loss::CrossEntropy, 4, Device::Cpu, seed).unwrap();
    let opt = OptimizerConfig {
        lr: 0.01,
        ..Default::default()
    };
    Trainer::new(model, opt).unwrap()
}

fn dataset(batch: &RecordBatch, task: Task) -> Dataset {
    let layout = FeatureLayout::resolve(&batch.schema(), &features(), Some(batch)).unwrap();
    Dataset::from_batches(std::slice::from_ref(batch), &layout, "y", task, Device::Cpu).unwrap()
}

fn options(epochs: usize, seed: u64) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 64,
        seed,
        ..Default::default()
    }
}

fn accuracy(model: &mut Model, batch: &RecordBatch) -> f64 {
    let layout = FeatureLayout::resolve(&batch.schema(), &features(), Some(batch)).unwrap();
    let out = model
        .predict_batches(std::slice::from_ref(batch), &layout, 0)
        .unwrap();
    let pred = out.prediction();
    let y = batch.column_by_name("y").unwrap();
    let y = y.as_any().downcast_ref::<Int64Array>().unwrap();
    let hits = (0..batch.num_rows())
        .filter(|&i| pred.value(i) as i64 == y.value(i))
        .count();
    hits as f64 / batch.num_rows() as f64
}

#[test]
fn mlp_reaches_95_percent_held_out_on_a_nonlinear_task() {
    let train = rings(4000, 1);
    let test = rings(1000, 2);
    let mut t = trainer(&mlp(0.0), 7);
    let data = dataset(&train, t.model().task());
    let mut epochs_seen = 0;
    let report = t
        .train(&data, &options(20, 7), &mut |_| epochs_seen += 1)
        .unwrap();
    assert_eq!(epochs_seen, 20);
    assert!(
        report.final_loss() < report.epochs[0].loss,
        "loss did not fall: {report:?}"
    );
    let acc = accuracy(t.model_mut(), &test);
    assert!(acc >= 0.95, "held-out accuracy {acc}");
}

#[test]
fn the_same_seed_gives_the_same_state_and_another_seed_does_not() {
    let train = rings(600, 3);
    let run = |seed: u64| {
        let mut t = trainer(&mlp(0.2), seed);
        let data = dataset(&train, t.model().task());
        t.train(&data, &options(2, seed), &mut |_| {}).unwrap();
        t.state(1, data.rows() as u64).unwrap().to_bytes().unwrap()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn state_round_trip_restores_predictions_and_optimizer() {
    let train = rings(500, 4);
    let mut t = trainer(&mlp(0.0), 5);
    let data = dataset(&train, t.model().task());
    t.train(&data, &options(2, 5), &mut |_| {}).unwrap();
    let bytes = t.state(0, 500).unwrap().to_bytes().unwrap();
    let state = State::from_bytes(&bytes).unwrap();
    assert_eq!(state.meta.extra["task"], "multiclass:2");
    assert!(state.tensor("optimizer/layers.0.weight/exp_avg").is_some());

    let mut fresh = trainer(&mlp(0.0), 999);
    fresh.load_state(&state).unwrap();
    assert_eq!(fresh.optimizer().steps(), t.optimizer().steps());
    let layout = FeatureLayout::resolve(&train.schema(), &features(), Some(&train)).unwrap();
    let a = t
        .model_mut()
        .predict_batches(std::slice::from_ref(&train), &layout, 0)
        .unwrap();
    let b = fresh
        .model_mut()
        .predict_batches(std::slice::from_ref(&train), &layout, 0)
        .unwrap();
    assert_eq!(a, b);

    let mut loaded = Model::from_state(&mlp(0.0), &state, Device::Cpu, None).unwrap();
    assert_eq!(
        loaded
            .predict_batches(std::slice::from_ref(&train), &layout, 0)
            .unwrap(),
        a
    );
}

#[test]
fn averaging_identical_trained_states_is_the_identity() {
    let train = rings(300, 6);
    let mut t = trainer(&mlp(0.0), 8);
    let data = dataset(&train, t.model().task());
    t.train(&data, &options(1, 8), &mut |_| {}).unwrap();
    let state = t.state(0, 300).unwrap();
    let mut sum = WeightedSum::new(&state, 300.0).unwrap();
    sum.add(&state, 100.0).unwrap();
    let avg = sum.average().unwrap();
    for tensor in &state.tensors {
        assert_eq!(
            avg.tensor(&tensor.name).unwrap().data,
            tensor.data,
            "{}",
            tensor.name
        );
    }
}

#[test]
fn averaged_partition_states_train_on() {
    // Two partitions train from the same state; their average (weights and
    // Adam moments) loads back and keeps training: one round of local SGD.
    let all = rings(2000, 9);
    let parts = [all.slice(0, 1200), all.slice(1200, 800)];
    let start = trainer(&mlp(0.0), 10).state(0, 0).unwrap();
    let mut sum: Option<WeightedSum> = None;
    for (p, part) in parts.iter().enumerate() {
        let mut t = trainer(&mlp(0.0), 10);
        t.load_state(&start).unwrap();
        let data = dataset(part, t.model().task());
        let opts = TrainOptions {
            partition: p as u64,
            ..options(3, 10)
        };
        t.train(&data, &opts, &mut |_| {}).unwrap();
        let s = t.state(0, data.rows() as u64).unwrap();
        match &mut sum {
            None => sum = Some(WeightedSum::new(&s, data.rows() as f64).unwrap()),
            Some(sum) => sum.add(&s, data.rows() as f64).unwrap(),
        }
    }
    let avg = sum.unwrap().average().unwrap();
    assert_eq!(avg.meta.samples, 2000);
    let mut t = trainer(&mlp(0.0), 10);
    t.load_state(&avg).unwrap();
    // 19 steps x 3 epochs on 1200 rows, 13 x 3 on 800 rows, weighted by rows: 49.8 -> 50.
    assert_eq!(t.optimizer().steps(), 50);
    let data = dataset(&all, t.model().task());
    t.train(&data, &options(5, 10), &mut |_| {}).unwrap();
    assert!(accuracy(t.model_mut(), &rings(500, 11)) > 0.9);
}

#[test]
fn evaluation_scores_what_predict_returns_and_the_training_loss() {
    let train = rings(2000, 11);
    let held_out = rings(700, 12);
    let mut t = trainer(&mlp(0.0), 3);
    let data = dataset(&train, t.model().task());
    let report = t.train(&data, &options(3, 3), &mut |_| {}).unwrap();
    // On the training rows, in eval mode, the loss is near the last epoch's
    // (which averaged over a moving model).
    let on_train = stoker_engine::evaluate(t.model_mut(), &data).unwrap();
    let m = on_train.metrics().unwrap();
    assert_eq!(on_train.rows, 2000);
    assert!(
        (m["loss"] - report.final_loss()).abs() < 0.1,
        "{m:?} vs {report:?}"
    );
    // A two-class cross-entropy model's log loss is its loss (clipping aside).
    assert!((m["loss"] - m["logloss"]).abs() < 1e-5, "{m:?}");
    let held = dataset(&held_out, t.model().task());
    let e = stoker_engine::evaluate(t.model_mut(), &held).unwrap();
    let m = e.metrics().unwrap();
    let acc = accuracy(t.model_mut(), &held_out);
    assert!(
        (m["accuracy"] - acc).abs() < 1e-12,
        "{} vs {acc}",
        m["accuracy"]
    );
    assert!(m["auc"] > 0.5 && m["auc"] <= 1.0, "{m:?}");
    // A dataset of another width is refused, not evaluated.
    let narrow = RecordBatch::try_from_iter(vec![
        ("a", Arc::new(Float32Array::from(vec![1.0f32])) as ArrayRef),
        ("y", Arc::new(Int64Array::from(vec![0i64])) as ArrayRef),
    ])
    .unwrap();
    let layout =
        FeatureLayout::resolve(&narrow.schema(), &["a".to_string()], Some(&narrow)).unwrap();
    let narrow =
        Dataset::from_batches(&[narrow], &layout, "y", t.model().task(), Device::Cpu).unwrap();
    let err = stoker_engine::evaluate(t.model_mut(), &narrow)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expects 4 features"), "{err}");
}

#[test]
fn a_schedule_sets_each_steps_rate_and_class_weights_tilt_the_classes() {
    use stoker_engine::schedule::{Schedule, ScheduleKind};
    let train = rings(1000, 21);
    let cosine = |total: f64| OptimizerConfig {
        lr: 0.01,
        schedule: Schedule {
            kind: ScheduleKind::Cosine,
            total_rounds: total,
            ..Default::default()
        },
        ..Default::default()
    };
    let model = Model::build(&mlp(0.0), Loss::CrossEntropy, 4, Device::Cpu, 5).unwrap();
    let mut t = Trainer::new(model, cosine(2.0)).unwrap();
    let data = dataset(&train, t.model().task());
    let mut opts = options(2, 5);
    let first = t.train(&data, &opts, &mut |_| {}).unwrap();
    // Round 0 of 2 ends just before the cosine's midpoint: a little over half the rate.
    assert!(
        first.learning_rate > 0.005 && first.learning_rate < 0.0055,
        "{first:?}"
    );
    opts.round = 1;
    let second = t.train(&data, &opts, &mut |_| {}).unwrap();
    assert!(second.learning_rate < 0.0001, "{second:?}");
    let mut constant = trainer(&mlp(0.0), 5);
    assert_eq!(
        constant
            .train(&data, &options(1, 5), &mut |_| {})
            .unwrap()
            .learning_rate,
        0.01
    );

    // Weighting class 1 a hundred times class 0 makes the model call class 1 more.
    let ones = |weights: Option<Vec<f64>>| {
        let mut t = trainer(&mlp(0.0), 5);
        let opts = TrainOptions {
            class_weights: weights,
            ..options(1, 5)
        };
        t.train(&data, &opts, &mut |_| {}).unwrap();
        let layout = FeatureLayout::resolve(&train.schema(), &features(), Some(&train)).unwrap();
        let out = t
            .model_mut()
            .predict_batches(std::slice::from_ref(&train), &layout, 0)
            .unwrap();
        out.prediction()
            .values()
            .iter()
            .filter(|&&p| p == 1.0)
            .count()
    };
    assert!(ones(Some(vec![0.01, 1.0])) > ones(None) + 100);
    let mut t = trainer(&mlp(0.0), 5);
    let opts = TrainOptions {
        class_weights: Some(vec![1.0, 2.0, 3.0]),
        ..options(1, 5)
    };
    let e = t.train(&data, &opts, &mut |_| {}).unwrap_err().to_string();
    assert!(
        e.contains("3 class weights for a model with 2 classes"),
        "{e}"
    );
}

#[test]
fn regression_and_binary_models_train() {
    let mut r = Lcg(5);
    let x: Vec<f32> = (0..2000).map(|_| r.normal()).collect();
    let y: Vec<f32> = x.iter().map(|v| 3.0 * v - 1.0).collect();
    let yb: Vec<i64> = x.iter().map(|v| (*v > 0.3) as i64).collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("x", Arc::new(Float32Array::from(x)) as ArrayRef),
        ("y", Arc::new(Float32Array::from(y)) as ArrayRef),
        ("yb", Arc::new(Int64Array::from(yb)) as ArrayRef),
    ])
    .unwrap();
    let layout = FeatureLayout::resolve(&batch.schema(), &["x".to_string()], Some(&batch)).unwrap();

    let lin = ModelSource::Spec(ModelSpec::from_json(r#"{"type":"linear_regression"}"#).unwrap());
    let model = Model::build(&lin, Loss::Mse, 1, Device::Cpu, 1).unwrap();
    let sgd = OptimizerConfig {
        kind: OptimizerKind::Sgd,
        lr: 0.05,
        momentum: 0.9,
        ..Default::default()
    };
    let mut t = Trainer::new(model, sgd).unwrap();
    let data = Dataset::from_batches(
        std::slice::from_ref(&batch),
        &layout,
        "y",
        Task::Regression,
        Device::Cpu,
    )
    .unwrap();
    let report = t.train(&data, &options(10, 1), &mut |_| {}).unwrap();
    assert!(report.final_loss() < 1e-3, "{report:?}");
    let w = t
        .state(0, 0)
        .unwrap()
        .tensor("layers.0.weight")
        .unwrap()
        .to_f32()[0];
    assert!((w - 3.0).abs() < 0.02, "weight {w}");

    let spec = ModelSource::Spec(ModelSpec::from_json(r#"{"type":"mlp","hidden":[8]}"#).unwrap());
    let model = Model::build(&spec, Loss::BinaryCrossEntropy, 1, Device::Cpu, 1).unwrap();
    assert_eq!(model.task(), Task::Binary);
    let mut t = Trainer::new(
        model,
        OptimizerConfig {
            lr: 0.02,
            ..Default::default()
        },
    )
    .unwrap();
    let data = Dataset::from_batches(
        std::slice::from_ref(&batch),
        &layout,
        "yb",
        Task::Binary,
        Device::Cpu,
    )
    .unwrap();
    let report = t.train(&data, &options(10, 1), &mut |_| {}).unwrap();
    assert!(report.final_loss() < 0.2, "{report:?}");
}

#[test]
fn label_out_of_range_names_column_row_and_classes() {
    let mut batch = rings(10, 12);
    let mut y: Vec<i64> = (0..10).map(|i| i % 2).collect();
    y[7] = 5;
    let cols: Vec<ArrayRef> = batch.columns()[..4]
        .iter()
        .cloned()
        .chain([Arc::new(Int64Array::from(y)) as ArrayRef])
        .collect();
    batch = RecordBatch::try_new(batch.schema(), cols).unwrap();
    let layout = FeatureLayout::resolve(&batch.schema(), &features(), Some(&batch)).unwrap();
    let e = Dataset::from_batches(
        &[batch],
        &layout,
        "y",
        Task::Multiclass { classes: 2 },
        Device::Cpu,
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("'y' has 5 at row 7"), "{e}");
    assert!(e.message().contains("2-class classifier"), "{e}");
}

#[test]
fn a_state_of_another_architecture_is_refused_by_name() {
    let small = trainer(&mlp(0.0), 1).state(0, 0).unwrap();
    let wide = ModelSource::Spec(
        ModelSpec::from_json(r#"{"type":"mlp","hidden":[64],"num_classes":2}"#).unwrap(),
    );
    let mut model = Model::build(&wide, Loss::CrossEntropy, 4, Device::Cpu, 1).unwrap();
    let e = model.load_weights(&small).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("state is for model 'mlp-"), "{e}");

    // Same names, no model id: the shape check names the tensor.
    let mut anonymous = small.clone();
    anonymous.meta.model_id.clear();
    let e = model.load_weights(&anonymous).unwrap_err();
    assert!(
        e.message()
            .contains("tensor 'layers.0.weight' has shape [32, 4]"),
        "{e}"
    );
}

#[test]
fn wrong_feature_width_is_an_error_not_a_crash() {
    let batch = rings(20, 13);
    let mut model = Model::build(&mlp(0.0), Loss::CrossEntropy, 3, Device::Cpu, 1).unwrap();
    let layout = FeatureLayout::resolve(&batch.schema(), &features(), Some(&batch)).unwrap();
    let e = model.predict_batches(&[batch], &layout, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.message()
            .contains("expects 3 features per row, the input has 4"),
        "{e}"
    );
}

#[test]
fn corrupt_torchscript_and_state_bytes_are_invalid_input() {
    let source =
        ModelSource::from_bytes(b"PK\x03\x04 definitely not a TorchScript archive".to_vec())
            .unwrap();
    let e = Model::build(&source, Loss::Mse, 4, Device::Cpu, 1)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.message()
            .contains("TorchScript model could not be loaded"),
        "{e}"
    );

    let mut bytes = trainer(&mlp(0.0), 1)
        .state(0, 0)
        .unwrap()
        .to_bytes()
        .unwrap();
    bytes.truncate(bytes.len() / 2);
    let e = State::from_bytes(&bytes).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[test]
fn cuda_is_used_when_present_and_cpu_otherwise() {
    let device = stoker_engine::DeviceSpec::Auto.resolve().unwrap();
    let model = Model::build(&mlp(0.0), Loss::CrossEntropy, 4, device, 1).unwrap();
    assert_eq!(model.device(), device);
    if stoker_engine::device::cuda_devices() > 0 {
        assert!(matches!(device, Device::Cuda(0)));
    }
}

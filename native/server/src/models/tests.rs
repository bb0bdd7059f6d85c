//! The registry's tiers without a server: least recently used models leave
//! the device for host memory, and (with no model directory) leave host
//! memory altogether, but never one that is in use or just registered.

use super::*;
use crate::model_root::ModelRoot;
use stoker_engine::{ModelSpec, OptimizerConfig, Trainer};

const SPEC: &str = r#"{"type": "mlp", "hidden": [8]}"#;

fn state() -> Vec<u8> {
    let spec = ModelSpec::from_json(SPEC).unwrap();
    let model = Model::build(&ModelSource::Spec(spec), Loss::Mse, 4, Device::Cpu, 3).unwrap();
    let trainer = Trainer::new(model, OptimizerConfig::default()).unwrap();
    trainer.state(0, 1).unwrap().to_bytes().unwrap()
}

fn registry(device_models: usize, host_bytes: usize) -> Models {
    Models::new(RegistryConfig {
        device: Device::Cpu,
        // The MLP 4 -> 8 -> 1 has 49 parameters: 196 bytes.
        device_bytes: device_models * 196,
        host_bytes,
        model_dir: None,
        limits: BatchLimits::default(),
    })
    .unwrap()
}

fn register(models: &Models, name: &str) -> Result<Arc<ServedModel>> {
    let req: RegisterModel = serde_json::from_value(serde_json::json!({
        "name": name,
        "spec": serde_json::from_str::<serde_json::Value>(SPEC).unwrap(),
        "features": ["a", "b", "c", "d"],
    }))
    .unwrap();
    models.register(req, None, Some(state()), &ModelRoot::default())
}

/// Each model's name and tier, as `"a:device b:host"`.
fn tiers(models: &Models) -> String {
    let each: Vec<String> = models
        .list()
        .iter()
        .map(|m| format!("{}:{}", m.name, m.tier().as_str()))
        .collect();
    each.join(" ")
}

fn names(models: &Models) -> Vec<String> {
    models.list().iter().map(|m| m.name.clone()).collect()
}

#[test]
fn the_least_recently_used_model_leaves_the_device_first() {
    let models = registry(2, usize::MAX);
    for name in ["a", "b"] {
        assert_eq!(register(&models, name).unwrap().param_bytes, 196);
    }
    // Using `a` makes `b` the least recently used of the two.
    let a = models.get(&ModelKey::latest("a")).unwrap();
    models.batcher(&a).unwrap();
    register(&models, "c").unwrap();
    assert_eq!(tiers(&models), "a:device b:host c:device");
    assert_eq!(models.device_tier.evictions.load(Ordering::Relaxed), 1);
    // `b` comes back from host memory on its next use, and `a` (now the
    // least recently used) makes room.
    let b = models.get(&ModelKey::latest("b")).unwrap();
    models.batcher(&b).unwrap();
    assert_eq!(models.device_tier.misses.load(Ordering::Relaxed), 1);
    assert_eq!(models.host_tier.hits.load(Ordering::Relaxed), 1);
    assert_eq!(tiers(&models), "a:host b:device c:device");
}

#[test]
fn without_a_model_dir_the_host_budget_unloads_the_oldest_unused_model() {
    let probe = registry(8, usize::MAX);
    let one = register(&probe, "probe").unwrap().artifact_bytes();
    // Room for two artifacts, not three.
    let models = registry(8, 2 * one + one / 2);
    let a = register(&models, "a").unwrap();
    register(&models, "b").unwrap();
    register(&models, "c").unwrap();
    // `a` is held (a stream using it), so `b` goes instead.
    assert_eq!(names(&models), ["a", "c"]);
    assert_eq!(models.host_tier.evictions.load(Ordering::Relaxed), 1);
    assert_eq!(models.host_bytes(), (2 * one, 2 * one + one / 2));
    drop(a);
    register(&models, "d").unwrap();
    assert_eq!(names(&models), ["c", "d"]);
}

#[test]
fn a_registration_that_cannot_fit_is_undone() {
    let probe = registry(8, usize::MAX);
    let one = register(&probe, "probe").unwrap().artifact_bytes();
    let models = registry(8, one + one / 2);
    let a = register(&models, "a").unwrap();
    let e = register(&models, "b")
        .err()
        .expect("no room for a second model");
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
    assert!(e.message().contains("--host-model-mb"), "{e}");
    assert_eq!(tiers(&models), "a:device");
    drop(a);
}

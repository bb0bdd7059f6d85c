//! The partition cache without a server: one byte budget over every job,
//! least recently trained partitions evicted first, and uploads in flight
//! sharing the budget through reservations.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array};

use super::*;
use crate::model_root::ModelRoot;

fn job(name: &str) -> Job {
    let req: CreateJob = serde_json::from_value(serde_json::json!({
        "job": name,
        "spec": {"type": "mlp", "hidden": [4], "num_classes": 2},
        "features": ["a"],
        "label": "y",
    }))
    .unwrap();
    Job::new(req, None, DeviceSpec::Cpu, 1 << 30, &ModelRoot::default()).unwrap()
}

fn partition(job: &Job, partition: u32) -> Partition {
    let batch = RecordBatch::try_from_iter(vec![
        (
            "a",
            Arc::new(Float32Array::from(vec![0.5f32; 100])) as ArrayRef,
        ),
        ("y", Arc::new(Int64Array::from(vec![1i64; 100]))),
    ])
    .unwrap();
    let key = PartitionKey::train(job.name.clone(), partition, "v1");
    job.prepare(key, &[batch]).unwrap()
}

fn cached(jobs: &Jobs, job: &str) -> Vec<u32> {
    let mut out: Vec<u32> = lock(&jobs.partitions)
        .keys()
        .filter(|(j, _, _)| j == job)
        .map(|(_, _, p)| *p)
        .collect();
    out.sort();
    out
}

#[test]
fn the_least_recently_used_partition_is_evicted_to_fit() {
    let probe = job("probe");
    let size = partition(&probe, 0).bytes;
    let jobs = Jobs::new(2 * size + size / 2, 1 << 30);
    jobs.create(job("j"), false);
    let j = jobs.get("j").unwrap();
    for p in [0, 1] {
        assert!(!jobs.insert(&j, partition(&j, p)).unwrap());
    }
    // Training partition 0 makes partition 1 the least recently used.
    let zero = jobs.partition(&partition(&j, 0).key).unwrap();
    *lock(&zero.last_used) = Instant::now();
    jobs.insert(&j, partition(&j, 2)).unwrap();
    assert_eq!(cached(&jobs, "j"), [0, 2]);
    assert_eq!(jobs.evictions.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(jobs.cached_bytes(), 2 * size);
    // Sending a partition again replaces it and evicts nothing.
    assert!(jobs.insert(&j, partition(&j, 2)).unwrap());
    assert_eq!(jobs.evictions.load(std::sync::atomic::Ordering::Relaxed), 1);
    let e = jobs.partition(&partition(&j, 1).key).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::CacheMiss);
}

#[test]
fn a_partition_over_the_whole_budget_or_for_a_replaced_job_is_refused() {
    let probe = job("probe");
    let size = partition(&probe, 0).bytes;
    let jobs = Jobs::new(size / 2, 1 << 30);
    jobs.create(job("j"), false);
    let j = jobs.get("j").unwrap();
    let e = jobs.insert(&j, partition(&j, 0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
    assert!(e.message().contains("--cache-mb"), "{e}");

    let jobs = Jobs::new(4 * size, 1 << 30);
    jobs.create(job("j"), false);
    let old = jobs.get("j").unwrap();
    let sent = partition(&old, 0);
    // The job is created anew while the partition streams in.
    jobs.create(job("j"), false);
    let e = jobs.insert(&old, sent).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(cached(&jobs, "j").is_empty());
    // keep_existing leaves the job (and its partitions) as they are.
    let current = jobs.get("j").unwrap();
    jobs.insert(&current, partition(&current, 0)).unwrap();
    assert!(!jobs.create(job("j"), true));
    assert_eq!(cached(&jobs, "j"), [0]);
}

#[test]
fn uploads_in_flight_share_the_budget_and_give_it_back() {
    let jobs = Jobs::new(100, 1 << 30);
    let mut first = jobs.reserve_incoming();
    let mut second = jobs.reserve_incoming();
    assert!(first.add(60));
    assert!(!second.add(50), "60 + 50 is over the budget of 100");
    assert!(second.add(40));
    assert!(!first.add(1));
    drop(first);
    // The first upload's 60 bytes are free again.
    assert!(second.add(60));
    drop(second);
    assert!(jobs.reserve_incoming().add(100));
}

#[test]
fn releasing_the_last_partition_drops_the_job() {
    let jobs = Jobs::new(usize::MAX, 1 << 30);
    jobs.create(job("j"), false);
    let j = jobs.get("j").unwrap();
    for p in [0, 1] {
        jobs.insert(&j, partition(&j, p)).unwrap();
    }
    jobs.release(&partition(&j, 0).key);
    assert!(jobs.get("j").is_ok());
    jobs.release(&partition(&j, 1).key);
    assert_eq!(jobs.get("j").err().unwrap().kind(), ErrorKind::NotFound);
}

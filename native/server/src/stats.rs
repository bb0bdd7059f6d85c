//! What the server counts, and one snapshot of it that both renderings read:
//! the `stats` action's JSON and the Prometheus page (metrics.rs). A counter
//! added to [`Counters::counts`] shows in both, under one name.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::histogram::{Histogram, LATENCY_BOUNDS};
use crate::jobs::JobInfo;
use crate::models::Tier;
use crate::Service;

/// Server-wide counters and latency histograms (per-model ones live with
/// the model's batcher, per-tier ones with the registry).
pub struct Counters {
    pub rows_in: AtomicU64,
    /// Partitions cached by DoPut (training and validation; a re-send after
    /// an eviction or restart counts again).
    pub partitions_in: AtomicU64,
    pub rows_predicted: AtomicU64,
    pub train_rounds: AtomicU64,
    /// Rounds stopped early because their caller went away.
    pub train_rounds_abandoned: AtomicU64,
    /// `evaluate` actions answered (validation partitions scored).
    pub evaluations: AtomicU64,
    /// `linalg` kernels run on cached partitions (moments, products).
    pub linalg_kernels: AtomicU64,
    /// `linalg` solves on matrices a request carried (eigen, QR, least squares).
    pub linalg_solves: AtomicU64,
    pub requests_failed: AtomicU64,
    /// Model registrations that did not load within the load timeout.
    pub model_loads_timed_out: AtomicU64,
    pub exchange_latency: Histogram,
    pub train_latency: Histogram,
    pub put_latency: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            rows_in: AtomicU64::new(0),
            partitions_in: AtomicU64::new(0),
            rows_predicted: AtomicU64::new(0),
            train_rounds: AtomicU64::new(0),
            train_rounds_abandoned: AtomicU64::new(0),
            evaluations: AtomicU64::new(0),
            linalg_kernels: AtomicU64::new(0),
            linalg_solves: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            model_loads_timed_out: AtomicU64::new(0),
            exchange_latency: Histogram::new(LATENCY_BOUNDS),
            train_latency: Histogram::new(LATENCY_BOUNDS),
            put_latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

/// One server-wide counter: `stats` names it `key`, Prometheus
/// `stoker_{key}_total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    pub key: &'static str,
    pub help: &'static str,
    pub value: u64,
}

/// A latency histogram as Prometheus names it (`stats` leaves histograms out).
pub struct Latency<'a> {
    pub metric: &'static str,
    pub help: &'static str,
    pub histogram: &'a Histogram,
}

impl Counters {
    /// Every server-wide counter, read now.
    pub fn counts(&self) -> Vec<Count> {
        let read = |key, help, c: &AtomicU64| Count {
            key,
            help,
            value: c.load(Ordering::Relaxed),
        };
        vec![
            read("rows_in", "Training rows received by DoPut.", &self.rows_in),
            read(
                "partitions_in",
                "Partitions cached by DoPut (training and validation).",
                &self.partitions_in,
            ),
            read(
                "rows_predicted",
                "Rows predicted by DoExchange.",
                &self.rows_predicted,
            ),
            read("train_rounds", "Training rounds run.", &self.train_rounds),
            read(
                "train_rounds_abandoned",
                "Training rounds stopped because their caller went away.",
                &self.train_rounds_abandoned,
            ),
            read(
                "evaluations",
                "Partitions scored by evaluate (validation).",
                &self.evaluations,
            ),
            read(
                "linalg_kernels",
                "Matrix kernels run on cached partitions (linalg moments, product).",
                &self.linalg_kernels,
            ),
            read(
                "linalg_solves",
                "Dense matrix solves run (linalg eigen, orthonormalize, ritz, least_squares, matrix).",
                &self.linalg_solves,
            ),
            read(
                "requests_failed",
                "Requests that failed.",
                &self.requests_failed,
            ),
            read(
                "model_loads_timed_out",
                "Model registrations that did not load within --model-load-timeout-s.",
                &self.model_loads_timed_out,
            ),
        ]
    }

    pub fn latencies(&self) -> [Latency<'_>; 3] {
        [
            Latency {
                metric: "stoker_exchange_batch_seconds",
                help: "Latency of one DoExchange batch (convert, queue, forward, encode).",
                histogram: &self.exchange_latency,
            },
            Latency {
                metric: "stoker_train_round_seconds",
                help: "Latency of one train_round action.",
                histogram: &self.train_latency,
            },
            Latency {
                metric: "stoker_put_seconds",
                help: "Latency of one DoPut (receive and convert a partition).",
                histogram: &self.put_latency,
            },
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    pub bytes: usize,
    pub budget_bytes: usize,
    pub evictions: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    pub name: String,
    pub version: u32,
    pub task: String,
    pub features: Vec<String>,
    /// Parameter bytes on the device.
    pub bytes: usize,
    /// Bytes of the artifact held in host memory.
    pub host_bytes: usize,
    pub tier: &'static str,
    pub requests: u64,
    pub forward_passes: u64,
    pub rows: u64,
    pub max_pass_rows: u64,
    pub max_pass_requests: u64,
}

/// A model tier's lookups; the host tier also reports what it holds.
#[derive(Debug, Clone, Serialize)]
pub struct TierStats {
    #[serde(skip)]
    pub tier: Tier,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_bytes: Option<usize>,
}

/// Everything the server counts, read at one moment.
pub struct Snapshot {
    pub counts: Vec<Count>,
    pub cache: CacheStats,
    pub jobs: Vec<JobInfo>,
    pub models: Vec<ModelStats>,
    pub tiers: Vec<TierStats>,
}

impl Snapshot {
    pub fn of(service: &Service) -> Snapshot {
        let m = &service.models;
        let (host_used, host_budget) = m.host_bytes();
        let tiers = [
            (Tier::Device, &m.device_tier),
            (Tier::Host, &m.host_tier),
            (Tier::Disk, &m.disk_tier),
        ]
        .into_iter()
        .map(|(tier, t)| {
            let host = tier == Tier::Host;
            TierStats {
                tier,
                hits: t.hits.load(Ordering::Relaxed),
                misses: t.misses.load(Ordering::Relaxed),
                evictions: t.evictions.load(Ordering::Relaxed),
                bytes: host.then_some(host_used),
                budget_bytes: host.then_some(host_budget),
            }
        })
        .collect();
        let models = m
            .list()
            .iter()
            .map(|s| {
                let b = &s.batching;
                ModelStats {
                    name: s.name.clone(),
                    version: s.version,
                    task: s.task.clone(),
                    features: s.features.clone(),
                    bytes: s.param_bytes,
                    host_bytes: s.artifact_bytes(),
                    tier: s.tier().as_str(),
                    requests: b.requests.load(Ordering::Relaxed),
                    forward_passes: b.forward_passes.load(Ordering::Relaxed),
                    rows: b.rows.load(Ordering::Relaxed),
                    max_pass_rows: b.max_pass_rows.load(Ordering::Relaxed),
                    max_pass_requests: b.max_pass_requests.load(Ordering::Relaxed),
                }
            })
            .collect();
        Snapshot {
            counts: service.counters.counts(),
            cache: CacheStats {
                bytes: service.jobs.cached_bytes(),
                budget_bytes: service.jobs.budget(),
                evictions: service.jobs.evictions.load(Ordering::Relaxed),
            },
            jobs: service.jobs.list(),
            models,
            tiers,
        }
    }

    /// The `stats` action's answer.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for c in &self.counts {
            out.insert(c.key.into(), c.value.into());
        }
        out.insert("cache".into(), json(&self.cache));
        out.insert("jobs".into(), json(&self.jobs));
        out.insert("models".into(), json(&self.models));
        let tiers = self
            .tiers
            .iter()
            .map(|t| (t.tier.as_str().to_string(), json(t)))
            .collect::<serde_json::Map<_, _>>();
        out.insert("tiers".into(), tiers.into());
        out.into()
    }

    /// Parameter bytes of the models loaded on the device.
    pub fn device_model_bytes(&self) -> usize {
        self.models
            .iter()
            .filter(|m| m.tier == Tier::Device.as_str())
            .map(|m| m.bytes)
            .sum()
    }
}

/// A value as JSON: these plain structs always serialize (string keys, no
/// failing serializers), so an error cannot happen; `Null` stands in if one did.
fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

//! Prometheus text metrics (`--metrics-port`): counters of rows in and out,
//! training rounds and failures; gauges of the partition cache and model
//! tiers; histograms of request latency and of coalesced batch sizes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Service;

/// A fixed-bucket histogram, lock-free to observe.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths of the observed unit.
    sum_micro: AtomicU64,
}

/// Seconds, from 100 µs to 60 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
];
/// Rows per forward pass.
pub const ROW_BOUNDS: &[f64] = &[1.0, 16.0, 128.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if value <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let n = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {n}");
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {n}");
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The metrics page.
pub fn render(service: &Service) -> String {
    let c = &service.counters;
    let mut out = String::new();
    let counters = [
        (
            "stoker_rows_in_total",
            "Training rows received by DoPut.",
            &c.rows_in,
        ),
        (
            "stoker_rows_predicted_total",
            "Rows predicted by DoExchange.",
            &c.rows_predicted,
        ),
        (
            "stoker_train_rounds_total",
            "Training rounds run.",
            &c.train_rounds,
        ),
        (
            "stoker_requests_failed_total",
            "Requests that failed.",
            &c.requests_failed,
        ),
    ];
    for (name, help, value) in counters {
        metric(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }
    metric(
        &mut out,
        "stoker_partition_cache_bytes",
        "gauge",
        "Bytes of cached training partitions.",
    );
    let _ = writeln!(
        out,
        "stoker_partition_cache_bytes {}",
        service.jobs.cached_bytes()
    );
    metric(
        &mut out,
        "stoker_partition_cache_budget_bytes",
        "gauge",
        "Byte budget of the partition cache.",
    );
    let _ = writeln!(
        out,
        "stoker_partition_cache_budget_bytes {}",
        service.jobs.budget()
    );
    metric(
        &mut out,
        "stoker_partition_cache_evictions_total",
        "counter",
        "Partitions evicted to fit the budget.",
    );
    let _ = writeln!(
        out,
        "stoker_partition_cache_evictions_total {}",
        service.jobs.evictions.load(Ordering::Relaxed)
    );

    let m = &service.models;
    metric(
        &mut out,
        "stoker_model_tier_hits_total",
        "counter",
        "Model lookups served from a tier.",
    );
    metric(
        &mut out,
        "stoker_model_tier_misses_total",
        "counter",
        "Model lookups that had to load from a lower tier.",
    );
    metric(
        &mut out,
        "stoker_model_tier_evictions_total",
        "counter",
        "Models evicted from a tier to the one below.",
    );
    for (tier, t) in [
        ("device", &m.device_tier),
        ("host", &m.host_tier),
        ("disk", &m.disk_tier),
    ] {
        let _ = writeln!(
            out,
            "stoker_model_tier_hits_total{{tier=\"{tier}\"}} {}",
            t.hits.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "stoker_model_tier_misses_total{{tier=\"{tier}\"}} {}",
            t.misses.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "stoker_model_tier_evictions_total{{tier=\"{tier}\"}} {}",
            t.evictions.load(Ordering::Relaxed)
        );
    }
    let models = m.list();
    metric(
        &mut out,
        "stoker_device_model_bytes",
        "gauge",
        "Parameter bytes of models loaded on the device.",
    );
    let on_device: usize = models
        .iter()
        .filter(|s| s.tier() == super::models::Tier::Device)
        .map(|s| s.param_bytes)
        .sum();
    let _ = writeln!(out, "stoker_device_model_bytes {on_device}");
    metric(
        &mut out,
        "stoker_inference_pass_rows",
        "histogram",
        "Rows per coalesced forward pass.",
    );
    for s in &models {
        s.batching.pass_rows.render(
            &mut out,
            "stoker_inference_pass_rows",
            &format!("model=\"{}\",version=\"{}\"", s.name, s.version),
        );
    }
    metric(
        &mut out,
        "stoker_exchange_batch_seconds",
        "histogram",
        "Latency of one DoExchange batch (convert, queue, forward, encode).",
    );
    c.exchange_latency
        .render(&mut out, "stoker_exchange_batch_seconds", "");
    metric(
        &mut out,
        "stoker_train_round_seconds",
        "histogram",
        "Latency of one train_round action.",
    );
    c.train_latency
        .render(&mut out, "stoker_train_round_seconds", "");
    metric(
        &mut out,
        "stoker_put_seconds",
        "histogram",
        "Latency of one DoPut (receive and convert a partition).",
    );
    c.put_latency.render(&mut out, "stoker_put_seconds", "");
    out
}

/// Serves the metrics page over plain HTTP until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, service: Arc<Service>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 2048];
            let _ = socket.read(&mut request).await;
            let body = render(&service);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 2.0, 20.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "m=\"a\"");
        assert!(out.contains("x_bucket{m=\"a\",le=\"1\"} 1"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"10\"} 2"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count{m=\"a\"} 3"), "{out}");
    }
}

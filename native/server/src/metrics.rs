//! Prometheus text metrics (`--metrics-port`): the same [`Snapshot`] the
//! `stats` action answers with (counters of rows in and out, training
//! rounds and failures; gauges of the partition cache and model tiers),
//! plus the histograms of request latency and of coalesced batch sizes.

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stats::Snapshot;
use crate::Service;

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    metric(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The metrics page.
pub fn render(service: &Service) -> String {
    let snapshot = Snapshot::of(service);
    let mut out = String::new();
    for c in &snapshot.counts {
        let name = format!("stoker_{}_total", c.key);
        gauge(&mut out, &name, "counter", c.help, c.value);
    }
    let cache = &snapshot.cache;
    gauge(
        &mut out,
        "stoker_partition_cache_bytes",
        "gauge",
        "Bytes of cached training partitions.",
        cache.bytes,
    );
    gauge(
        &mut out,
        "stoker_partition_cache_budget_bytes",
        "gauge",
        "Byte budget of the partition cache.",
        cache.budget_bytes,
    );
    gauge(
        &mut out,
        "stoker_partition_cache_evictions_total",
        "counter",
        "Partitions evicted to fit the budget.",
        cache.evictions,
    );
    let per_tier = [
        ("hits", "Model lookups served from a tier."),
        (
            "misses",
            "Model lookups that had to load from a lower tier.",
        ),
        ("evictions", "Models evicted from a tier to the one below."),
    ];
    for (i, (what, help)) in per_tier.into_iter().enumerate() {
        let name = format!("stoker_model_tier_{what}_total");
        metric(&mut out, &name, "counter", help);
        for t in &snapshot.tiers {
            let value = [t.hits, t.misses, t.evictions][i];
            let _ = writeln!(out, "{name}{{tier=\"{}\"}} {value}", t.tier.as_str());
        }
    }
    gauge(
        &mut out,
        "stoker_device_model_bytes",
        "gauge",
        "Parameter bytes of models loaded on the device.",
        snapshot.device_model_bytes(),
    );
    metric(
        &mut out,
        "stoker_inference_pass_rows",
        "histogram",
        "Rows per coalesced forward pass.",
    );
    for s in &service.models.list() {
        s.batching.pass_rows.render(
            &mut out,
            "stoker_inference_pass_rows",
            &format!("model=\"{}\",version=\"{}\"", s.name, s.version),
        );
    }
    for l in service.counters.latencies() {
        metric(&mut out, l.metric, "histogram", l.help);
        l.histogram.render(&mut out, l.metric, "");
    }
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

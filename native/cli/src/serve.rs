use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use stoker_core::{Error, Result};
use stoker_engine::DeviceSpec;

use stoker_server::{start, ServerConfig};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --token-file.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (the first stdout line says which).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// File holding the token clients must send (`authorization: Bearer <token>`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM certificate for TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest gRPC message in MiB (tonic's default is 4): an action carries a
    /// whole model state.
    #[arg(long, default_value_t = 1024)]
    max_message_mb: usize,
    /// Byte budget of the partition cache, in MiB.
    #[arg(long, default_value_t = 4096)]
    cache_mb: usize,
    /// Model directory (the registry's disk tier; models there are served after a restart).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// The directory model files named by clients (`torchscript_path`) are
    /// read from; without it the server reads no file a client names.
    #[arg(long)]
    model_root: Option<PathBuf>,
    /// Byte budget of models loaded on the device, in MiB.
    #[arg(long, default_value_t = 4096)]
    device_model_mb: usize,
    /// What one training job's model may take of the device (weights,
    /// gradients, optimizer state and one batch of activations), in MiB.
    #[arg(long, default_value_t = 4096)]
    job_model_mb: usize,
    /// Longest a model registration may take to load and probe its model, in
    /// seconds: a TorchScript forward that never returns fails that request
    /// instead of hanging it.
    #[arg(long, default_value_t = 60)]
    model_load_timeout_s: u64,
    /// Byte budget of model artifacts kept in host memory, in MiB.
    #[arg(long, default_value_t = 8192)]
    host_model_mb: usize,
    /// Most rows in one coalesced inference pass.
    #[arg(long, default_value_t = 65536)]
    max_batch_rows: usize,
    /// Longest wait for more streams to join an inference pass, in milliseconds
    /// (0: a pass takes what is queued; requests arriving during a pass join the next).
    #[arg(long, default_value_t = 0)]
    max_wait_ms: u64,
    /// Serve Prometheus metrics (plain HTTP) on this port.
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Shut down (draining, as on SIGTERM) when the process that started this
    /// server exits, even if it could not stop it (e.g. a Python worker that
    /// ends with os._exit).
    #[arg(long)]
    exit_with_parent: bool,
    /// Shut down once no process registered in this directory (one file
    /// named for each user's pid) is alive: how a node's shared server
    /// outlives the JVM that started it while others use it, and stops
    /// when its last user is gone, however that ended.
    #[arg(long)]
    users: Option<PathBuf>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))
}

pub fn run(a: ServeArgs) -> Result<()> {
    let token = match &a.token_file {
        Some(p) => {
            let t = String::from_utf8(read(p, "token file")?)
                .map_err(|_| Error::invalid("the token file is not UTF-8"))?
                .trim()
                .to_string();
            if t.is_empty() {
                return Err(Error::invalid("the token file is empty"));
            }
            Some(t)
        }
        None => None,
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some((read(c, "TLS certificate")?, read(k, "TLS key")?)),
        _ => None,
    };
    let config = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        device: a.device.parse::<DeviceSpec>()?,
        token,
        tls,
        max_message_bytes: a.max_message_mb.max(1) << 20,
        cache_bytes: a.cache_mb << 20,
        model_dir: a.model_dir.clone(),
        model_root: a.model_root.clone(),
        device_model_bytes: a.device_model_mb << 20,
        job_model_bytes: a.job_model_mb << 20,
        model_load_timeout: std::time::Duration::from_secs(a.model_load_timeout_s.max(1)),
        host_model_bytes: a.host_model_mb << 20,
        batch: stoker_server::batcher::BatchLimits {
            max_rows: a.max_batch_rows.max(1),
            max_wait: std::time::Duration::from_millis(a.max_wait_ms),
        },
        metrics_port: a.metrics_port,
    };
    config.device.resolve()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STOKER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("starting the runtime: {e}")))?;
    // Taken before the address is printed: a parent that reads it and exits at
    // once must still count as a change of parent.
    #[cfg(unix)]
    let parent = std::os::unix::process::parent_id();
    #[cfg(not(unix))]
    let parent = 0;
    let users = a.users.clone();
    let served = runtime.block_on(async {
        let server = start(config).await?;
        // The first stdout line is the address: scripts and the Spark side
        // read it to connect.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", server.uri());
        if let Some(m) = server.metrics_addr {
            let _ = writeln!(out, "metrics http://{m}/metrics");
        }
        let _ = out.flush();
        tokio::select! {
            _ = wait_for_signal() => {},
            _ = parent_exit(parent), if a.exit_with_parent => {
                tracing::info!("the process that started this server exited");
            },
            _ = crate::users::none_left(users.clone().unwrap_or_default()), if users.is_some() => {
                tracing::info!("no process that used this server is alive");
            },
        }
        tracing::info!("shutting down: draining in-flight requests");
        server.stop().await
    });
    // Every request has answered by now; a blocking thread still in a model's
    // forward that never returns (the model load timeout) must not hold the
    // exit, so the runtime waits for its threads only this long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    served
}

/// Resolves when this process's parent is no longer `original` (it exited and
/// the process was re-parented), checked once a second.
async fn parent_exit(original: u32) {
    #[cfg(unix)]
    {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if std::os::unix::process::parent_id() != original {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = original;
        std::future::pending::<()>().await
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

//! `stoker serve`: the Arrow Flight server that owns a node's device.
//! docs/protocol.md describes what it speaks.
//!
//! A request enters through [`fastpath`] (DoGet, DoPut, DoExchange and
//! DoAction read and written without tonic's codec) or tonic's generated
//! service (the rest), both into [`handler`], the only gRPC-facing layer:
//! it authorizes, reads descriptors, tickets and headers, and maps errors
//! to statuses. Behind it, [`service`] (partitions in, predictions out,
//! states) and [`actions`] work on the registries: [`jobs`] (training jobs
//! and their partition cache) and [`models`] (the served models and their
//! tiers, each with its [`batcher`]). [`stats`] is what all of them count.

pub mod actions;
pub mod batcher;
pub mod fastpath;
pub mod handler;
pub mod histogram;
pub mod jobs;
pub mod linalg;
pub mod metrics;
pub mod model_root;
pub mod models;
pub mod service;
pub mod stats;
pub mod transport;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use stoker_core::{Error, ErrorKind, Result};
use stoker_engine::DeviceSpec;
use stoker_wire::http2;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use service::Service;

/// Locks a mutex, recovering from poisoning: a panic while holding one of
/// the server's locks leaves plain data behind, and the server keeps
/// serving rather than failing every later request.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything `stoker serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub device: DeviceSpec,
    /// Clients must send `authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// PEM certificate and key: serve TLS (rustls) when set.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Largest gRPC message accepted or sent (tonic's default is 4 MiB).
    pub max_message_bytes: usize,
    /// Byte budget of the partition cache.
    pub cache_bytes: usize,
    /// Model directory: the registry's disk tier (models survive restarts).
    pub model_dir: Option<std::path::PathBuf>,
    /// The directory `torchscript_path` in requests is confined to; `None`:
    /// the server reads no file a client names.
    pub model_root: Option<std::path::PathBuf>,
    /// Byte budgets of the device and host model tiers.
    pub device_model_bytes: usize,
    /// What one training job's model may take of the device: weights,
    /// gradients, optimizer slots and one batch of activations.
    pub job_model_bytes: usize,
    pub host_model_bytes: usize,
    /// How long registering a model may take to load and probe it; past
    /// it the request fails (the probe's thread runs on until it returns).
    pub model_load_timeout: std::time::Duration,
    /// Dynamic batching of concurrent inference streams.
    pub batch: batcher::BatchLimits,
    /// Serve Prometheus metrics over HTTP on this port (same host).
    pub metrics_port: Option<u16>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            device: DeviceSpec::Auto,
            token: None,
            tls: None,
            max_message_bytes: stoker_core::protocol::MAX_MESSAGE_BYTES,
            cache_bytes: 4 << 30,
            model_dir: None,
            model_root: None,
            device_model_bytes: 4 << 30,
            job_model_bytes: 4 << 30,
            host_model_bytes: 8 << 30,
            model_load_timeout: std::time::Duration::from_secs(60),
            batch: batcher::BatchLimits::default(),
            metrics_port: None,
        }
    }
}

/// A server running on the current tokio runtime.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where the metrics page is, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    pub tls: bool,
    pub service: Arc<Service>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// The address clients connect to: `grpc://host:port` or `grpc+tls://`.
    pub fn uri(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "grpc+tls" } else { "grpc" },
            self.addr
        )
    }

    /// Stops accepting, lets in-flight requests finish, and returns.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle
            .await
            .map_err(|e| Error::internal(format!("server task failed: {e}")))?
    }
}

/// Binds and starts serving; returns once the socket is bound.
pub async fn start(config: ServerConfig) -> Result<RunningServer> {
    let ip: IpAddr = match config.host.as_str() {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h
            .parse()
            .map_err(|_| Error::invalid(format!("--host '{h}' is not an IP address")))?,
    };
    if !ip.is_loopback() && config.token.is_none() {
        return Err(Error::invalid(format!(
            "refusing to listen on {ip} without a token: a non-loopback address needs --token-file"
        )));
    }
    let listener = tokio::net::TcpListener::bind((ip, config.port))
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot listen on {ip}:{}: {e}", config.port),
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    let service = Arc::new(Service {
        jobs: jobs::Jobs::new(config.cache_bytes, config.job_model_bytes),
        models: models::Models::new(models::RegistryConfig {
            device: config.device.resolve()?,
            device_bytes: config.device_model_bytes,
            host_bytes: config.host_model_bytes,
            model_dir: config.model_dir.clone(),
            limits: config.batch,
        })?,
        device: config.device,
        token: config.token.clone(),
        max_message_bytes: config.max_message_bytes,
        model_load_timeout: config.model_load_timeout,
        model_root: model_root::ModelRoot::new(
            config.model_root.as_deref(),
            config.max_message_bytes,
        )?,
        counters: Default::default(),
    });
    let flight =
        fastpath::FlightRoutes::new(handler::Handler(service.clone()), config.max_message_bytes);
    // The same frame and window sizes as stoker's client (stoker_wire::http2).
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(http2::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(http2::CONNECTION_WINDOW_BYTES))
        .max_frame_size(Some(http2::MAX_FRAME_BYTES))
        .http2_max_header_list_size(Some(http2::MAX_HEADER_LIST_BYTES));
    let tls = config.tls.is_some();
    if let Some((cert, key)) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| {
                let e = stoker_wire::status::chain(&e);
                Error::invalid(format!("TLS certificate or key: {e}"))
            })?;
    }
    let metrics_addr = match config.metrics_port {
        Some(port) => {
            let listener = tokio::net::TcpListener::bind((ip, port))
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("cannot listen for metrics on {ip}:{port}: {e}"),
                    )
                })?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::io("reading the metrics address", e))?;
            tokio::spawn(metrics::serve(listener, service.clone()));
            Some(bound)
        }
        None => None,
    };
    let (tx, rx) = oneshot::channel::<()>();
    // TCP_NODELAY on every accepted connection: without it, small responses (a
    // prediction batch, an action result) wait out the client's delayed ACK, about
    // 40 ms per call.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = builder.add_service(flight);
    let handle = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await
            .map_err(|e| Error::internal(format!("server: {e}")))
    });
    tracing::info!(%addr, tls, device = %config.device, auth = config.token.is_some(), "stoker server listening");
    Ok(RunningServer {
        addr,
        metrics_addr,
        tls,
        service,
        shutdown: Some(tx),
        handle,
    })
}

//! The Rust client of the stoker server: typed methods for every action,
//! partition upload from any stream of record batches, and inference over
//! DoExchange. The JNI and Python crates call this; errors come back with
//! the kind the server gave them (docs/errors.md).

use arrow::array::{AsArray, RecordBatch};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightClient, FlightDescriptor, PutResult, Ticket};
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use stoker_core::protocol::{
    action, CreateJob, Envelope, Evaluate, EvaluateResult, ModelKey, Named, PartitionKey,
    RegisterModel, TrainRound, TrainRoundResult, MODELS_PATH,
};
use stoker_core::{Error, Result};
use tonic::transport::Endpoint;

use crate::call::Calls;
use crate::connect::{connect_error, with_tls, Target, CONNECT_TIMEOUT};
use stoker_wire::body::Prost;
use stoker_wire::http2::{
    CONNECTION_WINDOW_BYTES, DO_ACTION, DO_EXCHANGE, DO_GET, DO_PUT, MAX_FRAME_BYTES,
    MAX_HEADER_LIST_BYTES, STREAM_WINDOW_BYTES,
};
use stoker_wire::outgoing::{encode_batches, ActionRequest, Outgoing};
use stoker_wire::status::from_flight;

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub token: Option<String>,
    /// PEM of the CA that signed the server's certificate (TLS): the only
    /// one trusted. None: the operating system's root certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// Largest message sent or accepted; batches are split to fit.
    pub max_message_bytes: usize,
    /// How long a server may stay silent (not even answering an HTTP/2
    /// ping) before its calls fail with UNAVAILABLE: a stopped or wedged
    /// server surfaces as an error within this, while a long call to a
    /// live server (a training round of minutes) is unaffected, since the
    /// server's connection layer answers pings while it computes.
    pub liveness: std::time::Duration,
}

/// [`ClientOptions::liveness`] by default: a ping every 10 s, answered
/// within 10 s.
pub const DEFAULT_LIVENESS: std::time::Duration = std::time::Duration::from_secs(20);

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            ca_pem: None,
            max_message_bytes: stoker_core::protocol::MAX_MESSAGE_BYTES,
            liveness: DEFAULT_LIVENESS,
        }
    }
}

/// Methods that carry data (DoPut, DoExchange, DoAction, DoGet) go through
/// [`Calls`], which sends buffers as they are; the listing methods go
/// through arrow-flight's client.
pub struct Client {
    inner: FlightClient,
    calls: Calls,
    max_message_bytes: usize,
}

/// Where DoExchange sends features for `model`: `models/NAME[/VERSION]`.
fn model_descriptor(model: &ModelKey) -> FlightDescriptor {
    let mut path = vec![MODELS_PATH.to_string(), model.name.clone()];
    if let Some(v) = model.version {
        path.push(v.to_string());
    }
    FlightDescriptor::new_path(path)
}

impl Client {
    /// Connects to `grpc://host:port` (or `grpc+tls://host:port`, trusting
    /// `options.ca_pem` when given, else the system's root certificates).
    /// Bounded: a server that does not answer, or a TLS misconfiguration,
    /// fails within seconds with an error that names the cause
    /// ([`crate::connect`]).
    pub async fn connect(uri: &str, options: ClientOptions) -> Result<Client> {
        let target = Target::parse(uri, options.ca_pem.is_some())?;
        // A bounded connect, and HTTP/2 pings so a server that vanished or
        // stopped is noticed instead of a call hanging on a dead connection:
        // half the liveness between pings, half for the answer.
        let half = (options.liveness / 2).max(std::time::Duration::from_millis(500));
        let mut endpoint = Endpoint::from_shared(target.http())
            .map_err(|e| Error::invalid(format!("address '{uri}': {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(half)
            .keep_alive_timeout(half)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        if target.tls {
            endpoint = with_tls(endpoint, &target, options.ca_pem.as_deref())?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_error(&target, &e))?;
        let mut calls = Calls::new(channel.clone(), target);
        let service = FlightServiceClient::new(channel)
            .max_decoding_message_size(options.max_message_bytes)
            .max_encoding_message_size(options.max_message_bytes);
        let mut inner = FlightClient::new_from_inner(service);
        if let Some(token) = &options.token {
            let bad = || Error::invalid("the token has characters a header cannot carry");
            let value = format!("Bearer {token}");
            inner
                .add_header("authorization", &value)
                .map_err(|_| bad())?;
            calls
                .add_header("authorization", &value)
                .map_err(|_| bad())?;
        }
        Ok(Client {
            inner,
            calls,
            max_message_bytes: options.max_message_bytes,
        })
    }

    async fn action(&mut self, kind: &str, body: Envelope) -> Result<Envelope> {
        let result = self.action_bytes(kind, body.encode()?).await?;
        Envelope::decode(&result)
    }

    /// Any action with an already encoded body (JSON or envelope); returns
    /// the encoded result as received (no copy). The JVM bridge uses this:
    /// Java builds the JSON.
    pub async fn action_bytes(&mut self, kind: &str, body: Vec<u8>) -> Result<Bytes> {
        self.action_chunks(kind, vec![Bytes::from(body)]).await
    }

    /// An action whose body is given as chunks sent as they are; returns
    /// the first result's body as received.
    pub async fn action_chunks(&mut self, kind: &str, body: Vec<Bytes>) -> Result<Bytes> {
        let request = ActionRequest {
            kind: kind.to_string(),
            body,
        };
        let answer = self
            .calls
            .call(DO_ACTION, stream::iter([Ok(request)]).boxed(), &[])
            .await?;
        let mut results = answer.messages::<arrow_flight::Result>(self.max_message_bytes);
        match results.next().await {
            Some(result) => Ok(result?.body),
            None => Err(Error::internal(format!("{kind} returned no result"))),
        }
    }

    /// A `linalg` op (docs/linalg.md) with its blobs; the result envelope
    /// (JSON and blobs).
    pub async fn linalg(
        &mut self,
        req: &stoker_core::protocol::Linalg,
        blobs: Vec<(&str, Vec<u8>)>,
    ) -> Result<Envelope> {
        let mut env = Envelope::new(req)?;
        for (name, bytes) in blobs {
            env = env.with_blob(name, bytes);
        }
        self.action(action::LINALG, env).await
    }

    pub async fn health(&mut self) -> Result<serde_json::Value> {
        Ok(self.action(action::HEALTH, Envelope::default()).await?.json)
    }

    pub async fn stats(&mut self) -> Result<serde_json::Value> {
        Ok(self.action(action::STATS, Envelope::default()).await?.json)
    }

    /// Creates (or replaces) a job; `model` carries TorchScript bytes when
    /// the request names neither a spec nor a path.
    pub async fn create_job(&mut self, req: &CreateJob, model: Option<Vec<u8>>) -> Result<()> {
        let mut env = Envelope::new(req)?;
        if let Some(m) = model {
            env = env.with_blob("model", m);
        }
        self.action(action::CREATE_JOB, env).await.map(|_| ())
    }

    /// Streams a partition to the server (DoPut), splitting batches to fit
    /// the message limit. Returns the server's `{rows, bytes, replaced}`.
    pub async fn put_partition<S>(
        &mut self,
        key: &PartitionKey,
        batches: S,
    ) -> Result<serde_json::Value>
    where
        S: Stream<Item = Result<RecordBatch>> + Send + 'static,
    {
        let descriptor = FlightDescriptor::new_path(key.path());
        let messages = self.encode(descriptor, batches);
        self.put(messages).await
    }

    /// Flight messages for `batches`, the first carrying `descriptor`; the
    /// batches' buffers are passed on, not copied.
    fn encode<S>(
        &self,
        descriptor: FlightDescriptor,
        batches: S,
    ) -> BoxStream<'static, Result<Outgoing>>
    where
        S: Stream<Item = Result<RecordBatch>> + Send + 'static,
    {
        let limit = stoker_core::protocol::data_message_bytes(self.max_message_bytes);
        let batches = batches.map_err(|e| FlightError::ExternalError(Box::new(e)));
        let mut descriptor = Some(descriptor);
        encode_batches(batches, limit)
            .map(move |m| {
                let mut m = m.map_err(from_flight)?;
                m.descriptor = descriptor.take();
                Ok(m)
            })
            .boxed()
    }

    /// Runs a DoPut; returns the server's last answer (its `app_metadata`).
    async fn put(
        &mut self,
        data: BoxStream<'static, Result<Outgoing>>,
    ) -> Result<serde_json::Value> {
        let answer = self.calls.call(DO_PUT, data, &[]).await?;
        let mut results = answer.messages::<PutResult>(self.max_message_bytes);
        let mut last = serde_json::Value::Null;
        while let Some(r) = results.next().await {
            last = serde_json::from_slice(&r?.app_metadata).unwrap_or(serde_json::Value::Null);
        }
        Ok(last)
    }

    /// Sends a partition given as one Arrow IPC stream (what the JVM writes),
    /// passing its messages through as Flight data: the batches are not
    /// decoded and encoded again on this side (the server checks them as it
    /// decodes). A stream with a message over the data-message limit is
    /// decoded and sent through [`Client::put_partition`], which splits it.
    pub async fn put_partition_ipc(
        &mut self,
        key: &PartitionKey,
        ipc: Bytes,
    ) -> Result<serde_json::Value> {
        let descriptor = FlightDescriptor::new_path(key.path());
        let messages = self.ipc_messages(descriptor, ipc)?;
        self.put(messages).await
    }

    /// An Arrow IPC stream as Flight messages, the first carrying
    /// `descriptor`: its messages passed through as slices of `ipc` when
    /// each fits the data-message limit, else its batches decoded and split.
    fn ipc_messages(
        &self,
        descriptor: FlightDescriptor,
        ipc: Bytes,
    ) -> Result<BoxStream<'static, Result<Outgoing>>> {
        let limit = stoker_core::protocol::data_message_bytes(self.max_message_bytes);
        let ranges = stoker_core::ipc::message_ranges(&ipc)?;
        if ranges.is_empty() || ranges.iter().any(|(m, b)| m.len() + b.len() > limit) {
            let (_, batches) = stoker_core::ipc::read_stream(&ipc)?;
            let batches = stream::iter(batches.into_iter().map(Ok));
            return Ok(self.encode(descriptor, batches));
        }
        let mut descriptor = Some(descriptor);
        let data: Vec<Result<Outgoing>> = ranges
            .into_iter()
            .map(|(meta, body)| {
                Ok(Outgoing {
                    descriptor: descriptor.take(),
                    header: ipc.slice(meta),
                    app_metadata: Bytes::new(),
                    body: vec![ipc.slice(body)],
                })
            })
            .collect();
        Ok(stream::iter(data).boxed())
    }

    /// Trains one partition for one round; returns the result and the new
    /// state's bytes. A partition the server does not hold is a
    /// `cache_miss` error: put it and call again. A request that names a
    /// `state_id` the server does not hold, without the state, comes back
    /// with `needs_state` set and no state: send it and call again.
    pub async fn train_round(
        &mut self,
        req: &TrainRound,
        state: Option<Vec<u8>>,
    ) -> Result<(TrainRoundResult, Vec<u8>)> {
        let mut env = Envelope::new(req)?;
        if let Some(s) = state {
            env = env.with_blob("state", s);
        }
        let mut out = self.action(action::TRAIN_ROUND, env).await?;
        let result: TrainRoundResult = out.parse("train_round result")?;
        if result.needs_state {
            return Ok((result, Vec::new()));
        }
        let state = out
            .take_blob("state")
            .ok_or_else(|| Error::internal("train_round returned no state"))?;
        Ok((result, state))
    }

    /// Scores a state (none: the job's initial weights) on one cached
    /// partition; merge the results' `evaluation`s across partitions for
    /// the metrics of them all. Cache misses and `needs_state` as in
    /// [`Client::train_round`].
    pub async fn evaluate(
        &mut self,
        req: &Evaluate,
        state: Option<Vec<u8>>,
    ) -> Result<EvaluateResult> {
        let mut env = Envelope::new(req)?;
        if let Some(s) = state {
            env = env.with_blob("state", s);
        }
        self.action(action::EVALUATE, env)
            .await?
            .parse("evaluate result")
    }

    pub async fn drop_job(&mut self, job: &str) -> Result<()> {
        let env = Envelope::new(Named {
            name: job.into(),
            version: None,
        })?;
        self.action(action::DROP_JOB, env).await.map(|_| ())
    }

    /// Registers a model; returns `{name, version, task, features}`.
    pub async fn register_model(
        &mut self,
        req: &RegisterModel,
        model: Option<Vec<u8>>,
        state: Option<Vec<u8>>,
    ) -> Result<serde_json::Value> {
        let mut env = Envelope::new(req)?;
        if let Some(m) = model {
            env = env.with_blob("model", m);
        }
        if let Some(s) = state {
            env = env.with_blob("state", s);
        }
        Ok(self.action(action::REGISTER_MODEL, env).await?.json)
    }

    pub async fn unload_model(&mut self, name: &str, version: Option<u32>) -> Result<()> {
        let env = Envelope::new(Named {
            name: name.into(),
            version,
        })?;
        self.action(action::UNLOAD_MODEL, env).await.map(|_| ())
    }

    /// Streams feature batches to a model (DoExchange) and returns the
    /// prediction batches as a stream, in order, with the `keep` columns
    /// carried along.
    pub async fn predict_stream<S>(
        &mut self,
        model: &ModelKey,
        keep: &[String],
        batches: S,
    ) -> Result<FlightRecordBatchStream>
    where
        S: Stream<Item = Result<RecordBatch>> + Send + 'static,
    {
        let messages = self.encode(model_descriptor(model), batches);
        self.exchange(keep, messages).await
    }

    /// [`Client::predict_stream`] for features given as one Arrow IPC
    /// stream (what the JVM writes), its messages passed through as they
    /// are, like [`Client::put_partition_ipc`].
    pub async fn predict_ipc(
        &mut self,
        model: &ModelKey,
        keep: &[String],
        ipc: Bytes,
    ) -> Result<FlightRecordBatchStream> {
        let messages = self.ipc_messages(model_descriptor(model), ipc)?;
        self.exchange(keep, messages).await
    }

    async fn exchange(
        &mut self,
        keep: &[String],
        messages: BoxStream<'static, Result<Outgoing>>,
    ) -> Result<FlightRecordBatchStream> {
        let mut headers = Vec::new();
        if !keep.is_empty() {
            let list = keep.join(",");
            // Half the server's header limit: the token and gRPC's own
            // headers share the block.
            if list.len() > MAX_HEADER_LIST_BYTES as usize / 2 {
                return Err(Error::invalid(format!(
                    "{} pass-through columns make a {}-byte header, over {} bytes; keep fewer columns (join them back afterwards)",
                    keep.len(),
                    list.len(),
                    MAX_HEADER_LIST_BYTES / 2
                )));
            }
            let value = tonic::codegen::http::HeaderValue::from_str(&list)
                .map_err(|_| Error::invalid("pass-through column names must be ASCII"))?;
            headers.push(("x-stoker-keep", value));
        }
        let answer = self.calls.call(DO_EXCHANGE, messages, &headers).await?;
        let data = answer
            .flight_data(self.max_message_bytes)
            .map_err(|e| FlightError::ExternalError(Box::new(e)));
        Ok(FlightRecordBatchStream::new_from_flight_data(data))
    }

    /// [`Client::predict_stream`], collected.
    pub async fn predict(
        &mut self,
        model: &ModelKey,
        keep: &[String],
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let input = futures::stream::iter(batches.into_iter().map(Ok));
        let stream = self.predict_stream(model, keep, input).await?;
        stream.try_collect().await.map_err(from_flight)
    }

    /// Downloads a state by ticket: `jobs/JOB` (the job's initial state) or
    /// `models/NAME[/VERSION]`.
    pub async fn download_state(&mut self, ticket: &str) -> Result<Vec<u8>> {
        let ticket = Prost(Ticket::new(ticket.to_string()));
        let answer = self
            .calls
            .call(DO_GET, stream::iter([Ok(ticket)]).boxed(), &[])
            .await?;
        let data = answer
            .flight_data(self.max_message_bytes)
            .map_err(|e| FlightError::ExternalError(Box::new(e)));
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(from_flight)?;
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Error::internal("DoGet returned no state"))?;
        let column = batch
            .column(0)
            .as_binary_opt::<i32>()
            .ok_or_else(|| Error::internal("DoGet returned a non-binary column"))?;
        Ok(column.value(0).to_vec())
    }

    /// What the server lists at a descriptor path (GetFlightInfo); for
    /// `["models", NAME]` the latest version.
    pub async fn flight_info(&mut self, path: Vec<String>) -> Result<arrow_flight::FlightInfo> {
        self.inner
            .get_flight_info(FlightDescriptor::new_path(path))
            .await
            .map_err(from_flight)
    }

    /// The listing of jobs and models (ListFlights).
    pub async fn list(&mut self) -> Result<Vec<arrow_flight::FlightInfo>> {
        let stream = self
            .inner
            .list_flights(Bytes::new())
            .await
            .map_err(from_flight)?;
        stream.try_collect().await.map_err(from_flight)
    }
}

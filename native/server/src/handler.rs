//! The gRPC face of the server, and its only one: each Flight method
//! authorizes the caller, reads what gRPC carries (descriptors, tickets,
//! the `x-stoker-keep` header, Flight data), calls the typed domain
//! operation ([`Service`], actions.rs), and maps a stoker error to its
//! status (counted as a failed request). [`super::fastpath`] routes the
//! data-carrying methods to the [`Handler`] methods below without tonic's
//! codec; the trait methods it shadows (do_get, do_put, do_exchange,
//! do_action) adapt tonic's types to the same methods, for completeness and
//! for callers that reach the generated service directly.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use stoker_core::protocol::{
    self, Envelope, ModelKey, PartitionKey, StateTicket, JOBS_PATH, MODELS_PATH,
};
use stoker_core::{Error, ErrorKind, Result};
use stoker_wire::outgoing::{encode_batches, ActionResult, Outgoing};
use stoker_wire::status::{from_flight, from_status, to_status};
use tonic::{Request, Response, Status, Streaming};

use crate::actions::Blobs;
use crate::service::{blocking, Batches, Service};
use crate::transport;

/// The header naming DoExchange's pass-through columns.
const KEEP_HEADER: &str = "x-stoker-keep";

/// A server-streaming answer as tonic takes it.
pub type Stream<T> = BoxStream<'static, std::result::Result<T, Status>>;

/// The Flight data of a DoPut or DoExchange after its descriptor.
type DataStream = BoxStream<'static, std::result::Result<FlightData, FlightError>>;

/// The gRPC face of [`Service`] (a newtype: the Flight trait cannot be
/// implemented for `Arc<Service>` directly).
#[derive(Clone)]
pub struct Handler(pub Arc<Service>);

impl Handler {
    fn authorize<T>(&self, req: &Request<T>) -> std::result::Result<(), Status> {
        let Some(token) = &self.0.token else {
            return Ok(());
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(self.fail(Error::new(ErrorKind::Unauthenticated, "wrong token"))),
            None => Err(self.fail(Error::new(
                ErrorKind::Unauthenticated,
                "this server needs a token: send the header 'authorization: Bearer <token>'",
            ))),
        }
    }

    /// A failed request: counted, logged, and mapped to its status.
    fn fail(&self, e: Error) -> Status {
        self.0
            .counters
            .requests_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(kind = %e.kind(), error = %e.message(), "request failed");
        to_status(e)
    }

    /// Outgoing Flight messages of `batches`, a failure in them mapped to
    /// its status.
    fn encode(&self, batches: Batches) -> Stream<Outgoing> {
        let max_bytes = protocol::data_message_bytes(self.0.max_message_bytes);
        let me = self.clone();
        encode_batches(
            batches.map_err(|e| FlightError::Tonic(Box::new(to_status(e)))),
            max_bytes,
        )
        .map_err(move |e| me.fail(from_flight(e)))
        .boxed()
    }

    /// DoAction: its results as buffers sent back to back.
    pub(crate) async fn act(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Stream<ActionResult>, Status> {
        self.authorize(&request)?;
        let a = request.into_inner();
        let run = async {
            let (json, ranges) = Envelope::split(&a.body)?;
            let action = protocol::Action::parse(&a.r#type, json)?;
            self.0
                .clone()
                .action(action, Blobs::new(a.body, ranges))
                .await
        };
        let results = run.await.map_err(|e| self.fail(e))?;
        Ok(stream::iter(results.into_iter().map(Ok)).boxed())
    }

    /// DoGet: a state (one Arrow batch with one binary cell, so any Flight
    /// client can download it) or the transport check's zeros.
    pub(crate) async fn get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Stream<Outgoing>, Status> {
        self.authorize(&request)?;
        let ticket = request.into_inner().ticket;
        if ticket.starts_with(transport::ZEROS.as_bytes()) {
            let text = String::from_utf8_lossy(&ticket).into_owned();
            let batches = transport::zeros(&text).map_err(|e| self.fail(e))?;
            return Ok(self.encode(stream::iter(batches.into_iter().map(Ok)).boxed()));
        }
        let me = self.0.clone();
        let state = blocking(move || me.state(&StateTicket::parse(&ticket)?))
            .await
            .map_err(|e| self.fail(e))?;
        let array = arrow::array::BinaryArray::from_vec(vec![state.as_slice()]);
        let batch =
            RecordBatch::try_from_iter(vec![("state", Arc::new(array) as arrow::array::ArrayRef)])
                .map_err(|e| self.fail(Error::from(e)))?;
        Ok(self.encode(stream::iter([Ok(batch)]).boxed()))
    }

    /// DoPut: a partition (descriptor `["partition", JOB, PARTITION,
    /// VERSION]`) or the transport check's `_echo`, read and dropped.
    pub(crate) async fn put(
        &self,
        request: Request<Stream<FlightData>>,
    ) -> std::result::Result<PutResult, Status> {
        self.authorize(&request)?;
        let run = async {
            let (path, data) = split_descriptor(request.into_inner()).await?;
            let meta = if transport::is_echo(&path) {
                drain(data).await?
            } else {
                let key = PartitionKey::from_path(&path)?;
                self.0.clone().put(key, decode(data)).await?
            };
            Ok(PutResult {
                app_metadata: Bytes::from(meta.to_string()),
            })
        };
        run.await.map_err(|e| self.fail(e))
    }

    /// DoExchange: predictions of the model the descriptor names
    /// (`["models", NAME, VERSION?]`), or the transport check's `_echo`.
    pub(crate) async fn exchange(
        &self,
        request: Request<Stream<FlightData>>,
    ) -> std::result::Result<Stream<Outgoing>, Status> {
        self.authorize(&request)?;
        let keep = keep_columns(request.metadata());
        let run = async {
            let keep = keep?;
            let (path, data) = split_descriptor(request.into_inner()).await?;
            if transport::is_echo(&path) {
                return Ok(decode(data));
            }
            self.0
                .clone()
                .exchange(&ModelKey::from_path(&path)?, decode(data), keep)
        };
        let batches = run.await.map_err(|e| self.fail(e))?;
        Ok(self.encode(batches))
    }

    /// ListFlights: the jobs and models this server holds.
    fn flight_infos(&self) -> Vec<FlightInfo> {
        let mut out = Vec::new();
        for j in self.0.jobs.list() {
            let d = FlightDescriptor::new_path(vec![JOBS_PATH.into(), j.name.clone()]);
            let ticket = StateTicket::Job(j.name.clone()).text();
            let info = FlightInfo::new()
                .with_descriptor(d)
                .with_total_records(j.rows as i64)
                .with_total_bytes(j.bytes as i64)
                .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                .with_app_metadata(
                    serde_json::json!({"kind": "job", "partitions": j.partitions}).to_string(),
                );
            out.push(info);
        }
        for m in self.0.models.list() {
            let d = FlightDescriptor::new_path(vec![
                MODELS_PATH.into(),
                m.name.clone(),
                m.version.to_string(),
            ]);
            let ticket = StateTicket::Model(ModelKey {
                name: m.name.clone(),
                version: Some(m.version),
            })
            .text();
            let info = FlightInfo::new()
                .with_descriptor(d)
                .with_total_records(m.batching.rows.load(Ordering::Relaxed) as i64)
                .with_total_bytes(m.param_bytes as i64)
                .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                .with_app_metadata(
                    serde_json::json!({"kind": "model", "version": m.version, "task": m.task, "tier": m.tier().as_str()})
                        .to_string(),
                );
            out.push(info);
        }
        out
    }
}

#[tonic::async_trait]
impl FlightService for Handler {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        let mut input = request.into_inner();
        let first = input.message().await?.unwrap_or_default();
        if let Some(token) = &self.0.token {
            if !constant_time_eq(&first.payload, token.as_bytes()) {
                return Err(self.fail(Error::new(
                    ErrorKind::Unauthenticated,
                    "handshake: wrong token",
                )));
            }
        }
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: first.payload,
        };
        Ok(Response::new(stream::iter([Ok(reply)]).boxed()))
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        self.authorize(&request)?;
        let infos: Vec<_> = self.flight_infos().into_iter().map(Ok).collect();
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let wanted = request.into_inner().path;
        // Listings are sorted by name and version, so the last match of a
        // prefix such as ["models", NAME] is the latest version.
        let found = self.flight_infos().into_iter().rev().find(|i| {
            i.flight_descriptor
                .as_ref()
                .is_some_and(|d| d.path == wanted || d.path.starts_with(&wanted))
        });
        found.map(Response::new).ok_or_else(|| {
            self.fail(Error::not_found(format!(
                "nothing at descriptor path {wanted:?}"
            )))
        })
    }

    async fn poll_flight_info(
        &self,
        _r: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "stoker answers every request at once; use GetFlightInfo",
        ))
    }

    async fn get_schema(
        &self,
        _r: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(
            "stoker streams carry their schema; GetSchema is not used",
        ))
    }

    /// Shadowed by [`super::fastpath`] (same [`Handler::get`]).
    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        Ok(flight_data(self.get(request).await?))
    }

    /// Shadowed by [`super::fastpath`] (same [`Handler::put`]).
    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let result = self.put(request.map(StreamExt::boxed)).await?;
        Ok(Response::new(stream::iter([Ok(result)]).boxed()))
    }

    /// Shadowed by [`super::fastpath`] (same [`Handler::exchange`]).
    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        Ok(flight_data(
            self.exchange(request.map(StreamExt::boxed)).await?,
        ))
    }

    /// Shadowed by [`super::fastpath`] (same [`Handler::act`]).
    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        let results = self.act(request).await?;
        Ok(Response::new(
            results
                .map_ok(|r| arrow_flight::Result {
                    body: r.into_bytes(),
                })
                .boxed(),
        ))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        self.authorize(&request)?;
        let types = protocol::ACTIONS.iter().map(|(name, description)| {
            Ok(ActionType {
                r#type: name.to_string(),
                description: description.to_string(),
            })
        });
        Ok(Response::new(stream::iter(types).boxed()))
    }
}

/// Outgoing messages as tonic's generated service sends them.
fn flight_data(messages: Stream<Outgoing>) -> Response<Stream<FlightData>> {
    Response::new(messages.map_ok(Outgoing::into_flight_data).boxed())
}

/// The path of a DoPut's or DoExchange's descriptor (on its first message),
/// and the whole stream of Flight data for decoding.
async fn split_descriptor(mut input: Stream<FlightData>) -> Result<(Vec<String>, DataStream)> {
    let first = input
        .next()
        .await
        .transpose()
        .map_err(|s| from_status(&s))?;
    let rest = input.map_err(FlightError::from);
    let (descriptor, data) = match first {
        // Some clients (pyarrow's DoExchange) open with a message that
        // carries only the descriptor; it holds no Arrow data to decode.
        Some(f) if f.data_header.is_empty() && f.data_body.is_empty() => {
            (f.flight_descriptor, rest.boxed())
        }
        Some(f) => (
            f.flight_descriptor.clone(),
            stream::once(async { Ok(f) }).chain(rest).boxed(),
        ),
        None => (None, rest.boxed()),
    };
    let d = descriptor
        .ok_or_else(|| Error::invalid("the first message carries no flight descriptor"))?;
    if d.path.is_empty() {
        return Err(Error::invalid(
            "the flight descriptor has no path; see docs/protocol.md",
        ));
    }
    Ok((d.path, data))
}

/// Flight data decoded into record batches.
fn decode(data: DataStream) -> Batches {
    stoker_wire::inbound::record_batches(data)
        .map_err(from_flight)
        .boxed()
}

/// Reads and drops a DoPut stream (the `_echo` transport check).
async fn drain(data: DataStream) -> Result<serde_json::Value> {
    let mut decoded = decode(data);
    let (mut rows, mut bytes) = (0usize, 0usize);
    while let Some(batch) = decoded.next().await {
        let batch = batch?;
        rows += batch.num_rows();
        bytes += batch.get_array_memory_size();
    }
    Ok(serde_json::json!({"rows": rows, "bytes": bytes}))
}

/// Pass-through columns the client names in the `x-stoker-keep` header
/// (comma-separated ASCII; a header value cannot carry other text).
fn keep_columns(headers: &tonic::metadata::MetadataMap) -> Result<Vec<String>> {
    let Some(value) = headers.get(KEEP_HEADER) else {
        return Ok(Vec::new());
    };
    let text = value.to_str().map_err(|_| {
        Error::invalid(format!(
            "header '{KEEP_HEADER}' must be column names in ASCII, separated by commas"
        ))
    })?;
    Ok(protocol::column_list(text))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

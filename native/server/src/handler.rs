//! The gRPC face of the service: `FlightService` methods authorize the
//! caller, hand the request to [`Service`], and map errors to statuses.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream;
use futures::{StreamExt, TryStreamExt};
use stoker_core::protocol::action;
use stoker_core::{Error, ErrorKind};
use tonic::{Request, Response, Status, Streaming};

use super::service::{blocking, constant_time_eq, flight_error, keep_columns, Service, Stream};
use stoker_wire::outgoing::{encode_batches, ActionResult, Outgoing};

/// The actions ListActions describes.
pub fn action_types() -> Vec<ActionType> {
    let d = |t: &str, desc: &str| ActionType {
        r#type: t.into(),
        description: desc.into(),
    };
    vec![
        d(action::CREATE_JOB, "Create (or replace) a training job: {job, spec | torchscript_path | 'model' blob, features, label, loss?, optimizer?, device?, seed?, batch_size?}"),
        d(action::TRAIN_ROUND, "Train one cached partition for one round from the 'state' blob: {job, partition, version, round, epochs?, steps?}; returns the result JSON and the new 'state' blob; cache miss = FAILED_PRECONDITION"),
        d(action::DROP_JOB, "Forget a job and its cached partitions: {name}"),
        d(action::REGISTER_MODEL, "Register a servable model: {name, version?, spec | torchscript_path | 'model' blob, features?} with its 'state' blob"),
        d(action::UNLOAD_MODEL, "Forget a model version (or all versions): {name, version?}"),
        d(action::EXPORT_MODEL, "A trained model as TorchScript for torch.jit.load: {spec?} or a 'model' blob, with its 'state' blob; returns a 'torchscript' blob"),
        d(action::HEALTH, "Server status, version and device"),
        d(action::STATS, "Counters: rows in and predicted, rounds, cache bytes and evictions, jobs, models"),
    ]
}

/// The gRPC face of [`Service`] (a newtype: the Flight trait cannot be
/// implemented for `Arc<Service>` directly).
#[derive(Clone)]
pub struct Handler(pub Arc<Service>);

impl std::ops::Deref for Handler {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.0
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
        if let Some(token) = &self.token {
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
        self.authorize(&request).map_err(|e| self.fail(e))?;
        let infos: Vec<_> = self.flight_infos().into_iter().map(Ok).collect();
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        self.authorize(&request).map_err(|e| self.fail(e))?;
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

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let messages = self.get(request).await?;
        Ok(Response::new(
            messages.map_ok(Outgoing::into_flight_data).boxed(),
        ))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let result = self.put(request.map(StreamExt::boxed)).await?;
        Ok(Response::new(stream::iter([Ok(result)]).boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        let messages = self.exchange(request.map(StreamExt::boxed)).await?;
        Ok(Response::new(
            messages.map_ok(Outgoing::into_flight_data).boxed(),
        ))
    }

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
        self.authorize(&request).map_err(|e| self.fail(e))?;
        Ok(Response::new(
            stream::iter(action_types().into_iter().map(Ok)).boxed(),
        ))
    }
}

/// DoGet, DoPut and DoExchange as [`super::fastpath::FlightRoutes`] calls
/// them: requests as streams decoded by [`stoker_wire::inbound`], answers as
/// [`Outgoing`] messages written without copying (the trait methods above
/// adapt tonic's types to these).
impl Handler {
    /// DoAction: its results as buffers sent back to back.
    pub(super) async fn act(
        &self,
        request: Request<Action>,
    ) -> Result<Stream<ActionResult>, Status> {
        self.authorize(&request).map_err(|e| self.fail(e))?;
        let a = request.into_inner();
        let results = self
            .0
            .clone()
            .action(a.r#type, a.body)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(stream::iter(results.into_iter().map(Ok)).boxed())
    }

    pub(super) async fn get(&self, request: Request<Ticket>) -> Result<Stream<Outgoing>, Status> {
        self.authorize(&request).map_err(|e| self.fail(e))?;
        let ticket = request.into_inner().ticket;
        let max_bytes = stoker_core::protocol::data_message_bytes(self.max_message_bytes);
        let me = self.0.clone();
        if ticket.starts_with(super::transport::ZEROS.as_bytes()) {
            let text = String::from_utf8_lossy(&ticket).into_owned();
            let batches = super::transport::zeros(&text).map_err(|e| self.fail(e))?;
            return Ok(
                encode_batches(stream::iter(batches.into_iter().map(Ok)), max_bytes)
                    .map_err(move |e| me.fail(flight_error(e)))
                    .boxed(),
            );
        }
        let state = blocking(move || me.ticket_state(&ticket))
            .await
            .map_err(|e| self.fail(e))?;
        // A state travels as one Arrow batch with one binary cell, so any
        // Flight client can download it with a plain DoGet.
        let array = arrow::array::BinaryArray::from_vec(vec![state.as_slice()]);
        let batch =
            RecordBatch::try_from_iter(vec![("state", Arc::new(array) as arrow::array::ArrayRef)])
                .map_err(|e| self.fail(Error::from(e)))?;
        let me = self.0.clone();
        Ok(encode_batches(stream::iter([Ok(batch)]), max_bytes)
            .map_err(move |e| me.fail(flight_error(e)))
            .boxed())
    }

    pub(super) async fn put(
        &self,
        request: Request<Stream<FlightData>>,
    ) -> Result<PutResult, Status> {
        self.authorize(&request).map_err(|e| self.fail(e))?;
        self.0
            .clone()
            .put(request.into_inner())
            .await
            .map_err(|e| self.fail(e))
    }

    pub(super) async fn exchange(
        &self,
        request: Request<Stream<FlightData>>,
    ) -> Result<Stream<Outgoing>, Status> {
        self.authorize(&request).map_err(|e| self.fail(e))?;
        let keep = keep_columns(request.metadata());
        self.0
            .clone()
            .exchange(request.into_inner(), keep)
            .await
            .map_err(|e| self.fail(e))
    }
}

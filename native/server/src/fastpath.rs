//! DoGet, DoPut, DoExchange and DoAction's answers served without tonic's
//! codec.
//!
//! tonic gathers every request message into one growing buffer and encodes
//! every response message into another: a copy of every Arrow body each way.
//! [`FlightRoutes`] sits where tonic's generated `FlightServiceServer` would:
//! it takes the four data-carrying methods itself, reads their requests
//! with [`stoker_wire::inbound`] (Arrow bodies land aligned, copied once) or, for
//! DoAction's one message, tonic's decoder (which reads a message into a
//! buffer of its exact size), runs the same [`Handler`] code, and writes
//! answers as [`stoker_wire::outgoing`] chunks with gRPC's trailers: a trained state
//! leaves as the tensors the engine exported. Every other method goes to the
//! generated server.

use std::convert::Infallible;
use std::task::{Context, Poll};

use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::{Action, Ticket};
use futures::stream::{self, StreamExt};
use prost::Message;
use stoker_wire::body::{Ending, GrpcBody, GrpcMessage, Prost};
use stoker_wire::http2::{DO_ACTION, DO_EXCHANGE, DO_GET, DO_PUT};
use stoker_wire::inbound::{self, Side};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstDecoder;

use super::handler::Handler;
use super::handler::Stream;

/// The Flight service as the router sees it.
#[derive(Clone)]
pub struct FlightRoutes {
    generated: FlightServiceServer<Handler>,
    handler: Handler,
    max_message_bytes: usize,
}

impl FlightRoutes {
    pub fn new(handler: Handler, max_message_bytes: usize) -> Self {
        let generated = FlightServiceServer::new(handler.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        FlightRoutes {
            generated,
            handler,
            max_message_bytes,
        }
    }
}

impl NamedService for FlightRoutes {
    const NAME: &'static str = <FlightServiceServer<Handler> as NamedService>::NAME;
}

impl Service<http::Request<tonic::body::Body>> for FlightRoutes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let handler = self.handler.clone();
        let max = self.max_message_bytes;
        match req.uri().path() {
            DO_GET => Box::pin(async move {
                let answer = async {
                    let ticket = single::<Ticket>(req, max, "DoGet without a ticket").await?;
                    handler.get(ticket).await
                };
                Ok(respond(answer.await))
            }),
            DO_ACTION => Box::pin(async move {
                let answer = async {
                    let action = single::<Action>(req, max, "DoAction without an action").await?;
                    handler.act(action).await
                };
                Ok(respond(answer.await))
            }),
            DO_PUT => Box::pin(async move {
                let answer = handler
                    .put(with_body(req, |body| {
                        inbound::flight_data(body, max, Side::Server)
                    }))
                    .await;
                Ok(respond(
                    answer.map(|result| stream::iter([Ok(Prost(result))]).boxed()),
                ))
            }),
            DO_EXCHANGE => Box::pin(async move {
                let answer = handler
                    .exchange(with_body(req, |body| {
                        inbound::flight_data(body, max, Side::Server)
                    }))
                    .await;
                Ok(respond(answer))
            }),
            _ => self.generated.call(req),
        }
    }
}

/// The request as the handler takes it: its metadata and extensions, and
/// what `read` makes of its body (DoPut and DoExchange: [`inbound`]'s
/// aligned FlightData; DoGet: tonic's decoder, for one small ticket).
fn with_body<T>(
    req: http::Request<tonic::body::Body>,
    read: impl FnOnce(tonic::body::Body) -> T,
) -> Request<T> {
    let (parts, body) = req.into_parts();
    Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        read(body),
    )
}

/// A call's one request message (DoGet's ticket, DoAction's action), read
/// with tonic's decoder.
async fn single<T: Message + Default + Send + 'static>(
    req: http::Request<tonic::body::Body>,
    max: usize,
    missing: &'static str,
) -> Result<Request<T>, Status> {
    let request = with_body(req, |body| {
        Streaming::new_request(ProstDecoder::<T>::default(), body, None, Some(max))
    });
    let (metadata, extensions, mut messages) = request.into_parts();
    let message = messages
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument(missing))?;
    Ok(Request::from_parts(metadata, extensions, message))
}

/// A gRPC response: the messages as body chunks, then the status as
/// trailers. A call that fails before its first message is answered with the
/// status alone, as tonic does.
fn respond<T: GrpcMessage>(answer: Result<Stream<T>, Status>) -> http::Response<tonic::body::Body> {
    match answer {
        Ok(messages) => {
            let mut response = http::Response::new(tonic::body::Body::new(GrpcBody::new(
                messages,
                Ending::Trailers,
            )));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

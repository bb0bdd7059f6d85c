//! gRPC calls made without tonic's codec, for the methods that carry data.
//!
//! tonic's client encodes every request message into its own send buffer: a
//! copy of each partition, state and feature batch, into fresh memory,
//! before the kernel copies it again. [`Calls`] sends the messages'
//! buffers as HTTP/2 body chunks instead ([`stoker_wire::outgoing`], the same writer
//! the server answers with) over the same tonic `Channel`, and hands the
//! response's body to a reader that suits it: tonic's decoder for small
//! answers and action results, [`stoker_wire::inbound`] for Arrow data.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};

use futures::stream::{BoxStream, StreamExt};
use stoker_core::{Error, Result};
use tonic::codegen::{http, Service};
use tonic::transport::Channel;
use tonic::Status;

use crate::connect::{explain_plain_text, Target};
use stoker_wire::body::{Ending, GrpcBody, GrpcMessage};
use stoker_wire::inbound::Side;
use stoker_wire::status::from_status;

/// The connection, where it goes, and the headers every call carries (the
/// token).
#[derive(Clone)]
pub struct Calls {
    channel: Channel,
    target: Arc<Target>,
    headers: http::HeaderMap,
}

/// A call's answer: its body, and whether the server answered with
/// trailers only (an `OK` with no messages).
pub struct Answer {
    pub body: tonic::body::Body,
    pub status_code: http::StatusCode,
    pub trailers_only: bool,
    /// Where an error of the request's own messages is kept: the request
    /// is aborted (h2 resets the stream), and the caller should see the
    /// error that caused it rather than the reset.
    pub input_error: InputError,
}

/// The first error of a request's message stream, if any.
#[derive(Clone, Default)]
pub struct InputError(Arc<Mutex<Option<Error>>>);

impl InputError {
    fn set(&self, e: Error) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    }

    fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The request's own error if it had one, else `status` as an error.
    pub fn or_status(&self, status: &Status) -> Error {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.take().unwrap_or_else(|| from_status(status))
    }
}

impl Calls {
    pub fn new(channel: Channel, target: Target) -> Self {
        Calls {
            channel,
            target: Arc::new(target),
            headers: http::HeaderMap::new(),
        }
    }

    /// Adds a header to every call (the bearer token).
    pub fn add_header(&mut self, name: &'static str, value: &str) -> Result<()> {
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| Error::invalid(format!("the value of '{name}' cannot be a header")))?;
        self.headers.insert(name, value);
        Ok(())
    }

    /// Sends `messages` to `path`, with `extra` headers; returns the
    /// answer once its headers have arrived. A call refused outright (its
    /// status in the headers) is an error here.
    pub async fn call<T: GrpcMessage>(
        &mut self,
        path: &'static str,
        messages: BoxStream<'static, Result<T>>,
        extra: &[(&'static str, http::HeaderValue)],
    ) -> Result<Answer> {
        let input_error = InputError::default();
        let slot = input_error.clone();
        let messages = messages
            .map(move |m| {
                m.map_err(|e| {
                    let status = Status::cancelled(format!("the request failed: {e}"));
                    slot.set(e);
                    status
                })
            })
            .boxed();
        let mut request = http::Request::new(tonic::body::Body::new(GrpcBody::new(
            messages,
            Ending::Abort,
        )));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static(path);
        *request.version_mut() = http::Version::HTTP_2;
        let headers = request.headers_mut();
        headers.extend(self.headers.clone());
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        for (name, value) in extra {
            headers.insert(*name, value.clone());
        }
        let ready = poll_fn(|cx| self.channel.poll_ready(cx)).await;
        let response = match ready {
            Ok(()) => self.channel.call(request).await,
            Err(e) => Err(e),
        };
        let response = match response {
            Ok(r) => r,
            // The connection failed before any answer: a plain-text client
            // of a TLS server fails this way, which the error should say.
            Err(e) => {
                let own = input_error.is_set();
                let error = input_error.or_status(&Status::from_error(e.into()));
                if !own {
                    if let Some(e) = explain_plain_text(&self.target).await {
                        return Err(e);
                    }
                }
                return Err(error);
            }
        };
        let status_code = response.status();
        let (parts, body) = response.into_parts();
        let trailers_only = match Status::from_header_map(&parts.headers) {
            Some(status) if status.code() != tonic::Code::Ok => {
                return Err(input_error.or_status(&status))
            }
            Some(_) => true,
            None => false,
        };
        if !status_code.is_success() {
            return Err(input_error.or_status(&Status::unknown(format!(
                "the server answered HTTP {status_code} without a gRPC status"
            ))));
        }
        Ok(Answer {
            body,
            status_code,
            trailers_only,
            input_error,
        })
    }
}

impl Answer {
    /// The answer's messages, decoded by tonic (small messages, and action
    /// results, which it reads into one buffer of their exact size).
    pub fn messages<M>(self, max_message_bytes: usize) -> BoxStream<'static, Result<M>>
    where
        M: prost::Message + Default + Send + 'static,
    {
        let decoder = tonic_prost::ProstDecoder::<M>::default();
        let streaming = if self.trailers_only {
            tonic::Streaming::new_empty(decoder, self.body)
        } else {
            tonic::Streaming::new_response(
                decoder,
                self.body,
                self.status_code,
                None,
                Some(max_message_bytes),
            )
        };
        let input_error = self.input_error;
        streaming
            .map(move |m| m.map_err(|status| input_error.or_status(&status)))
            .boxed()
    }

    /// The answer's FlightData, each body read once into aligned memory.
    pub fn flight_data(
        self,
        max_message_bytes: usize,
    ) -> BoxStream<'static, Result<arrow_flight::FlightData>> {
        let input_error = self.input_error;
        stoker_wire::inbound::flight_data(self.body, max_message_bytes, Side::Client)
            .map(move |m| m.map_err(|status| input_error.or_status(&status)))
            .boxed()
    }
}

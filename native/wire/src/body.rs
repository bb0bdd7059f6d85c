//! A stream of gRPC messages as an HTTP/2 body whose chunks are the
//! messages' own buffers ([`crate::outgoing`]): the server's answers and the
//! client's requests, without tonic's codec copying them into one buffer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use http_body::Frame;
use prost::Message;
use tonic::codegen::http;
use tonic::Status;

use crate::outgoing::{put_grpc_prefix, ActionRequest, ActionResult, Outgoing};

/// A message that can write itself as gRPC body chunks.
pub trait GrpcMessage: Send + 'static {
    fn write_grpc(self, out: &mut VecDeque<Bytes>);
}

impl GrpcMessage for Outgoing {
    fn write_grpc(self, out: &mut VecDeque<Bytes>) {
        Outgoing::write_grpc(self, out)
    }
}

impl GrpcMessage for ActionResult {
    fn write_grpc(self, out: &mut VecDeque<Bytes>) {
        ActionResult::write_grpc(self, out)
    }
}

impl GrpcMessage for ActionRequest {
    fn write_grpc(self, out: &mut VecDeque<Bytes>) {
        ActionRequest::write_grpc(self, out)
    }
}

/// A small message (DoPut's answer, DoGet's ticket) in plain prost
/// encoding: one chunk.
pub struct Prost<M>(pub M);

impl<M: Message + Send + 'static> GrpcMessage for Prost<M> {
    fn write_grpc(self, out: &mut VecDeque<Bytes>) {
        let len = self.0.encoded_len();
        let mut framed = BytesMut::with_capacity(5 + len);
        put_grpc_prefix(&mut framed, len);
        // Encoding into a buffer reserved for it cannot run out of space.
        let _ = self.0.encode(&mut framed);
        out.push_back(framed.freeze());
    }
}

/// How a body ends, which is where the two sides of gRPC differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A response: the call's status goes in trailers, `OK` after the last
    /// message or the error that ended the stream.
    Trailers,
    /// A request: it just ends; an error in its messages breaks the body
    /// (h2 resets the stream), so the server never takes a request cut
    /// short for a complete one.
    Abort,
}

pub struct GrpcBody<T> {
    messages: BoxStream<'static, Result<T, Status>>,
    chunks: VecDeque<Bytes>,
    ending: Ending,
    finished: bool,
}

impl<T: GrpcMessage> GrpcBody<T> {
    pub fn new(messages: BoxStream<'static, Result<T, Status>>, ending: Ending) -> Self {
        GrpcBody {
            messages,
            chunks: VecDeque::new(),
            ending,
            finished: false,
        }
    }
}

impl<T: GrpcMessage> http_body::Body for GrpcBody<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(chunk) = self.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            let status = match std::task::ready!(self.messages.poll_next_unpin(cx)) {
                Some(Ok(message)) => {
                    message.write_grpc(&mut self.chunks);
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            self.finished = true;
            return Poll::Ready(match (self.ending, status.code()) {
                (Ending::Trailers, _) => Some(Ok(Frame::trailers(trailers(&status)))),
                (Ending::Abort, tonic::Code::Ok) => None,
                (Ending::Abort, _) => Some(Err(status)),
            });
        }
    }
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        // Only a message that cannot be a header value fails; keep the code.
        headers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    headers
}

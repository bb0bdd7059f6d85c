//! Flight data read off the wire into aligned memory.
//!
//! tonic's decoder gathers each gRPC message into one growing buffer (a copy,
//! plus reallocation copies as it grows), and the Arrow body then sits at
//! whatever offset the protobuf prefix left it. arrow-flight's decoder copies
//! any body that is not 64-byte aligned into a fresh buffer before it can be
//! read, so every byte a client sends was copied twice or more. Here each
//! `FlightData.data_body` is copied once, from the HTTP/2 frames straight
//! into an exactly sized, aligned allocation, and decodes without another copy.
//! The few bytes of the other fields are gathered and decoded with prost.
//! The server reads DoPut and DoExchange requests this way, and stoker's
//! client reads DoExchange answers (predictions) the same way.

use arrow::buffer::{Buffer, MutableBuffer};
use arrow_flight::FlightData;
use bytes::{Buf, Bytes};
use futures::stream::{self, BoxStream, StreamExt};
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;

use crate::outgoing::DATA_BODY_KEY;

/// Which side is reading: it decides the wording of errors, and a
/// response's trailers carry the call's status (a failed call ends the
/// stream with it as its error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The server, reading a request.
    Server,
    /// The client, reading a response.
    Client,
}

/// The body's FlightData messages, decoded as they arrive.
pub fn flight_data<B>(
    body: B,
    max_message_bytes: usize,
    side: Side,
) -> BoxStream<'static, Result<FlightData, Status>>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let state = (
        body,
        Assembler::new(max_message_bytes, side),
        Bytes::new(),
        false,
    );
    stream::unfold(
        state,
        |(mut body, mut assembler, mut pending, mut done)| async move {
            loop {
                if done {
                    return None;
                }
                match assembler.feed(&mut pending) {
                    Err(status) => {
                        done = true;
                        return Some((Err(status), (body, assembler, pending, done)));
                    }
                    Ok(Some(message)) => {
                        return Some((Ok(message), (body, assembler, pending, done)))
                    }
                    Ok(None) => {}
                }
                let what = assembler.side.what();
                match body.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => pending = data,
                        Err(frame) => {
                            let failed = frame
                                .trailers_ref()
                                .and_then(Status::from_header_map)
                                .filter(|s| s.code() != tonic::Code::Ok);
                            if let Some(status) = failed {
                                done = true;
                                return Some((Err(status), (body, assembler, pending, done)));
                            }
                        }
                    },
                    Some(Err(e)) => {
                        done = true;
                        let status = Status::cancelled(format!("the {what} stream broke: {e}"));
                        return Some((Err(status), (body, assembler, pending, done)));
                    }
                    None => {
                        done = true;
                        if !assembler.is_idle() {
                            let status = Status::invalid_argument(format!(
                                "the {what} ended inside a message"
                            ));
                            return Some((Err(status), (body, assembler, pending, done)));
                        }
                    }
                }
            }
        },
    )
    .boxed()
}

/// Flight data decoded into record batches, the one place the server (DoPut,
/// DoExchange) and stoker's client (predictions) turn FlightData into Arrow.
///
/// arrow's IPC decoder (60.1) asserts, instead of returning an error, on
/// some malformed messages: a buffer past the message body, an offsets
/// buffer of the wrong length, a fixed-size list whose size overflows
/// (found by stoker-fuzz, native/fuzz/regressions/README.md). Such a panic
/// ends this stream with an error naming the input as malformed, so it
/// fails the one request, not the connection or the process.
pub fn record_batches(
    data: BoxStream<'static, Result<FlightData, arrow_flight::error::FlightError>>,
) -> BoxStream<'static, Result<arrow::array::RecordBatch, arrow_flight::error::FlightError>> {
    let decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data);
    std::panic::AssertUnwindSafe(decoded)
        .catch_unwind()
        .map(|item| match item {
            Ok(batch) => batch,
            Err(panic) => Err(arrow_flight::error::FlightError::Tonic(Box::new(
                Status::invalid_argument(format!(
                    "malformed Arrow IPC data: the decoder failed on it ({})",
                    panic_text(&panic)
                )),
            ))),
        })
        .boxed()
}

/// The message of a caught panic.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Builds one message at a time from body chunks.
struct Assembler {
    side: Side,
    max_message_bytes: usize,
    /// The 5-byte gRPC prefix: compression flag and big-endian length.
    prefix: Vec<u8>,
    /// Message bytes still to come; `None` while reading the prefix.
    remaining: Option<usize>,
    /// Every field but the body, to decode with prost.
    fields: Vec<u8>,
    /// How far `fields` has been parsed into whole fields.
    parsed: usize,
    /// The body being filled, and how many of its bytes are still to come.
    body: Option<(MutableBuffer, usize)>,
}

impl Assembler {
    fn new(max_message_bytes: usize, side: Side) -> Self {
        Assembler {
            side,
            max_message_bytes,
            prefix: Vec::with_capacity(5),
            remaining: None,
            fields: Vec::new(),
            parsed: 0,
            body: None,
        }
    }

    fn is_idle(&self) -> bool {
        self.remaining.is_none() && self.prefix.is_empty()
    }

    /// Consumes input until a message is complete (returned) or the input
    /// runs out (`None`).
    fn feed(&mut self, input: &mut Bytes) -> Result<Option<FlightData>, Status> {
        loop {
            let Some(remaining) = self.remaining else {
                if input.is_empty() {
                    return Ok(None);
                }
                let n = (5 - self.prefix.len()).min(input.len());
                self.prefix.extend_from_slice(&input[..n]);
                input.advance(n);
                if self.prefix.len() == 5 {
                    self.start_message()?;
                }
                continue;
            };
            if remaining == 0 {
                return self.finish_message().map(Some);
            }
            if input.is_empty() {
                return Ok(None);
            }
            let n = remaining.min(input.len());
            match &mut self.body {
                Some((body, left)) if *left > 0 => {
                    let n = n.min(*left);
                    body.extend_from_slice(&input[..n]);
                    *left -= n;
                    input.advance(n);
                    self.remaining = Some(remaining - n);
                }
                _ => {
                    self.fields.extend_from_slice(&input[..n]);
                    input.advance(n);
                    self.remaining = Some(remaining - n);
                    self.find_body()?;
                }
            }
        }
    }

    fn start_message(&mut self) -> Result<(), Status> {
        if self.prefix[0] != 0 {
            return Err(Status::invalid_argument(
                "compressed gRPC messages are not accepted (no grpc-encoding was agreed)",
            ));
        }
        let len = u32::from_be_bytes([
            self.prefix[1],
            self.prefix[2],
            self.prefix[3],
            self.prefix[4],
        ]) as usize;
        if len > self.max_message_bytes {
            let (whose, setting) = match self.side {
                Side::Server => ("the server's", "--max-message-mb"),
                Side::Client => ("the client's", "max_message_bytes"),
            };
            return Err(Status::resource_exhausted(format!(
                "a message of {len} bytes is over {whose} limit of {} bytes ({setting})",
                self.max_message_bytes
            )));
        }
        self.remaining = Some(len);
        Ok(())
    }

    /// Parses whole fields past `parsed`; on reaching `data_body`, moves
    /// what has arrived of it into an aligned buffer of its full length.
    fn find_body(&mut self) -> Result<(), Status> {
        let to_come = self.remaining.unwrap_or(0);
        while let Some((key, value_at, value_len)) = field_at(&self.fields, self.parsed)? {
            // A field's length is the sender's word: it must fit in what is
            // left of the message before it sizes a buffer (a few bytes
            // claiming a body of 2^40 were allocated for) or moves `parsed`
            // (a length near 2^64 wrapped it back to the same field, forever).
            let left = self.fields.len() - value_at + to_come;
            if value_len > left {
                return Err(Status::invalid_argument(format!(
                    "not a FlightData message: a field of {value_len} bytes at byte {} with {left} bytes left in the message",
                    self.parsed
                )));
            }
            if key == DATA_BODY_KEY {
                let mut body = MutableBuffer::new(value_len);
                let arrived = (self.fields.len() - value_at).min(value_len);
                body.extend_from_slice(&self.fields[value_at..value_at + arrived]);
                // Keep any bytes of later fields that came in the same chunk.
                let after: Vec<u8> = self.fields[value_at + arrived..].to_vec();
                self.fields.truncate(self.parsed);
                self.fields.extend_from_slice(&after);
                self.body = Some((body, value_len - arrived));
                continue;
            }
            let end = value_at + value_len;
            if end > self.fields.len() {
                return Ok(()); // the rest of this field is still to come
            }
            self.parsed = end;
        }
        Ok(())
    }

    fn finish_message(&mut self) -> Result<FlightData, Status> {
        let mut message = FlightData::decode(self.fields.as_slice())
            .map_err(|e| Status::invalid_argument(format!("not a FlightData message: {e}")))?;
        if let Some((body, left)) = self.body.take() {
            if left > 0 {
                return Err(Status::invalid_argument(
                    "a FlightData body is longer than its message",
                ));
            }
            message.data_body = Bytes::from_owner(Buffer::from(body));
        }
        self.prefix.clear();
        self.remaining = None;
        self.fields.clear();
        self.parsed = 0;
        Ok(message)
    }
}

impl Side {
    fn what(self) -> &'static str {
        match self {
            Side::Server => "request",
            Side::Client => "response",
        }
    }
}

/// The field starting at `at`: its key, where its value starts and how long
/// the value is (for a length-delimited field), or `None` while its key and
/// length have not all arrived. Only the framing is read here.
fn field_at(bytes: &[u8], at: usize) -> Result<Option<(u64, usize, usize)>, Status> {
    let Some((key, after_key)) = varint(bytes, at)? else {
        return Ok(None);
    };
    let (value_at, len) = match key & 7 {
        0 => match varint(bytes, after_key)? {
            Some((_, end)) => (after_key, end - after_key),
            None => return Ok(None),
        },
        1 => (after_key, 8),
        5 => (after_key, 4),
        2 => match varint(bytes, after_key)? {
            Some((len, value_at)) => (value_at, len as usize),
            None => return Ok(None),
        },
        wire => {
            return Err(Status::invalid_argument(format!(
                "not a FlightData message: wire type {wire} at byte {at}"
            )))
        }
    };
    Ok(Some((key, value_at, len)))
}

/// A protobuf varint at `at`, and the offset after it; `None` if it has not
/// all arrived.
fn varint(bytes: &[u8], at: usize) -> Result<Option<(u64, usize)>, Status> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&b) = bytes.get(at + i) else {
            return Ok(None);
        };
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, at + i + 1)));
        }
    }
    Err(Status::invalid_argument(format!(
        "not a FlightData message: a varint longer than 10 bytes at byte {at}"
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use arrow_flight::FlightDescriptor;
    use futures::TryStreamExt;
    use http_body_util::StreamBody;

    use super::*;

    fn message(n: usize) -> FlightData {
        FlightData {
            flight_descriptor: Some(FlightDescriptor::new_path(vec!["p".into(), n.to_string()])),
            data_header: Bytes::from(vec![n as u8; 40 + n]),
            app_metadata: Bytes::from(vec![7; n % 3]),
            data_body: Bytes::from((0..n * 101).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
        }
    }

    fn framed(messages: &[FlightData]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
            m.encode(&mut out).unwrap();
        }
        out
    }

    async fn decode(bytes: Vec<u8>, chunk: usize, max: usize) -> Result<Vec<FlightData>, Status> {
        let chunks: VecDeque<Result<http_body::Frame<Bytes>, Infallible>> = bytes
            .chunks(chunk)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        flight_data(StreamBody::new(stream::iter(chunks)), max, Side::Server)
            .try_collect()
            .await
    }

    #[tokio::test]
    async fn messages_decode_the_same_at_any_chunking_and_bodies_are_aligned() {
        let want: Vec<FlightData> = (0..12)
            .map(message)
            .chain([FlightData::default()])
            .collect();
        let bytes = framed(&want);
        for chunk in [1, 2, 3, 5, 7, 64, 1000, bytes.len()] {
            let got = decode(bytes.clone(), chunk, 1 << 20).await.unwrap();
            assert_eq!(got, want, "chunks of {chunk}");
            for m in got.iter().filter(|m| !m.data_body.is_empty()) {
                assert_eq!(m.data_body.as_ptr() as usize % 64, 0, "chunks of {chunk}");
            }
        }
    }

    #[tokio::test]
    async fn fields_after_the_body_are_kept() {
        // Protobuf allows any field order; put the body first.
        let m = message(5);
        let mut bytes = Vec::new();
        prost::encoding::bytes::encode(1000, &m.data_body, &mut bytes);
        prost::encoding::bytes::encode(2, &m.data_header, &mut bytes);
        prost::encoding::message::encode(1, m.flight_descriptor.as_ref().unwrap(), &mut bytes);
        prost::encoding::bytes::encode(3, &m.app_metadata, &mut bytes);
        let mut framed = vec![0];
        framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        framed.extend_from_slice(&bytes);
        for chunk in [1, 3, 100, framed.len()] {
            assert_eq!(
                decode(framed.clone(), chunk, 1 << 20).await.unwrap(),
                vec![m.clone()]
            );
        }
    }

    #[tokio::test]
    async fn oversized_compressed_truncated_and_garbage_input_fail_clearly() {
        let big = framed(&[message(50)]);
        let e = decode(big.clone(), 16, 100).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("over the server's limit of 100 bytes"),
            "{e}"
        );

        let mut compressed = big.clone();
        compressed[0] = 1;
        let e = decode(compressed, 16, 1 << 20).await.unwrap_err();
        assert!(e.message().contains("compressed"), "{e}");

        let e = decode(big[..big.len() - 3].to_vec(), 16, 1 << 20)
            .await
            .unwrap_err();
        assert!(e.message().contains("ended inside a message"), "{e}");

        let garbage = vec![0, 0, 0, 0, 4, 0x0f, 1, 2, 3];
        let e = decode(garbage, 2, 1 << 20).await.unwrap_err();
        assert!(e.message().contains("not a FlightData message"), "{e}");
    }

    /// A message of a few bytes whose field `key` claims `len` bytes.
    fn claiming(key: u64, len: u64) -> Vec<u8> {
        let mut fields = Vec::new();
        prost::encoding::encode_varint(key, &mut fields);
        prost::encoding::encode_varint(len, &mut fields);
        fields.extend_from_slice(&[1, 2, 3]);
        let mut framed = vec![0];
        framed.extend_from_slice(&(fields.len() as u32).to_be_bytes());
        framed.extend_from_slice(&fields);
        framed
    }

    #[tokio::test]
    async fn field_lengths_past_the_message_are_refused_before_anything_is_sized() {
        // Found by stoker-fuzz (flight_data): a body length of 2^40 was
        // allocated before any of it arrived (6 GB from a 523-byte request;
        // larger failed the allocation), and a header length of 2^64 - 11
        // wrapped the parser back to the same field (it never returned).
        for (key, len) in [
            (DATA_BODY_KEY, 1u64 << 40),
            (DATA_BODY_KEY, 4),
            ((2 << 3) | 2, u64::MAX - 10),
            ((2 << 3) | 2, 1 << 33),
        ] {
            for chunk in [1, 4, 64] {
                let e = decode(claiming(key, len), chunk, 1 << 30)
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), tonic::Code::InvalidArgument, "{key} {len}: {e}");
                assert!(e.message().contains("bytes left in the message"), "{e}");
            }
        }
        // A field that fits is still read.
        let fits = claiming(DATA_BODY_KEY, 3);
        let got = decode(fits, 2, 1 << 20).await.unwrap();
        assert_eq!(got[0].data_body.as_ref(), &[1, 2, 3]);
    }
}

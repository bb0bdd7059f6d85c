//! Flight data as it goes on the wire, without copying Arrow buffers.
//!
//! arrow-flight's encoder copies every batch's buffers into one IPC body, and
//! tonic's prost codec then copies that body again into its send buffer: two
//! copies of every byte the server sends, into freshly allocated memory (page
//! faults), before the kernel's own copy. Arrow C++ hands its buffers to gRPC
//! as slices instead. This module does the same: a batch is encoded with
//! arrow-ipc's [`StreamEncoder`], which keeps each column buffer as it is, and
//! each Flight message becomes a short protobuf prefix followed by those
//! buffers as separate chunks of the HTTP/2 body (h2 writes them with
//! `writev`). The server answers DoGet, DoExchange and DoAction with it, and
//! stoker's own client sends DoPut, DoExchange and DoAction requests with it
//! (native/client's `call` module).

use std::collections::VecDeque;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::ipc::writer::StreamEncoder;
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightData, FlightDescriptor};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use prost::Message;

/// One Flight message ready to send: `FlightData` with its body as a list
/// of chunks that are concatenated only by the receiver.
#[derive(Debug, Default, Clone)]
pub struct Outgoing {
    /// Set on the first message of a DoPut or DoExchange request.
    pub descriptor: Option<FlightDescriptor>,
    pub header: Bytes,
    pub app_metadata: Bytes,
    pub body: Vec<Bytes>,
}

/// Protobuf key of `FlightData.data_body` (field 1000, length-delimited).
pub(crate) const DATA_BODY_KEY: u64 = (1000 << 3) | 2;

/// Starts a gRPC message of `len` bytes in `out`: the uncompressed flag and
/// the big-endian length.
pub fn put_grpc_prefix(out: &mut BytesMut, len: usize) {
    out.put_u8(0);
    out.put_u32(len as u32);
}

impl Outgoing {
    pub fn body_len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }

    /// The message as one `FlightData` (copies a body of several chunks):
    /// for callers that need the prost type rather than the wire.
    pub fn into_flight_data(self) -> FlightData {
        FlightData {
            flight_descriptor: self.descriptor,
            data_header: self.header,
            app_metadata: self.app_metadata,
            data_body: concat(self.body),
        }
    }

    /// Appends the gRPC message (5-byte length prefix, then the protobuf
    /// encoding of `FlightData`) to `out` as chunks: one small chunk of
    /// framing and fields, then the body's chunks untouched.
    pub fn write_grpc(self, out: &mut VecDeque<Bytes>) {
        let fields = FlightData {
            flight_descriptor: self.descriptor,
            data_header: self.header,
            app_metadata: self.app_metadata,
            data_body: Bytes::new(),
        };
        write_message(&fields, DATA_BODY_KEY, self.body, out);
    }
}

/// Appends one gRPC message to `out`: `fields` (a message whose last field
/// is left empty) followed by that last field, of key `tail_key`, given as
/// chunks. The framing and small fields go in one chunk; the tail's chunks
/// are passed on untouched. Fields come out in field-number order, as prost
/// writes them, so the bytes equal prost's encoding of the whole message.
fn write_message(
    fields: &impl Message,
    tail_key: u64,
    tail: Vec<Bytes>,
    out: &mut VecDeque<Bytes>,
) {
    let tail_len: usize = tail.iter().map(Bytes::len).sum();
    let key = field_key(tail_key, tail_len);
    let head_len = fields.encoded_len() + key.len();
    let mut prefix = BytesMut::with_capacity(5 + head_len);
    put_grpc_prefix(&mut prefix, head_len + tail_len);
    // Encoding into a buffer reserved for it cannot run out of space.
    let _ = fields.encode(&mut prefix);
    prefix.put_slice(&key);
    out.push_back(prefix.freeze());
    out.extend(tail.into_iter().filter(|c| !c.is_empty()));
}

/// The key and length of a length-delimited protobuf field of `len` bytes;
/// nothing for an empty one (proto3 leaves empty fields out).
fn field_key(key: u64, len: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(16);
    if len > 0 {
        prost::encoding::encode_varint(key, &mut out);
        prost::encoding::encode_varint(len as u64, &mut out);
    }
    out
}

/// Chunks joined into one buffer; a single chunk is passed on as it is.
fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in &chunks {
                all.put_slice(chunk);
            }
            all.freeze()
        }
    }
}

/// One DoAction result (`arrow.flight.protocol.Result`, whose one field is
/// `body`) as buffers sent back to back: a trained state's tensors go to the
/// wire as the engine exported them, not copied into one message first.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ActionResult(pub Vec<Bytes>);

/// Protobuf key of `Result.body` (field 1, length-delimited).
const RESULT_BODY_KEY: u64 = (1 << 3) | 2;

impl ActionResult {
    pub fn one(body: impl Into<Bytes>) -> Self {
        ActionResult(vec![body.into()])
    }

    /// The body in one buffer (a copy when there are several chunks): for
    /// tonic's generated service.
    pub fn into_bytes(self) -> Bytes {
        concat(self.0)
    }

    /// Appends the gRPC message to `out`: framing and key in one small
    /// chunk, then the body's chunks untouched.
    pub fn write_grpc(self, out: &mut VecDeque<Bytes>) {
        write_message(
            &arrow_flight::Result::default(),
            RESULT_BODY_KEY,
            self.0,
            out,
        );
    }
}

/// A DoAction request (`arrow.flight.protocol.Action`: `type`, then `body`)
/// whose body is sent as chunks: a state goes out as the caller holds it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ActionRequest {
    pub kind: String,
    pub body: Vec<Bytes>,
}

/// Protobuf key of `Action.body` (field 2, length-delimited).
const ACTION_BODY_KEY: u64 = (2 << 3) | 2;

impl ActionRequest {
    pub fn write_grpc(self, out: &mut VecDeque<Bytes>) {
        let fields = Action {
            r#type: self.kind,
            body: Bytes::new(),
        };
        write_message(&fields, ACTION_BODY_KEY, self.body, out);
    }
}

impl From<FlightData> for Outgoing {
    fn from(d: FlightData) -> Self {
        Outgoing {
            descriptor: d.flight_descriptor,
            header: d.data_header,
            app_metadata: d.app_metadata,
            body: vec![d.data_body],
        }
    }
}

/// Encodes a stream of batches as Flight messages: the schema first, then
/// any dictionaries and each batch, split by rows so that no message is
/// much larger than `max_bytes`.
pub fn encode_batches<S>(
    batches: S,
    max_bytes: usize,
) -> BoxStream<'static, Result<Outgoing, FlightError>>
where
    S: Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
{
    let mut encoder: Option<StreamEncoder> = None;
    batches
        .map(move |batch| -> Result<Vec<Outgoing>, FlightError> {
            let batch = batch?;
            let encoder = match &mut encoder {
                Some(e) => e,
                None => encoder.insert(StreamEncoder::try_new(&batch.schema())?),
            };
            let mut out = Vec::new();
            for piece in split_rows(&batch, max_bytes) {
                out.extend(split_messages(encoder.encode(&piece)?)?);
            }
            Ok(out)
        })
        .map_ok(|messages| stream::iter(messages.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

/// Row slices of `batch` of at most about `max_bytes` each (a single row is
/// never split). Slicing shares the buffers.
fn split_rows(batch: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let bytes: usize = batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_buffer_memory_size())
        })
        .sum();
    let rows = batch.num_rows();
    let pieces = bytes.div_ceil(max_bytes.max(1)).max(1);
    if pieces == 1 || rows <= 1 {
        return vec![batch.clone()];
    }
    let per_piece = rows.div_ceil(pieces);
    (0..rows)
        .step_by(per_piece)
        .map(|start| batch.slice(start, per_piece.min(rows - start)))
        .collect()
}

/// Splits the output of [`StreamEncoder::encode`] (framed IPC messages:
/// continuation marker and metadata length, metadata, body) into Flight
/// messages. Only the small framing and metadata are copied; body buffers
/// are shared.
fn split_messages(buffers: Vec<Buffer>) -> Result<Vec<Outgoing>, FlightError> {
    let mut reader = Chunks {
        buffers: buffers.into(),
    };
    let mut out = Vec::new();
    while !reader.is_empty() {
        let prefix = reader.take_copied(8)?;
        let word =
            |i: usize| u32::from_le_bytes([prefix[i], prefix[i + 1], prefix[i + 2], prefix[i + 3]]);
        if word(0) != 0xFFFF_FFFF {
            return Err(FlightError::ProtocolError(
                "the IPC encoder wrote a message without a continuation marker".into(),
            ));
        }
        let header = Bytes::from(reader.take_copied(word(4) as usize)?);
        let body_len = stoker_core::ipc::body_length(&header).map_err(|why| {
            FlightError::ProtocolError(format!("the IPC encoder wrote bad metadata: {why}"))
        })?;
        let body = reader
            .take(body_len)?
            .into_iter()
            .map(Bytes::from_owner)
            .collect();
        out.push(Outgoing {
            descriptor: None,
            header,
            app_metadata: Bytes::new(),
            body,
        });
    }
    Ok(out)
}

/// A byte sequence held as a queue of Arrow buffers.
struct Chunks {
    buffers: VecDeque<Buffer>,
}

impl Chunks {
    fn is_empty(&self) -> bool {
        self.buffers.iter().all(|b| b.is_empty())
    }

    /// The next `n` bytes as shared slices of the buffers.
    fn take(&mut self, mut n: usize) -> Result<Vec<Buffer>, FlightError> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(front) = self.buffers.pop_front() else {
                return Err(FlightError::ProtocolError(
                    "the IPC encoder wrote a truncated message".into(),
                ));
            };
            if front.len() <= n {
                n -= front.len();
                out.push(front);
            } else {
                out.push(front.slice_with_length(0, n));
                self.buffers.push_front(front.slice(n));
                n = 0;
            }
        }
        Ok(out)
    }

    fn take_copied(&mut self, n: usize) -> Result<Vec<u8>, FlightError> {
        Ok(self
            .take(n)?
            .iter()
            .flat_map(|b| b.as_slice())
            .copied()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, DictionaryArray, Float32Array, Int64Array, StringArray};
    use arrow::datatypes::Int32Type;
    use arrow_flight::decode::FlightRecordBatchStream;

    use super::*;

    fn batch(rows: usize) -> RecordBatch {
        let x: ArrayRef = Arc::new(Float32Array::from_iter((0..rows).map(|i| {
            if i % 7 == 3 {
                None
            } else {
                Some(i as f32)
            }
        })));
        let y: ArrayRef = Arc::new(Int64Array::from_iter_values(
            (0..rows).map(|i| i as i64 * 3),
        ));
        let s: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("r{i}")),
        ));
        let d: ArrayRef = Arc::new(
            (0..rows)
                .map(|i| ["a", "b", "c"][i % 3])
                .collect::<DictionaryArray<Int32Type>>(),
        );
        RecordBatch::try_from_iter([("x", x), ("y", y), ("s", s), ("d", d)]).unwrap()
    }

    /// What a receiver sees: the wire bytes parsed back as prost messages
    /// and decoded with arrow-flight's own decoder.
    async fn round_trip(messages: Vec<Outgoing>) -> Vec<RecordBatch> {
        let mut wire = VecDeque::new();
        for m in messages {
            m.write_grpc(&mut wire);
        }
        let bytes: Vec<u8> = wire.iter().flat_map(|c| c.iter()).copied().collect();
        let mut at = 0;
        let mut data = Vec::new();
        while at < bytes.len() {
            assert_eq!(bytes[at], 0);
            let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            data.push(Ok(FlightData::decode(&bytes[at + 5..at + 5 + len]).unwrap()));
            at += 5 + len;
        }
        FlightRecordBatchStream::new_from_flight_data(stream::iter(data))
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn batches_survive_the_wire_with_nulls_strings_and_dictionaries() {
        let input = vec![batch(1000), batch(1).slice(0, 1), batch(300).slice(17, 200)];
        let messages: Vec<Outgoing> =
            encode_batches(stream::iter(input.clone().into_iter().map(Ok)), 1 << 20)
                .try_collect()
                .await
                .unwrap();
        let got = round_trip(messages).await;
        let want = arrow::compute::concat_batches(&input[0].schema(), &input).unwrap();
        let got = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn large_batches_are_split_by_rows_and_buffers_are_shared() {
        let x = Float32Array::from_iter_values((0..100_000).map(|i| i as f32));
        let address = x.values().inner().as_ptr() as usize;
        let input = RecordBatch::try_from_iter([("x", Arc::new(x) as ArrayRef)]).unwrap();
        let messages: Vec<Outgoing> = encode_batches(stream::iter([Ok(input.clone())]), 100_000)
            .try_collect()
            .await
            .unwrap();
        // The schema, then 4 pieces of 100 000 bytes (padded to 64).
        assert_eq!(messages.len(), 5);
        assert!(messages[1..].iter().all(|m| m.body_len() <= 100_000 + 63));
        // The first piece's values are the column's own memory.
        assert!(messages[1]
            .body
            .iter()
            .any(|c| c.as_ptr() as usize == address));
        let got = round_trip(messages).await;
        assert_eq!(
            arrow::compute::concat_batches(&input.schema(), &got).unwrap(),
            input
        );
    }

    #[test]
    fn action_results_match_prost_and_share_their_chunks() {
        let big = Bytes::from(vec![7u8; 300]);
        for chunks in [
            vec![],
            vec![Bytes::from_static(b"{}")],
            vec![Bytes::from_static(b"head"), Bytes::new(), big.clone()],
        ] {
            let result = ActionResult(chunks.clone());
            let mut wire = VecDeque::new();
            result.clone().write_grpc(&mut wire);
            let bytes: Vec<u8> = wire.iter().flat_map(|c| c.iter()).copied().collect();
            let expected = arrow_flight::Result {
                body: result.into_bytes(),
            };
            assert_eq!(bytes[0], 0);
            assert_eq!(
                u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
                bytes.len() - 5
            );
            assert_eq!(bytes[5..], expected.encode_to_vec());
            if chunks.len() == 3 {
                // The large chunk went out as it is, not copied.
                assert!(wire.iter().any(|c| c.as_ptr() == big.as_ptr()));
            }
        }
    }

    #[test]
    fn action_requests_match_prost() {
        for body in [
            vec![],
            vec![Bytes::from_static(b"{}"), Bytes::from(vec![3u8; 200])],
        ] {
            let request = ActionRequest {
                kind: "train_round".into(),
                body: body.clone(),
            };
            let mut wire = VecDeque::new();
            request.write_grpc(&mut wire);
            let bytes: Vec<u8> = wire.iter().flat_map(|c| c.iter()).copied().collect();
            let expected = Action::new("train_round", concat(body));
            assert_eq!(bytes[5..], expected.encode_to_vec());
        }
    }

    #[tokio::test]
    async fn into_flight_data_matches_the_wire_encoding() {
        let messages: Vec<Outgoing> = encode_batches(stream::iter([Ok(batch(50))]), 1 << 20)
            .try_collect()
            .await
            .unwrap();
        for m in messages {
            let mut wire = VecDeque::new();
            m.clone().write_grpc(&mut wire);
            let bytes: Vec<u8> = wire.iter().flat_map(|c| c.iter()).copied().collect();
            assert_eq!(bytes[5..], m.into_flight_data().encode_to_vec());
        }
    }

    #[tokio::test]
    async fn an_error_in_the_input_stream_comes_through() {
        let input = stream::iter([Ok(batch(3)), Err(FlightError::ProtocolError("boom".into()))]);
        let got: Vec<_> = encode_batches(input, 1 << 20).collect().await;
        assert!(matches!(got.last(), Some(Err(FlightError::ProtocolError(m))) if m == "boom"));
    }
}

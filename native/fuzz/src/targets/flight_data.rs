//! `flight_data`: the body of a DoPut or DoExchange request as the server
//! reads it: gRPC messages (a 5-byte prefix, then a protobuf `FlightData`)
//! arriving in HTTP/2 chunks of any size, assembled by
//! `stoker_wire::inbound::flight_data` into aligned buffers, the first
//! message's descriptor taken as the handler takes it (its path as a
//! `PartitionKey` and a `ModelKey`), the messages decoded into record
//! batches by `stoker_wire::inbound::record_batches` as the handler's
//! `decode` does, and the batches converted (see `data::convert`).
//!
//! The chunk sizes come from the input's hash, so a replay splits the
//! input exactly as the run that found it did.

use std::convert::Infallible;

use arrow::array::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, FlightDescriptor};
use bytes::{Bytes, BytesMut};
use futures::executor::block_on;
use futures::stream::{self, StreamExt, TryStreamExt};
use http_body::Frame;
use http_body_util::StreamBody;
use prost::Message;
use stoker_core::protocol::{ModelKey, PartitionKey};
use stoker_core::{Error, Result};
use stoker_wire::inbound::{flight_data, Side};
use stoker_wire::outgoing::{encode_batches, put_grpc_prefix, Outgoing};
use stoker_wire::status::{from_flight, from_status};

use super::{byte_mutator, check, data, reached, refused, Target};
use crate::mutate::{mutate_bytes, write_varint, Rng};
use crate::runner::fnv;

pub fn target() -> Target {
    Target {
        name: "flight_data",
        about: "gRPC request body (5-byte prefix + FlightData), random chunks -> inbound::flight_data -> descriptor -> inbound::record_batches -> features, labels",
        seeds,
        run,
        mutate,
    }
}

/// The message limit the server is given here (`--max-message-mb`): a
/// small one, so messages over it are refused and the refusal exercised.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Frames messages as a gRPC body: prefix, protobuf, one after another.
fn frame(messages: &[FlightData]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for m in messages {
        put_grpc_prefix(&mut out, m.encoded_len());
        // Encoding into a growable buffer cannot run out of space.
        let _ = m.encode(&mut out);
    }
    out.to_vec()
}

/// The messages of a well-framed body, or `None`.
fn unframe(mut bytes: &[u8]) -> Option<Vec<FlightData>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
        let message = bytes.get(5..5 + len)?;
        out.push(FlightData::decode(message).ok()?);
        bytes = &bytes[5 + len..];
    }
    Some(out)
}

/// A body of `batches` as stoker's client sends it (`encode_batches`,
/// messages of at most `max_bytes`), the descriptor on the first message
/// or on a message of its own (as pyarrow sends DoExchange).
fn encoded(
    batches: &[RecordBatch],
    path: Vec<String>,
    max_bytes: usize,
    alone: bool,
) -> Option<Vec<u8>> {
    let owned = batches.to_vec();
    let input = stream::iter(owned.into_iter().map(Ok));
    let mut messages: Vec<Outgoing> =
        block_on(encode_batches(input, max_bytes).try_collect()).ok()?;
    let descriptor = FlightDescriptor::new_path(path);
    if alone {
        messages.insert(
            0,
            Outgoing {
                descriptor: Some(descriptor),
                ..Outgoing::default()
            },
        );
    } else {
        messages.first_mut()?.descriptor = Some(descriptor);
    }
    let data: Vec<FlightData> = messages
        .into_iter()
        .map(Outgoing::into_flight_data)
        .collect();
    Some(frame(&data))
}

fn seeds() -> Vec<Vec<u8>> {
    let partition = PartitionKey::train("churn", 2, "v1");
    let model = vec!["models".to_string(), "churn".to_string()];
    let mut out = Vec::new();
    for (i, batches) in data::seed_batches().iter().enumerate() {
        let path = if i % 2 == 0 {
            partition.path()
        } else {
            model.clone()
        };
        out.extend(encoded(batches, path.clone(), 1 << 20, i % 3 == 0));
        // Small messages: the batches split by rows into several.
        out.extend(encoded(batches, path, 256, false));
    }
    // arrow-flight's own encoder writes the same protocol its own way.
    if let Some(batches) = data::seed_batches().first() {
        let input = stream::iter(batches.clone().into_iter().map(Ok));
        let encoder = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(partition.path())))
            .build(input);
        let messages: std::result::Result<Vec<FlightData>, _> = block_on(encoder.try_collect());
        if let Ok(messages) = messages {
            out.push(frame(&messages));
        }
    }
    out
}

/// Structure-aware half the time: the framing is kept valid while one
/// message's header, body, descriptor or metadata is mutated, or messages
/// are dropped, repeated, swapped or taken from another seed; otherwise
/// (or after) bytes and varints anywhere.
fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let structured = rng.one_in(2);
    let mut out = match unframe(seed).filter(|m| structured && !m.is_empty()) {
        Some(mut messages) => {
            for _ in 0..(1 + rng.below(3)) {
                mutate_messages(rng, &mut messages, others);
            }
            frame(&messages)
        }
        None => byte_mutator(rng, seed, others),
    };
    if !structured || rng.one_in(4) {
        for _ in 0..rng.below(3) {
            write_varint(rng, &mut out);
        }
        if structured {
            mutate_bytes(rng, &mut out, others);
        }
    }
    out.truncate(crate::mutate::MAX_INPUT);
    out
}

fn mutate_bytes_of(rng: &mut Rng, b: &Bytes) -> Bytes {
    let mut v = b.to_vec();
    mutate_bytes(rng, &mut v, &[]);
    v.into()
}

fn mutate_messages(rng: &mut Rng, messages: &mut Vec<FlightData>, others: &[Vec<u8>]) {
    let i = rng.below(messages.len());
    match rng.below(9) {
        0 | 1 => messages[i].data_header = mutate_bytes_of(rng, &messages[i].data_header),
        2 | 3 => messages[i].data_body = mutate_bytes_of(rng, &messages[i].data_body),
        4 => {
            let d = messages[i]
                .flight_descriptor
                .get_or_insert_with(FlightDescriptor::default);
            match rng.below(4) {
                0 => d.path.clear(),
                1 => d.path.push("x".repeat(rng.below(300))),
                2 if !d.path.is_empty() => {
                    let j = rng.below(d.path.len());
                    let mut p = d.path[j].clone().into_bytes();
                    mutate_bytes(rng, &mut p, &[]);
                    d.path[j] = String::from_utf8_lossy(&p).into_owned();
                }
                _ => messages[i].flight_descriptor = None,
            }
        }
        5 => messages[i].app_metadata = mutate_bytes_of(rng, &messages[i].app_metadata),
        6 => {
            if messages.len() > 1 {
                messages.remove(i);
            }
        }
        7 => {
            let j = rng.below(messages.len());
            if rng.one_in(2) {
                messages.swap(i, j);
            } else {
                let m = messages[i].clone();
                messages.insert(j, m);
            }
        }
        _ => {
            let theirs = rng.pick(others).and_then(|o| unframe(o));
            if let Some(theirs) = theirs.filter(|t| !t.is_empty()) {
                let m = theirs[rng.below(theirs.len())].clone();
                let at = rng.below(messages.len() + 1);
                messages.insert(at, m);
            }
        }
    }
}

/// The input in HTTP/2-like chunks of 1 byte to the whole, sized from its hash.
fn chunks(input: &[u8]) -> Vec<Bytes> {
    let mut rng = Rng::new(fnv(input));
    let mut out = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let n = match rng.below(4) {
            0 => 1 + rng.below(8),
            1 => 1 + rng.below(256),
            2 => 1 + rng.below(16 << 10),
            _ => input.len(),
        };
        let end = (at + n).min(input.len());
        out.push(Bytes::copy_from_slice(&input[at..end]));
        at = end;
    }
    out
}

fn run(input: &[u8]) -> Result<()> {
    let frames = chunks(input)
        .into_iter()
        .map(|c| Ok::<_, Infallible>(Frame::data(c)));
    let body = StreamBody::new(stream::iter(frames));
    let mut messages = flight_data(body, MAX_MESSAGE_BYTES, Side::Server);
    block_on(async move {
        // As the handler's split_descriptor: the descriptor rides on the
        // first message, which is data too unless it carries nothing else.
        let first = messages
            .next()
            .await
            .transpose()
            .map_err(|s| refused(from_status(&s)))?;
        let first = first.ok_or_else(|| refused(Error::invalid("no messages")))?;
        let path = first
            .flight_descriptor
            .as_ref()
            .map(|d| d.path.clone())
            .unwrap_or_default();
        if check(PartitionKey::from_path(&path)).is_some() {
            reached("flight_data: partition descriptor");
        }
        check(ModelKey::from_path(&path));
        let lead = if first.data_header.is_empty() && first.data_body.is_empty() {
            None
        } else {
            Some(Ok(first))
        };
        let data = stream::iter(lead)
            .chain(messages)
            .map_err(FlightError::from)
            .boxed();
        // The server's own decode (handler.rs), panics from arrow contained.
        let mut decoded = stoker_wire::inbound::record_batches(data);
        let mut batches = Vec::new();
        while let Some(batch) = decoded.next().await {
            match batch {
                Ok(b) => batches.push(b),
                Err(e) => {
                    refused(from_flight(e));
                    break;
                }
            }
        }
        if batches.iter().any(|b| b.num_rows() > 0) {
            reached("flight_data: rows decoded");
        }
        let done = data::convert(&batches);
        if done.dense {
            reached("flight_data: features converted");
        }
        if done.labels {
            reached("flight_data: labels read");
        }
        Ok(())
    })
}

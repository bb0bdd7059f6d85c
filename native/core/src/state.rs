//! Training state: model parameters plus optimizer state, serialized as
//! safetensors bytes with a small metadata header.
//!
//! Parameters keep their model names (`fc1.weight`), so PyTorch loads them
//! with `safetensors.torch.load_file` after dropping the `optimizer/`
//! entries; optimizer tensors are named `optimizer/<param>/<slot>` and
//! `optimizer/step`. Metadata (all strings, as safetensors requires):
//! `format`, `model_id`, `round`, `samples`, plus free-form entries the
//! engine adds (task, loss, optimizer, model spec).

use std::collections::BTreeMap;

use bytes::Bytes;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// The `format` metadata value of states this version writes.
pub const FORMAT: &str = "stoker.state.v1";
/// Prefix of optimizer tensors.
pub const OPTIMIZER_PREFIX: &str = "optimizer/";
/// Metadata entry naming a state's buffer tensors (comma-separated): tensors
/// that are neither parameters nor optimizer state (BatchNorm statistics).
pub const BUFFERS_META: &str = "buffers";

/// Element type of a state tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    I64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    fn to_safetensors(self) -> Dtype {
        match self {
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
            DType::I64 => Dtype::I64,
        }
    }

    fn from_safetensors(d: Dtype, name: &str) -> Result<DType> {
        match d {
            Dtype::F32 => Ok(DType::F32),
            Dtype::F64 => Ok(DType::F64),
            Dtype::I64 => Ok(DType::I64),
            other => Err(Error::invalid(format!(
                "state tensor '{name}' has dtype {other:?}; stoker states hold F32, F64 or I64"
            ))),
        }
    }
}

/// One named tensor: little-endian element bytes in row-major order.
///
/// The bytes are shared: a state read with [`State::from_shared`] points into
/// the message it arrived in, and [`State::to_chunks`] hands them on without
/// copying (a state can be hundreds of MB, and every pass over it shows).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

impl TensorData {
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        TensorData {
            name: name.into(),
            dtype: DType::F32,
            shape,
            data: {
                let mut data = Vec::with_capacity(values.len() * 4);
                for v in values {
                    data.extend_from_slice(&v.to_le_bytes());
                }
                data.into()
            },
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements widened to f64.
    pub fn to_f64(&self) -> Vec<f64> {
        decode(self.dtype, &self.data)
    }

    /// The elements as f32 (F64 narrowed, I64 converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            _ => self.to_f64().into_iter().map(|v| v as f32).collect(),
        }
    }
}

pub(crate) fn decode(dtype: DType, data: &[u8]) -> Vec<f64> {
    match dtype {
        DType::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        DType::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        DType::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
            .collect(),
    }
}

pub(crate) fn encode(dtype: DType, values: &[f64]) -> Vec<u8> {
    match dtype {
        DType::F32 => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        DType::F64 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        DType::I64 => values
            .iter()
            .flat_map(|&v| (v.round() as i64).to_le_bytes())
            .collect(),
    }
}

/// The state's header.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateMeta {
    /// Identifies the architecture (parameter names and shapes); states of
    /// different models cannot be averaged.
    pub model_id: String,
    /// The training round that produced this state (0 = initial).
    pub round: u64,
    /// Samples this state was trained on (its weight when averaging).
    pub samples: u64,
    /// Anything else the engine records: task, loss, optimizer, spec.
    pub extra: BTreeMap<String, String>,
}

/// Parameters plus optimizer state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    pub meta: StateMeta,
    pub tensors: Vec<TensorData>,
}

pub(crate) fn corrupt(err: impl std::fmt::Display) -> Error {
    Error::invalid(format!("state bytes are not a valid stoker state: {err}"))
}

impl State {
    pub fn tensor(&self, name: &str) -> Option<&TensorData> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Parameter tensors only (what a PyTorch `state_dict` holds).
    pub fn parameters(&self) -> impl Iterator<Item = &TensorData> {
        self.tensors
            .iter()
            .filter(|t| !t.name.starts_with(OPTIMIZER_PREFIX))
    }

    /// The same state without optimizer tensors: what is broadcast when
    /// optimizer state is not averaged, so every round starts the optimizer
    /// afresh.
    pub fn without_optimizer(mut self) -> State {
        self.tensors
            .retain(|t| !t.name.starts_with(OPTIMIZER_PREFIX));
        self
    }

    /// The padded safetensors header and the tensors in data order.
    fn header(&self) -> Result<(Vec<u8>, Vec<&TensorData>)> {
        let mut meta = serde_json::Map::new();
        for (k, v) in &self.meta.extra {
            meta.insert(k.clone(), v.clone().into());
        }
        meta.insert("format".into(), FORMAT.into());
        meta.insert("model_id".into(), self.meta.model_id.clone().into());
        meta.insert("round".into(), self.meta.round.to_string().into());
        meta.insert("samples".into(), self.meta.samples.to_string().into());
        let mut order: Vec<&TensorData> = self.tensors.iter().collect();
        order.sort_by(|a, b| a.name.cmp(&b.name));
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), meta.into());
        let mut offset = 0usize;
        for t in &order {
            let expected = t.numel() * t.dtype.size();
            if t.data.len() != expected {
                return Err(Error::internal(format!(
                    "state tensor '{}' has {} bytes, its shape {:?} needs {expected}",
                    t.name,
                    t.data.len(),
                    t.shape
                )));
            }
            if header.contains_key(&t.name) {
                return Err(Error::invalid(format!(
                    "state has two tensors named '{}'",
                    t.name
                )));
            }
            header.insert(
                t.name.clone(),
                serde_json::json!({
                    "dtype": t.dtype.to_safetensors().to_string(),
                    "shape": t.shape,
                    "data_offsets": [offset, offset + expected],
                }),
            );
            offset += expected;
        }
        let mut json = serde_json::to_vec(&header)
            .map_err(|e| Error::internal(format!("state header: {e}")))?;
        // Pad the header with spaces so tensor data starts 8-byte aligned,
        // as the safetensors format recommends.
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        Ok((json, order))
    }

    /// Serializes to safetensors. The bytes are deterministic (header keys
    /// sorted, tensors in name order): equal states give equal bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let (head, chunks) = self.to_chunks()?;
        let mut out = Vec::with_capacity(head.len() + chunks.iter().map(Bytes::len).sum::<usize>());
        out.extend_from_slice(&head);
        for c in &chunks {
            out.extend_from_slice(c);
        }
        Ok(out)
    }

    /// [`State::to_bytes`]'s output as its safetensors header followed by the
    /// tensors' own bytes, shared, not copied: for writers that send a list of
    /// buffers (the server's replies).
    pub fn to_chunks(&self) -> Result<(Vec<u8>, Vec<Bytes>)> {
        let (json, order) = self.header()?;
        let mut head = Vec::with_capacity(8 + json.len());
        head.extend_from_slice(&(json.len() as u64).to_le_bytes());
        head.extend_from_slice(&json);
        Ok((head, order.into_iter().map(|t| t.data.clone()).collect()))
    }

    /// Reads a state, copying its tensors out of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<State> {
        Self::parse(bytes, Bytes::copy_from_slice)
    }

    /// Reads a state whose tensors stay slices of `bytes` (no copy): for a
    /// state that arrived in a message and is only read, such as the input of
    /// a training round.
    pub fn from_shared(bytes: &Bytes) -> Result<State> {
        Self::parse(bytes, |data| bytes.slice_ref(data))
    }

    fn parse(bytes: &[u8], keep: impl Fn(&[u8]) -> Bytes) -> Result<State> {
        let meta = StateMeta::read(bytes)?;
        let st = SafeTensors::deserialize(bytes).map_err(corrupt)?;
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            let dtype = DType::from_safetensors(view.dtype(), &name)?;
            tensors.push(TensorData {
                dtype,
                shape: view.shape().to_vec(),
                data: keep(view.data()),
                name,
            });
        }
        // safetensors orders tensors by dtype and name on disk; keep a
        // canonical order so equal states compare equal.
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(State { meta, tensors })
    }
}

impl StateMeta {
    /// A serialized state's metadata, from its safetensors header alone:
    /// the tensors' data is neither copied nor decoded (the header's
    /// offsets are checked against the length).
    pub fn read(bytes: &[u8]) -> Result<StateMeta> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
        let mut extra: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        match extra.remove("format") {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(corrupt(format!(
                    "unsupported format '{f}', expected {FORMAT}"
                )))
            }
            None => {
                return Err(corrupt(
                    "no 'format' metadata (is it a plain safetensors file?)",
                ))
            }
        }
        let number = |extra: &mut BTreeMap<String, String>, key: &str| -> Result<u64> {
            extra
                .remove(key)
                .unwrap_or_else(|| "0".into())
                .parse()
                .map_err(|_| corrupt(format!("metadata '{key}' is not a number")))
        };
        let round = number(&mut extra, "round")?;
        let samples = number(&mut extra, "samples")?;
        let model_id = extra.remove("model_id").unwrap_or_default();
        Ok(StateMeta {
            model_id,
            round,
            samples,
            extra,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::error::ErrorKind;

    pub(crate) fn state(values: &[f32], bias: f32, samples: u64) -> State {
        State {
            meta: StateMeta {
                model_id: "m1".into(),
                round: 3,
                samples,
                extra: [("task".to_string(), "regression".to_string())].into(),
            },
            tensors: vec![
                TensorData::from_f32("fc.bias", vec![1], &[bias]),
                TensorData::from_f32("fc.weight", vec![1, values.len()], values),
                TensorData {
                    name: "optimizer/step".into(),
                    dtype: DType::I64,
                    shape: vec![],
                    data: 10i64.to_le_bytes().to_vec().into(),
                },
            ],
        }
    }

    #[test]
    fn metadata_reads_from_the_header_alone() {
        let s = state(&[1.0, 2.0], 0.5, 40);
        let bytes = s.to_bytes().unwrap();
        assert_eq!(StateMeta::read(&bytes).unwrap(), s.meta);
        // A truncated file is refused (the header's offsets must cover it).
        assert!(StateMeta::read(&bytes[..bytes.len() - 4]).is_err());
        let e = StateMeta::read(b"junk").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn shared_states_point_into_their_message_and_chunks_concatenate_to_bytes() {
        let s = state(&[1.0, 2.0, 3.0], 0.5, 40);
        let bytes = Bytes::from(s.to_bytes().unwrap());
        let shared = State::from_shared(&bytes).unwrap();
        assert_eq!(shared, s);
        let range = bytes.as_ptr_range();
        for t in &shared.tensors {
            assert!(range.contains(&t.data.as_ptr()), "{} was copied", t.name);
        }
        let (head, chunks) = shared.to_chunks().unwrap();
        let joined: Vec<u8> = head
            .iter()
            .chain(chunks.iter().flat_map(|c| c.iter()))
            .copied()
            .collect();
        assert_eq!(joined, bytes);
        assert!(chunks.iter().all(|c| range.contains(&c.as_ptr())));
        let copied = State::from_bytes(&bytes).unwrap();
        assert!(copied
            .tensors
            .iter()
            .all(|t| !range.contains(&t.data.as_ptr())));
    }

    #[test]
    fn bytes_round_trip_with_metadata() {
        let s = state(&[1.0, 2.0, 3.0], 0.5, 40);
        let back = State::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.parameters().count(), 2);
    }

    #[test]
    fn without_optimizer_keeps_parameters_and_metadata() {
        let s = state(&[1.0, 2.0], 0.5, 7);
        let stripped = s.clone().without_optimizer();
        assert_eq!(stripped.meta, s.meta);
        let names: Vec<&str> = stripped.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["fc.bias", "fc.weight"]);
    }

    #[test]
    fn equal_states_serialize_to_equal_bytes() {
        let a = state(&[1.0, 2.0], 0.5, 3);
        let mut b = a.clone();
        b.tensors.reverse();
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
        // And the bytes are what the safetensors reference reader accepts.
        let bytes = a.to_bytes().unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("fc.weight").unwrap().shape(), &[1, 2]);
    }

    #[test]
    fn corrupt_bytes_are_invalid_input() {
        let e = State::from_bytes(b"definitely not safetensors").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("not a valid stoker state"), "{e}");
        let mut bytes = state(&[1.0], 1.0, 1).to_bytes().unwrap();
        bytes.truncate(bytes.len() - 3);
        assert_eq!(
            State::from_bytes(&bytes).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}

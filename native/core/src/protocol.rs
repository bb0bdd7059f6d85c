//! The stoker Flight protocol's types: descriptors, action names and bodies,
//! and the envelope that carries JSON plus binary blobs (states, TorchScript
//! archives) in one action body. docs/protocol.md is the reference; this
//! module is the one implementation the server and every client share.

/// Default largest gRPC message, both ways (server `--max-message-mb`, clients):
/// one action carries a whole model state with its optimizer tensors (a 50M-
/// parameter model with Adam is 600 MB), so the limit is large; it caps, it does
/// not allocate.
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Arrow batches are split into Flight data messages of at most this size (or half
/// the message limit, if smaller), so large batches stream instead of travelling
/// as one giant message.
pub const DATA_MESSAGE_BYTES: usize = 32 << 20;

/// The Flight data message size for a message limit.
pub fn data_message_bytes(max_message_bytes: usize) -> usize {
    DATA_MESSAGE_BYTES.min(max_message_bytes / 2)
}

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// First element of a descriptor path naming a training partition:
/// `["partition", JOB, PARTITION, VERSION]`.
pub const PARTITION_PATH: &str = "partition";
/// First element of a descriptor path naming a model:
/// `["models", NAME]` or `["models", NAME, VERSION]`.
pub const MODELS_PATH: &str = "models";
/// First element of a descriptor path naming a job: `["jobs", JOB]`.
pub const JOBS_PATH: &str = "jobs";

/// Action names (DoAction `type`).
pub mod action {
    pub const CREATE_JOB: &str = "create_job";
    pub const TRAIN_ROUND: &str = "train_round";
    pub const DROP_JOB: &str = "drop_job";
    pub const REGISTER_MODEL: &str = "register_model";
    pub const UNLOAD_MODEL: &str = "unload_model";
    pub const EXPORT_MODEL: &str = "export_model";
    pub const HEALTH: &str = "health";
    pub const STATS: &str = "stats";
}

/// Which data a DoPut carries: one partition of one job at one version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionKey {
    pub job: String,
    pub partition: u32,
    pub version: String,
}

impl PartitionKey {
    pub fn path(&self) -> Vec<String> {
        vec![
            PARTITION_PATH.into(),
            self.job.clone(),
            self.partition.to_string(),
            self.version.clone(),
        ]
    }

    pub fn from_path(path: &[String]) -> Result<PartitionKey> {
        match path {
            [head, job, partition, version] if head == PARTITION_PATH => Ok(PartitionKey {
                job: job.clone(),
                partition: partition.parse().map_err(|_| {
                    Error::invalid(format!("partition '{partition}' in the descriptor is not a number"))
                })?,
                version: version.clone(),
            }),
            other => Err(Error::invalid(format!(
                "descriptor path {other:?} does not name a partition; expected [\"partition\", JOB, PARTITION, VERSION]"
            ))),
        }
    }
}

/// A model as a DoExchange or DoGet descriptor names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelKey {
    pub name: String,
    /// None: the latest version.
    pub version: Option<u32>,
}

impl ModelKey {
    pub fn from_path(path: &[String]) -> Result<ModelKey> {
        match path {
            [head, name] if head == MODELS_PATH => Ok(ModelKey {
                name: name.clone(),
                version: None,
            }),
            [head, name, version] if head == MODELS_PATH => Ok(ModelKey {
                name: name.clone(),
                version: Some(version.parse().map_err(|_| {
                    Error::invalid(format!("model version '{version}' is not a number"))
                })?),
            }),
            other => Err(Error::invalid(format!(
                "descriptor path {other:?} does not name a model; expected [\"models\", NAME] or [\"models\", NAME, VERSION]"
            ))),
        }
    }
}

/// `create_job`: what a training job trains and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    pub job: String,
    /// A built-in model spec (JSON object). Exactly one of `spec`,
    /// `torchscript_path` or a `model` blob gives the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// A TorchScript file on the server's file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torchscript_path: Option<String>,
    pub features: Vec<String>,
    pub label: String,
    /// mse, cross_entropy, bce; default from the spec and label type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// Optimizer settings: {"name": "adam", "lr": 0.001, ...}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// When a job of this name exists, keep it (and its partitions) instead
    /// of replacing it: what each Spark task sends, so tasks sharing a
    /// server never drop each other's partitions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_existing: bool,
}

fn default_batch_size() -> usize {
    256
}

/// `train_round`: train one partition for one round, from the state in the
/// `state` blob (or the job's initial state when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRound {
    pub job: String,
    pub partition: u32,
    pub version: String,
    pub round: u64,
    #[serde(default = "one")]
    pub epochs: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Drop the partition from the cache after this round (the caller's
    /// last round), instead of leaving it to the LRU budget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release: bool,
    /// Names the input state, the same for every partition of a round. The
    /// server keeps the last state it was sent under its id (one per job),
    /// so the job's other partitions on that server may send the id alone;
    /// a server without it answers `needs_state` and trains nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_id: Option<String>,
}

fn one() -> usize {
    1
}

/// The JSON part of `train_round`'s result; the new state follows as the
/// `state` blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRoundResult {
    pub job: String,
    pub partition: u32,
    pub round: u64,
    pub samples: u64,
    pub steps: u64,
    /// A diverged round's NaN loss goes out as JSON `null` (JSON has no NaN)
    /// and reads back as NaN.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss_first: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss_last: f64,
    pub seconds: f64,
    /// The request named a `state_id` this server does not hold and sent no
    /// state: nothing was trained; send the state and ask again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_state: bool,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl TrainRoundResult {
    /// The answer to a request whose input state must be sent.
    pub fn needs_state(req: &TrainRound) -> Self {
        TrainRoundResult {
            job: req.job.clone(),
            partition: req.partition,
            round: req.round,
            samples: 0,
            steps: 0,
            loss_first: 0.0,
            loss_last: 0.0,
            seconds: 0.0,
            needs_state: true,
        }
    }
}

/// `drop_job` and `unload_model` name what to forget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Named {
    #[serde(alias = "job")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// `register_model`: a servable model under a name. The model comes from
/// `spec`, `torchscript_path` or a `model` blob; its weights from the
/// `state` blob (required for specs, optional for TorchScript).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterModel {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torchscript_path: Option<String>,
    /// Feature columns DoExchange reads (default: those in the state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// For TorchScript models without a state: the loss decides the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// For TorchScript models without a state: features per row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_width: Option<usize>,
}

/// `export_model`: a trained model as a TorchScript archive for plain
/// PyTorch. The model comes from `spec` or a `model` blob (TorchScript), its
/// weights from the `state` blob; the answer carries the archive as its
/// `torchscript` blob.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

/// Magic that starts an enveloped body (JSON plus blobs).
pub const ENVELOPE_MAGIC: &[u8; 4] = b"STK1";

/// An action body or result: a JSON value and named binary blobs.
///
/// Encoding: with no blobs, the plain JSON bytes. With blobs:
/// `"STK1"`, a little-endian u32 with the JSON length, the JSON (whose
/// `"blobs"` member lists `{"name", "size"}` in order), then the blob bytes
/// one after another.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Envelope {
    pub json: serde_json::Value,
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl Envelope {
    pub fn new(json: impl Serialize) -> Result<Envelope> {
        Ok(Envelope {
            json: serde_json::to_value(json)
                .map_err(|e| Error::internal(format!("encoding JSON: {e}")))?,
            blobs: Vec::new(),
        })
    }

    pub fn with_blob(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.blobs.push((name.to_string(), bytes));
        self
    }

    pub fn blob(&self, name: &str) -> Option<&[u8]> {
        self.blobs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    pub fn take_blob(&mut self, name: &str) -> Option<Vec<u8>> {
        let i = self.blobs.iter().position(|(n, _)| n == name)?;
        Some(self.blobs.remove(i).1)
    }

    /// The JSON part as a typed body; `what` names the action in errors.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        let mut json = self.json.clone();
        if let Some(obj) = json.as_object_mut() {
            obj.remove("blobs");
        }
        serde_json::from_value(json)
            .map_err(|e| Error::invalid(format!("malformed {what} body: {e}")))
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.blobs.is_empty() {
            return serde_json::to_vec(&self.json)
                .map_err(|e| Error::internal(format!("encoding JSON: {e}")));
        }
        let sizes: Vec<(&str, usize)> = self
            .blobs
            .iter()
            .map(|(n, b)| (n.as_str(), b.len()))
            .collect();
        let mut out = Envelope::prefix(&self.json, &sizes)?;
        for (_, b) in &self.blobs {
            out.extend_from_slice(b);
        }
        Ok(out)
    }

    /// The bytes of an envelope before its blobs (magic, length, JSON with
    /// the blob listing), with room reserved for the blobs: a caller holding
    /// the blobs elsewhere (a JVM array) appends them without an
    /// intermediate copy. `json` must be an object.
    pub fn prefix(json: &serde_json::Value, blobs: &[(&str, usize)]) -> Result<Vec<u8>> {
        let mut json = json.clone();
        let listing: Vec<serde_json::Value> = blobs
            .iter()
            .map(|(n, size)| serde_json::json!({"name": n, "size": size}))
            .collect();
        match json.as_object_mut() {
            Some(obj) => {
                obj.insert("blobs".into(), listing.into());
            }
            None => {
                return Err(Error::internal(
                    "an envelope with blobs needs a JSON object",
                ))
            }
        }
        let header = serde_json::to_vec(&json)
            .map_err(|e| Error::internal(format!("encoding JSON: {e}")))?;
        let total: usize = blobs.iter().map(|(_, size)| size).sum();
        let mut out = Vec::with_capacity(8 + header.len() + total);
        out.extend_from_slice(ENVELOPE_MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        Ok(out)
    }

    pub fn decode(body: &[u8]) -> Result<Envelope> {
        let (json, ranges) = Envelope::split(body)?;
        let blobs = ranges
            .into_iter()
            .map(|(name, range)| (name, body[range].to_vec()))
            .collect();
        Ok(Envelope { json, blobs })
    }

    /// The JSON of an encoded body and where each blob lies in it, without
    /// copying the blobs (checked: every range is inside `body`).
    #[allow(clippy::type_complexity)]
    pub fn split(
        body: &[u8],
    ) -> Result<(serde_json::Value, Vec<(String, std::ops::Range<usize>)>)> {
        let bad = |why: &str| Error::invalid(format!("malformed action body: {why}"));
        if !body.starts_with(ENVELOPE_MAGIC) {
            if body.is_empty() {
                return Ok((serde_json::json!({}), Vec::new()));
            }
            let json = serde_json::from_slice(body).map_err(|e| bad(&format!("not JSON ({e})")))?;
            return Ok((json, Vec::new()));
        }
        let len_bytes: [u8; 4] = body
            .get(4..8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("truncated envelope header"))?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let header = body
            .get(8..8 + len)
            .ok_or_else(|| bad("truncated envelope JSON"))?;
        let json: serde_json::Value =
            serde_json::from_slice(header).map_err(|e| bad(&format!("envelope JSON: {e}")))?;
        let mut blobs = Vec::new();
        let mut at = 8 + len;
        if let Some(list) = json.get("blobs").and_then(|b| b.as_array()) {
            for item in list {
                let name = item
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| bad("a blob without a name"))?;
                let size =
                    item.get("size")
                        .and_then(|s| s.as_u64())
                        .ok_or_else(|| bad("a blob without a size"))? as usize;
                let end = at
                    .checked_add(size)
                    .filter(|&end| end <= body.len())
                    .ok_or_else(|| bad(&format!("blob '{name}' is truncated")))?;
                blobs.push((name.to_string(), at..end));
                at = end;
            }
        }
        if at != body.len() {
            return Err(bad("bytes after the last blob"));
        }
        Ok((json, blobs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_loss_survives_json_as_null() {
        let req = TrainRound {
            job: "j".into(),
            partition: 1,
            version: "v".into(),
            round: 2,
            epochs: 1,
            steps: None,
            release: false,
            state_id: Some("r2".into()),
        };
        let mut result = TrainRoundResult::needs_state(&req);
        result.loss_last = f64::NAN;
        let text = serde_json::to_string(&result).unwrap();
        assert!(text.contains("\"loss_last\":null"), "{text}");
        let back: TrainRoundResult = serde_json::from_str(&text).unwrap();
        assert!(back.loss_last.is_nan() && back.loss_first == 0.0 && back.needs_state);
        // Results without `needs_state` (older servers) read as trained ones.
        let plain: TrainRoundResult = serde_json::from_str(
            r#"{"job":"j","partition":1,"round":2,"samples":5,"steps":1,"loss_first":0.5,"loss_last":0.25,"seconds":0.1}"#,
        )
        .unwrap();
        assert!(!plain.needs_state && plain.samples == 5);
    }

    #[test]
    fn partition_paths_round_trip() {
        let k = PartitionKey {
            job: "j".into(),
            partition: 7,
            version: "v2".into(),
        };
        assert_eq!(PartitionKey::from_path(&k.path()).unwrap(), k);
        let e = PartitionKey::from_path(&["partition".into(), "j".into(), "x".into(), "v".into()])
            .unwrap_err();
        assert!(e.message().contains("'x'"));
        assert!(PartitionKey::from_path(&["models".into()]).is_err());
    }

    #[test]
    fn model_paths() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ModelKey::from_path(&p(&["models", "churn"]))
                .unwrap()
                .version,
            None
        );
        assert_eq!(
            ModelKey::from_path(&p(&["models", "churn", "3"]))
                .unwrap()
                .version,
            Some(3)
        );
        assert!(ModelKey::from_path(&p(&["jobs", "churn"])).is_err());
    }

    #[test]
    fn envelope_with_and_without_blobs() {
        let plain = Envelope::new(serde_json::json!({"job": "a"})).unwrap();
        let bytes = plain.encode().unwrap();
        assert_eq!(bytes, br#"{"job":"a"}"#);
        assert_eq!(Envelope::decode(&bytes).unwrap(), plain);

        let env = Envelope::new(serde_json::json!({"job": "a"}))
            .unwrap()
            .with_blob("state", vec![1, 2, 3])
            .with_blob("model", vec![]);
        let back = Envelope::decode(&env.encode().unwrap()).unwrap();
        assert_eq!(back.blob("state"), Some(&[1u8, 2, 3][..]));
        assert_eq!(back.blob("model"), Some(&[][..]));
        let named: Named = back.parse("drop_job").unwrap();
        assert_eq!(named.name, "a");
    }

    #[test]
    fn malformed_bodies_are_invalid_input() {
        for body in [
            &b"{not json"[..],
            b"STK1\x05\x00\x00\x00{}",
            b"STK1\x02\x00\x00\x00{}junk",
        ] {
            let e = Envelope::decode(body).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{body:?}");
        }
        let env = Envelope::decode(br#"{"job": 3}"#).unwrap();
        let e = env.parse::<TrainRound>("train_round").unwrap_err();
        assert!(e.message().contains("malformed train_round body"), "{e}");
    }
}

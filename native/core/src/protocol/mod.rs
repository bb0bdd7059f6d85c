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

mod actions;
mod envelope;
mod linalg;

pub use actions::*;
pub use envelope::{Envelope, ENVELOPE_MAGIC};
pub use linalg::{Linalg, MatrixOptions, OnPartition, ProductOn};

/// Column names from a comma-separated list, as the `x-stoker-keep` header,
/// a state's `features` metadata and the command line's flags carry them:
/// names are trimmed, and empty ones dropped.
pub fn column_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// First element of a descriptor path naming a training partition:
/// `["partition", JOB, PARTITION, VERSION]`.
pub const PARTITION_PATH: &str = "partition";
/// First element of a descriptor path naming a validation partition of a
/// job: `["validation", JOB, PARTITION, VERSION]`.
pub const VALIDATION_PATH: &str = "validation";
/// First element of a descriptor path naming a model:
/// `["models", NAME]` or `["models", NAME, VERSION]`.
pub const MODELS_PATH: &str = "models";
/// First element of a descriptor path naming a job: `["jobs", JOB]`.
pub const JOBS_PATH: &str = "jobs";

/// Which rows of a job a partition holds: those it trains on, or those it
/// is scored on (cached alike, never trained on). Partition `p` of one
/// split and partition `p` of the other are different partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Train,
    Validation,
}

impl Split {
    /// The descriptor path's first element for a partition of this split.
    pub fn path_head(self) -> &'static str {
        match self {
            Split::Train => PARTITION_PATH,
            Split::Validation => VALIDATION_PATH,
        }
    }

    fn is_train(&self) -> bool {
        *self == Split::Train
    }
}

/// Which data a DoPut carries: one partition of one job's split at one
/// version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionKey {
    pub job: String,
    #[serde(default, skip_serializing_if = "Split::is_train")]
    pub split: Split,
    pub partition: u32,
    pub version: String,
}

impl PartitionKey {
    /// Partition `partition` of `job`'s training rows at `version`.
    pub fn train(job: impl Into<String>, partition: u32, version: impl Into<String>) -> Self {
        PartitionKey {
            job: job.into(),
            split: Split::Train,
            partition,
            version: version.into(),
        }
    }

    pub fn path(&self) -> Vec<String> {
        vec![
            self.split.path_head().into(),
            self.job.clone(),
            self.partition.to_string(),
            self.version.clone(),
        ]
    }

    pub fn from_path(path: &[String]) -> Result<PartitionKey> {
        let split = match path.first().map(String::as_str) {
            Some(PARTITION_PATH) => Split::Train,
            Some(VALIDATION_PATH) => Split::Validation,
            _ => Split::Train,
        };
        match path {
            [head, job, partition, version] if head == split.path_head() => Ok(PartitionKey {
                job: job.clone(),
                split,
                partition: partition.parse().map_err(|_| {
                    Error::invalid(format!("partition '{partition}' in the descriptor is not a number"))
                })?,
                version: version.clone(),
            }),
            other => Err(Error::invalid(format!(
                "descriptor path {other:?} does not name a partition; expected [\"partition\" or \"validation\", JOB, PARTITION, VERSION]"
            ))),
        }
    }
}

impl std::fmt::Display for PartitionKey {
    /// `partition 3 of job 'j'`, or `validation partition 3 of job 'j'`:
    /// how errors and logs name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.split == Split::Validation {
            f.write_str("validation ")?;
        }
        write!(f, "partition {} of job '{}'", self.partition, self.job)
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
    /// The latest version of the model `name`.
    pub fn latest(name: impl Into<String>) -> ModelKey {
        ModelKey {
            name: name.into(),
            version: None,
        }
    }

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

/// What a DoGet ticket names: a job's initial state (`jobs/JOB`) or a
/// registered model's state (`models/NAME[/VERSION]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateTicket {
    Job(String),
    Model(ModelKey),
}

impl StateTicket {
    pub fn parse(ticket: &[u8]) -> Result<StateTicket> {
        let text =
            std::str::from_utf8(ticket).map_err(|_| Error::invalid("ticket is not UTF-8"))?;
        let parts: Vec<String> = text.split('/').map(String::from).collect();
        match parts.first().map(String::as_str) {
            Some(JOBS_PATH) if parts.len() == 2 => Ok(StateTicket::Job(parts[1].clone())),
            Some(MODELS_PATH) => Ok(StateTicket::Model(ModelKey::from_path(&parts)?)),
            _ => Err(Error::invalid(format!(
                "ticket '{text}' names neither 'jobs/JOB' nor 'models/NAME[/VERSION]'"
            ))),
        }
    }

    /// The ticket's text, as [`StateTicket::parse`] reads it.
    pub fn text(&self) -> String {
        match self {
            StateTicket::Job(job) => format!("{JOBS_PATH}/{job}"),
            StateTicket::Model(ModelKey {
                name,
                version: Some(v),
            }) => format!("{MODELS_PATH}/{name}/{v}"),
            StateTicket::Model(ModelKey {
                name,
                version: None,
            }) => format!("{MODELS_PATH}/{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_paths_round_trip() {
        let k = PartitionKey::train("j", 7, "v2");
        assert_eq!(PartitionKey::from_path(&k.path()).unwrap(), k);
        let v = PartitionKey {
            split: Split::Validation,
            ..k.clone()
        };
        assert_eq!(v.path()[0], "validation");
        assert_eq!(PartitionKey::from_path(&v.path()).unwrap(), v);
        assert_eq!(v.to_string(), "validation partition 7 of job 'j'");
        assert_eq!(k.to_string(), "partition 7 of job 'j'");
        let e = PartitionKey::from_path(&["partition".into(), "j".into(), "x".into(), "v".into()])
            .unwrap_err();
        assert!(e.message().contains("'x'"));
        assert!(PartitionKey::from_path(&["models".into()]).is_err());
    }

    #[test]
    fn column_lists_are_trimmed_and_skip_empty_names() {
        assert_eq!(column_list(" a, b,,c ,"), ["a", "b", "c"]);
        assert!(column_list("").is_empty());
    }

    #[test]
    fn state_tickets_round_trip() {
        for text in ["jobs/j", "models/m", "models/m/3"] {
            let t = StateTicket::parse(text.as_bytes()).unwrap();
            assert_eq!(t.text(), text);
        }
        for bad in [&b"jobs"[..], b"jobs/a/b", b"other/x", b"\xff"] {
            assert!(StateTicket::parse(bad).is_err(), "{bad:?}");
        }
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
}

//! `ipc_features`: an Arrow IPC stream (what the JVM and Python bridges
//! hand over in one buffer) read with `stoker_core::ipc::read_stream`, its
//! IPC framing listed with `message_ranges` (what stoker's client sends a
//! JVM stream by), then converted as the server converts a partition:
//! feature layouts for scalar, vector, list and Spark ML vector columns,
//! the dense copy, and labels for regression, binary and 3-class tasks.

use stoker_core::ipc::{message_ranges, read_stream, write_stream};
use stoker_core::Result;

use super::{byte_mutator, check, data, reached, refused, Target};

pub fn target() -> Target {
    Target {
        name: "ipc_features",
        about: "Arrow IPC stream -> ipc::read_stream, ipc::message_ranges -> FeatureLayout::resolve, to_dense, labels::read_labels",
        seeds,
        run,
        mutate: byte_mutator,
    }
}

fn seeds() -> Vec<Vec<u8>> {
    data::seed_batches()
        .iter()
        .filter_map(|batches| write_stream(&batches.first()?.schema(), batches).ok())
        .collect()
}

fn run(input: &[u8]) -> Result<()> {
    if let Some(ranges) = check(message_ranges(input)) {
        for (meta, body) in ranges {
            assert!(
                meta.end <= body.start && body.end <= input.len(),
                "message ranges {meta:?} {body:?} outside {} bytes",
                input.len()
            );
        }
    }
    let (_, batches) = read_stream(input).map_err(refused)?;
    if batches.iter().any(|b| b.num_rows() > 0) {
        reached("ipc_features: rows decoded");
    }
    let done = data::convert(&batches);
    if done.dense {
        reached("ipc_features: features converted");
    }
    if done.labels {
        reached("ipc_features: labels read");
    }
    Ok(())
}

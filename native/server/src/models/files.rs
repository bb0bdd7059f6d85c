//! The disk tier's files: one directory per model version holding the
//! model (`model.json` or `model.pt`), its state and a manifest.

use std::path::Path;

use stoker_core::{Error, Result};
use stoker_engine::model::ModelSource;

use super::{Artifact, Manifest};

pub(super) fn write_artifact(dir: &Path, artifact: &Artifact, manifest: &Manifest) -> Result<()> {
    let io = |what: &str| {
        let what = format!("{what} in {}", dir.display());
        move |e| Error::io(what, e)
    };
    // A re-registered version must not keep files of the one it replaces.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io("clearing the old version"))?;
    }
    std::fs::create_dir_all(dir).map_err(io("creating the model directory"))?;
    match &artifact.source {
        ModelSource::Spec(s) => {
            std::fs::write(dir.join("model.json"), s.to_json()).map_err(io("writing model.json"))?
        }
        ModelSource::TorchScript(b) => {
            std::fs::write(dir.join("model.pt"), b).map_err(io("writing model.pt"))?
        }
    }
    if let Some(state) = &artifact.state {
        std::fs::write(dir.join("state.safetensors"), state)
            .map_err(io("writing state.safetensors"))?;
    }
    let text =
        serde_json::to_string_pretty(manifest).map_err(|e| Error::internal(e.to_string()))?;
    std::fs::write(dir.join("manifest.json"), text).map_err(io("writing manifest.json"))
}

pub(super) fn read_artifact(dir: &Path) -> Result<Artifact> {
    let json = dir.join("model.json");
    let source = if json.exists() {
        ModelSource::from_file(&json)?
    } else {
        ModelSource::from_file(&dir.join("model.pt"))?
    };
    let state_path = dir.join("state.safetensors");
    let state = if state_path.exists() {
        Some(
            std::fs::read(&state_path)
                .map_err(|e| Error::io(format!("reading {}", state_path.display()), e))?,
        )
    } else {
        None
    };
    Ok(Artifact { source, state })
}

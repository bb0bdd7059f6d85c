use std::path::PathBuf;

use clap::Args;
use stoker_core::{Error, Result};
use stoker_engine::model::{export_torchscript, ModelSource};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The model the state was trained with: a JSON spec or TorchScript file.
    #[arg(long)]
    model: PathBuf,
    /// The trained state (safetensors), e.g. a Spark model's state.safetensors.
    #[arg(long)]
    state: PathBuf,
    /// Where to write the TorchScript archive (`torch.jit.load` reads it).
    #[arg(long)]
    out: PathBuf,
}

/// Writes a trained model as TorchScript for plain PyTorch: a TorchScript
/// model with its trained parameters and buffers, or a built-in model's
/// traced forward (docs/engine.md, "Exporting").
pub fn run(a: ExportArgs) -> Result<()> {
    let source = ModelSource::from_file(&a.model)?;
    let state = super::read_state(&a.state)?;
    let bytes = export_torchscript(&source, &state, None).map_err(|e| {
        e.context(format!(
            "exporting {} with {}",
            a.model.display(),
            a.state.display()
        ))
    })?;
    std::fs::write(&a.out, &bytes)
        .map_err(|e| Error::io(format!("writing {}", a.out.display()), e))?;
    eprintln!("wrote {} ({} bytes)", a.out.display(), bytes.len());
    Ok(())
}

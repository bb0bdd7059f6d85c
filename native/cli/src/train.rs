use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use stoker_core::protocol::column_list;
use stoker_core::{Error, Result};
use stoker_engine::model::ModelSource;
use stoker_engine::{DeviceSpec, OptimizerConfig, OptimizerKind, Rows, Setup, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data: a .parquet or .arrow file.
    #[arg(long)]
    data: PathBuf,
    /// Model: a JSON spec (.json) or a TorchScript file saved by torch.jit.save.
    #[arg(long)]
    model: PathBuf,
    /// Feature columns, comma-separated: numeric columns and/or vector columns.
    #[arg(long)]
    features: String,
    /// Label column (int for classes, float for regression).
    #[arg(long)]
    label: String,
    /// Where to write the trained state (safetensors).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Stop after this many optimizer steps instead of full epochs.
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// sgd, adam or adamw.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// mse, cross_entropy or bce; default: cross_entropy for integer labels
    /// (or a spec with num_classes), mse for float labels.
    #[arg(long)]
    loss: Option<String>,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the data order (no shuffling between epochs).
    #[arg(long)]
    no_shuffle: bool,
    /// Continue from this state (parameters and optimizer state).
    #[arg(long)]
    init_state: Option<PathBuf>,
    /// Also write the per-epoch history (loss, rows/s) as JSON.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Also write the trained model as TorchScript for torch.jit.load (what
    /// `stoker export` writes from the state).
    #[arg(long)]
    export_torchscript: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: TrainArgs) -> Result<()> {
    // Flags first: a typo should fail before any data is read.
    let device = a.device.parse::<DeviceSpec>()?.resolve()?;
    let optimizer = OptimizerConfig {
        kind: a.optimizer.parse::<OptimizerKind>()?,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        ..Default::default()
    };
    optimizer.validate()?;
    let setup = Setup {
        source: ModelSource::from_file(&a.model)?,
        features: column_list(&a.features),
        label: a.label.clone(),
        loss: a.loss.as_deref().map(str::parse).transpose()?,
        optimizer,
        device,
        seed: a.seed,
        budget: None,
    };
    let (_, batches) = crate::datafile::read_all(&a.data)?;
    let fixed = setup.fix(&batches, Rows::All)?;
    if let (Some(classes), false) = (fixed.inferred_classes, a.quiet) {
        eprintln!(
            "num_classes not in the spec: using {classes} (labels 0..{})",
            classes - 1
        );
    }
    let mut trainer = setup.trainer(&fixed)?;
    let data = setup.dataset(&fixed, &batches, trainer.model().task())?;
    drop(batches);
    let mut round = 0;
    if let Some(init) = &a.init_state {
        let state = super::read_state(init)?;
        trainer
            .load_state(&state)
            .map_err(|e| e.context(format!("state {}", init.display())))?;
        round = state.meta.round + 1;
    }
    if !a.quiet {
        eprintln!(
            "training {} ({} parameters, task {}, loss {}) on {} rows x {} features, device {}",
            trainer.model().network().kind(),
            trainer.model().parameter_count(),
            trainer.model().task().encode(),
            fixed.loss,
            data.rows(),
            data.width(),
            stoker_engine::device::name(device)
        );
    }
    let opts = TrainOptions {
        epochs: a.epochs,
        max_steps: a.steps,
        batch_size: a.batch_size,
        shuffle: !a.no_shuffle,
        seed: a.seed,
        round,
        partition: 0,
        cancel: None,
        class_weights: None,
    };
    let interactive = std::io::stderr().is_terminal();
    let quiet = a.quiet;
    let report = trainer.train(&data, &opts, &mut |e| {
        if !quiet {
            let line = format!(
                "epoch {}/{}  loss {:.6}  {:.0} rows/s  {:.2}s",
                e.epoch,
                e.epochs,
                e.loss,
                e.rows_per_second(),
                e.seconds
            );
            if interactive && e.epoch < e.epochs {
                eprint!("\r{line}");
            } else {
                eprintln!("{}{line}", if interactive { "\r" } else { "" });
            }
        }
    })?;
    let state = setup.state(&trainer, &fixed, round, report.samples as u64)?;
    super::write_state(&a.out, &state)?;
    if let Some(path) = &a.history {
        let history: Vec<_> = report
            .epochs
            .iter()
            .map(|e| {
                serde_json::json!({
                    "epoch": e.epoch, "loss": e.loss, "rows": e.rows,
                    "seconds": e.seconds, "rows_per_second": e.rows_per_second()
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&history).unwrap_or_default();
        std::fs::write(path, text)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    if let Some(path) = &a.export_torchscript {
        let bytes = stoker_engine::model::export_torchscript(&setup.source(&fixed), &state, None)?;
        std::fs::write(path, bytes)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    if !a.quiet {
        eprintln!(
            "wrote {} ({} steps in {:.2}s, final loss {:.6})",
            a.out.display(),
            report.steps,
            report.seconds,
            report.final_loss()
        );
    }
    Ok(())
}

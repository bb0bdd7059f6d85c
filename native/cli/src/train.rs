use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use stoker_core::labels::label_is_integer;
use stoker_core::{Error, FeatureLayout, Loss, Result, Task};
use stoker_engine::model::ModelSource;
use stoker_engine::{
    Dataset, DeviceSpec, Model, OptimizerConfig, OptimizerKind, TrainOptions, Trainer,
};

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

/// For a spec without num_classes trained with cross-entropy, the classes
/// are 0..=max label.
fn infer_classes(batches: &[arrow::array::RecordBatch], label: &str) -> Result<usize> {
    let labels = stoker_core::labels::read_labels(batches, label, Task::Regression)?;
    let stoker_core::Labels::Values(v) = labels else {
        return Err(Error::internal("expected label values"));
    };
    let max = v.iter().cloned().fold(f32::MIN, f32::max);
    if max < 1.0 || v.iter().any(|x| x.fract() != 0.0 || *x < 0.0) {
        return Err(Error::invalid(format!(
            "label column '{label}' must hold class indices 0, 1, 2... for cross-entropy"
        )));
    }
    Ok(max as usize + 1)
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
    let requested_loss: Option<Loss> = a.loss.as_deref().map(str::parse).transpose()?;
    let mut source = ModelSource::from_file(&a.model)?;
    let (schema, batches) = crate::datafile::read_all(&a.data)?;
    let features = super::split_columns(&a.features);
    let layout = FeatureLayout::resolve(
        &schema,
        &features,
        batches.iter().find(|b| b.num_rows() > 0),
    )?;
    let integer_label = label_is_integer(&schema, &a.label)?;
    let loss = requested_loss.unwrap_or_else(|| source.default_loss(integer_label));
    if let ModelSource::Spec(spec) = &mut source {
        if loss == Loss::CrossEntropy && spec.num_classes.is_none() {
            let classes = infer_classes(&batches, &a.label)?;
            if !a.quiet {
                eprintln!(
                    "num_classes not in the spec: using {classes} (labels 0..{})",
                    classes - 1
                );
            }
            spec.num_classes = Some(classes);
        }
    }
    let model = Model::build(&source, loss, layout.width(), device, a.seed)?;
    let data = Dataset::from_batches(&batches, &layout, &a.label, model.task(), device)?;
    drop(batches);
    let mut trainer = Trainer::new(model, optimizer)?;
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
            loss,
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
    let mut state = trainer.state(round, report.samples as u64)?;
    state
        .meta
        .extra
        .insert("features".into(), layout.names().join(","));
    state.meta.extra.insert("label".into(), a.label.clone());
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
        let bytes = stoker_engine::model::export_torchscript(&source, &state)?;
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

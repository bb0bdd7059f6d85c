use std::path::PathBuf;

use clap::Args;
use stoker_core::predictions::{append, OutputColumns};
use stoker_core::protocol::column_list;
use stoker_core::{Error, FeatureLayout, Result};
use stoker_engine::model::ModelSource;
use stoker_engine::{DeviceSpec, Model};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Input data: a .parquet or .arrow file.
    #[arg(long)]
    data: PathBuf,
    /// The model the state was trained with: a JSON spec or TorchScript file.
    #[arg(long)]
    model: PathBuf,
    /// Trained state written by `stoker train`.
    #[arg(long)]
    state: PathBuf,
    /// Feature columns, comma-separated (default: those the state was trained on).
    #[arg(long)]
    features: Option<String>,
    /// Output file: .parquet (or .arrow).
    #[arg(long)]
    out: PathBuf,
    /// Input columns to copy to the output, comma-separated (default: all).
    #[arg(long)]
    keep: Option<String>,
    #[arg(long, default_value = "prediction")]
    prediction_col: String,
    /// Probability column for classifiers; empty for none.
    #[arg(long, default_value = "probability")]
    probability_col: String,
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: PredictArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let device = a.device.parse::<DeviceSpec>()?.resolve()?;
    let source = ModelSource::from_file(&a.model)?;
    let state = super::read_state(&a.state)?;
    let mut model = Model::from_state(&source, &state, device, None).map_err(|e| {
        e.context(format!(
            "loading {} into {}",
            a.state.display(),
            a.model.display()
        ))
    })?;
    let features = match (&a.features, state.meta.extra.get("features")) {
        (Some(f), _) => column_list(f),
        (None, Some(f)) => column_list(f),
        (None, None) => {
            return Err(Error::invalid(
                "--features is required: the state does not record its feature columns",
            ))
        }
    };
    let keep = a.keep.as_deref().map(column_list);
    let names = OutputColumns {
        prediction: a.prediction_col.clone(),
        probability: Some(a.probability_col.clone()).filter(|p| !p.is_empty()),
    };
    let (schema, batches) = crate::datafile::read(&a.data)?;
    let mut layout: Option<FeatureLayout> = None;
    let mut writer = None;
    let mut rows = 0usize;
    for batch in batches {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let l = match &layout {
            Some(l) => l,
            None => layout.insert(FeatureLayout::resolve(&schema, &features, Some(&batch))?),
        };
        let outputs = model.predict_batches(std::slice::from_ref(&batch), l, rows)?;
        let out = append(&batch, keep.as_deref(), &outputs, &names)?;
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(crate::datafile::Writer::create(&a.out, out.schema())?),
        };
        w.write(&out)?;
        rows += batch.num_rows();
    }
    match writer {
        Some(w) => w.finish()?,
        None => return Err(Error::invalid(format!("{} has no rows", a.data.display()))),
    }
    if !a.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "wrote {} predictions to {} in {:.2}s ({:.0} rows/s)",
            rows,
            a.out.display(),
            secs,
            rows as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

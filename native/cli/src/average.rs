use std::path::PathBuf;

use clap::Args;
use stoker_core::{Error, Result, WeightedSum};

#[derive(Args, Debug)]
pub struct AverageArgs {
    /// States to average, each `FILE` or `FILE:WEIGHT`; the default weight
    /// is the state's sample count.
    #[arg(required = true)]
    states: Vec<String>,
    /// Where to write the averaged state.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: AverageArgs) -> Result<()> {
    let mut sum: Option<WeightedSum> = None;
    for item in &args.states {
        let (path, weight) = match item.rsplit_once(':') {
            Some((p, w)) if w.parse::<f64>().is_ok() => (p, w.parse::<f64>().ok()),
            _ => (item.as_str(), None),
        };
        let state = super::read_state(&PathBuf::from(path))?;
        let weight = weight.unwrap_or(state.meta.samples.max(1) as f64);
        match &mut sum {
            None => sum = Some(WeightedSum::new(&state, weight)?),
            Some(s) => s.add(&state, weight).map_err(|e| e.context(path))?,
        }
    }
    let sum = sum.ok_or_else(|| Error::invalid("no states given"))?;
    let avg = sum.average()?;
    super::write_state(&args.out, &avg)?;
    eprintln!(
        "averaged {} states (total weight {}) into {}",
        sum.count(),
        sum.weight(),
        args.out.display()
    );
    Ok(())
}

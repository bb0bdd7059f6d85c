//! The `stoker` command line: `train`, `predict`, `export` and `average`
//! run the engine on local files; `serve` runs the Flight server.

mod average;
mod datafile;
mod export;
mod predict;
mod serve;
mod train;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stoker_core::{Error, ErrorKind, Result};

#[derive(Parser, Debug)]
#[command(
    name = "stoker",
    version,
    about = "Train and run libtorch models on Arrow data"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model on a Parquet or Arrow file and write its state.
    Train(train::TrainArgs),
    /// Run a trained model over a Parquet or Arrow file.
    Predict(predict::PredictArgs),
    /// Write a trained model as a TorchScript archive for plain PyTorch.
    Export(export::ExportArgs),
    /// Weighted average of states (what the Spark driver does each round).
    Average(average::AverageArgs),
    /// Run the Arrow Flight server (prints its address on the first stdout line).
    Serve(serve::ServeArgs),
}

/// Exit codes: 0 ok, 2 bad input, 3 not found, 4 unavailable, 1 anything else.
pub fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidInput => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::Unavailable => 4,
        _ => 1,
    }
}

/// Parses the process arguments, runs the command, prints any error as
/// `error: ...` on stderr and returns the exit code.
fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(e.kind()))
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Average(a) => average::run(a),
        Command::Export(a) => export::run(a),
        Command::Serve(a) => serve::run(a),
    }
}

fn read_state(path: &PathBuf) -> Result<stoker_core::State> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading state {}", path.display()), e))?;
    stoker_core::State::from_bytes(&bytes)
        .map_err(|e| e.context(format!("state {}", path.display())))
}

fn write_state(path: &PathBuf, state: &stoker_core::State) -> Result<()> {
    std::fs::write(path, state.to_bytes()?)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

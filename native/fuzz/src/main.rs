//! The `stoker-fuzz` command line: fuzz the targets round-robin for a
//! number of inputs or seconds, or replay one saved input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use stoker_fuzz::runner::{self, Options, Outcome};
use stoker_fuzz::targets;

#[derive(Parser, Debug)]
#[command(
    name = "stoker-fuzz",
    version,
    about = "Mutation fuzzer over stoker's client-controlled inputs (stable Rust, no coverage feedback)",
    after_help = "Targets: envelope, action_json, flight_data, ipc_features, descriptor, state.\n\
                  A crash is written to target/fuzz/crashes/<target>-<hash>.bin; replay it with\n\
                  `stoker-fuzz --target T --replay FILE`, and once fixed keep it under\n\
                  native/fuzz/regressions/<target>/ (cargo test replays those)."
)]
struct Cli {
    /// Target to fuzz, or `all` (round-robin).
    #[arg(long, default_value = "all")]
    target: String,
    /// Stop after this many inputs in all.
    #[arg(long)]
    inputs: Option<u64>,
    /// Stop after this many seconds (default 60 when --inputs is not given).
    #[arg(long)]
    seconds: Option<f64>,
    /// Seed of the mutations (a run with --inputs repeats exactly).
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Run one saved input (a crash file or a regression) and report it.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Where crash inputs are written.
    #[arg(long, value_name = "DIR")]
    crash_dir: Option<PathBuf>,
    /// Largest single allocation, in MiB, before an input counts as a crash.
    #[arg(long, default_value_t = 512)]
    malloc_limit_mb: usize,
    /// Longest one input may run, in seconds, before it counts as a hang.
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    /// Count inputs that hit a known open crash (native/fuzz/regressions/<target>/open/) as crashes.
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let malloc_limit = cli.malloc_limit_mb.saturating_mul(1 << 20);
    if let Some(file) = &cli.replay {
        let timeout = Duration::from_secs_f64(cli.timeout_s.max(0.1));
        return replay(&cli.target, file, malloc_limit, timeout);
    }
    let names: Vec<String> = if cli.target == "all" {
        targets::all().iter().map(|t| t.name.to_string()).collect()
    } else {
        vec![cli.target.clone()]
    };
    let seconds = match (cli.seconds, cli.inputs) {
        (Some(s), _) => Some(s),
        (None, None) => Some(60.0),
        (None, Some(_)) => None,
    };
    let opts = Options {
        targets: names,
        inputs: cli.inputs,
        duration: seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
        seed: cli.seed,
        crash_dir: cli.crash_dir.unwrap_or_else(runner::default_crash_dir),
        malloc_limit,
        timeout: Duration::from_secs_f64(cli.timeout_s.max(0.1)),
        progress: Some(Duration::from_secs(10)),
        strict: cli.strict,
    };
    match runner::fuzz(&opts) {
        Ok(report) => {
            print!("{}", report.render());
            if report.crash_count() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn replay(
    target: &str,
    file: &std::path::Path,
    malloc_limit: usize,
    timeout: Duration,
) -> ExitCode {
    let found = if target == "all" {
        runner::target_of_file(file)
    } else {
        targets::find(target)
    };
    let Some(target) = found else {
        eprintln!(
            "error: name the target with --target (one of {}); the file name does not start with one",
            targets::names()
        );
        return ExitCode::from(2);
    };
    match runner::replay(&target, file, malloc_limit, timeout) {
        Ok(Outcome::Accepted) => {
            println!("{}: {}: accepted, no crash", target.name, file.display());
            ExitCode::SUCCESS
        }
        Ok(Outcome::Rejected(why)) => {
            println!(
                "{}: {}: rejected, no crash: {why}",
                target.name,
                file.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::Crashed(what)) => {
            println!("{}: {}: CRASH: {what}", target.name, file.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

//! The fuzzer as a test: every saved regression input replays clean, every
//! seed runs, and a short deterministic pass over every target finds no
//! new crash (`cargo test --release --workspace` runs them all).

use std::sync::Mutex;
use std::time::Duration;

use stoker_fuzz::runner::{self, Options, Outcome};
use stoker_fuzz::targets;

/// The fuzzer's guard state (current input, allocation limit) is global:
/// one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn crash_dir() -> std::path::PathBuf {
    runner::default_crash_dir().with_file_name("test-crashes")
}

#[test]
fn every_regression_input_replays_clean() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // As a fuzz run: an allocation over the limit or a hang ends the test
    // binary, saying which input did it.
    stoker_fuzz::guard::watchdog(Duration::from_secs(60));
    let limit = Options::default().malloc_limit;
    let mut replayed = 0;
    for target in targets::all() {
        for file in runner::regression_files(&runner::regression_dir(target.name)) {
            let input = std::fs::read(&file).unwrap();
            let outcome = runner::run_guarded(&target, &input, &crash_dir(), limit);
            assert!(
                !matches!(outcome, Outcome::Crashed(_)),
                "{}: {outcome:?}",
                file.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no regression inputs found");
    // Known open crashes (upstream bugs) still crash, each at its own place.
    for known in runner::known_open() {
        println!(
            "known open crash: {} at {} ({})",
            known.target,
            known.place,
            known.file.display()
        );
    }
}

#[test]
fn every_seed_runs_without_crashing_and_some_are_accepted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for target in targets::all() {
        let seeds = (target.seeds)();
        assert!(
            seeds.len() >= 3,
            "{} has {} seeds",
            target.name,
            seeds.len()
        );
        let mut accepted = 0;
        for seed in &seeds {
            match runner::run_one(&target, seed, &crash_dir()) {
                Outcome::Accepted => accepted += 1,
                Outcome::Rejected(_) => {}
                Outcome::Crashed(what) => panic!("{}: a seed crashes: {what}", target.name),
            }
        }
        assert!(
            accepted * 2 >= seeds.len(),
            "{}: only {accepted} of {} seeds accepted",
            target.name,
            seeds.len()
        );
    }
}

#[test]
fn a_short_pass_over_every_target_finds_no_new_crash() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names: Vec<String> = targets::all().iter().map(|t| t.name.to_string()).collect();
    let per_target = 2000;
    let opts = Options {
        targets: names.clone(),
        inputs: Some(per_target * names.len() as u64),
        duration: None,
        seed: 24,
        crash_dir: crash_dir(),
        timeout: Duration::from_secs(120),
        ..Options::default()
    };
    let report = runner::fuzz(&opts).unwrap();
    let text = report.render();
    println!("{text}");
    assert_eq!(report.crash_count(), 0, "{text}");
    for s in &report.stats {
        // Round-robin after the seeds, which come first: about even.
        assert!(
            s.inputs >= per_target * 9 / 10,
            "{}: {} inputs\n{text}",
            s.name,
            s.inputs
        );
        assert!(s.accepted > 0, "{}: nothing accepted\n{text}", s.name);
        assert!(s.rejected > 0, "{}: nothing rejected\n{text}", s.name);
    }
    assert!(
        text.contains("crashes\n") && text.contains(": 0 crashes"),
        "{text}"
    );
}

#[test]
fn a_run_repeats_from_its_seed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = || {
        let opts = Options {
            targets: vec!["envelope".into(), "descriptor".into()],
            inputs: Some(500),
            duration: None,
            seed: 7,
            crash_dir: crash_dir(),
            ..Options::default()
        };
        let r = runner::fuzz(&opts).unwrap();
        r.stats
            .iter()
            .map(|s| (s.inputs, s.accepted, s.rejected))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn unknown_targets_are_refused_by_name() {
    let opts = Options {
        targets: vec!["nope".into()],
        ..Options::default()
    };
    let e = runner::fuzz(&opts).unwrap_err();
    assert!(
        e.contains("unknown target 'nope'") && e.contains("flight_data"),
        "{e}"
    );
}

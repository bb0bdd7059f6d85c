//! The fuzz loop: inputs made from each target's seeds (and from inputs it
//! accepted, kept as extra bases), run under `catch_unwind`, counted, and
//! any panic saved as a crash file, shrunk first, with how to replay it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::guard;
use crate::mutate::Rng;
use crate::targets::{self, Target};

/// What one input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It got past the target's first parser.
    Accepted,
    /// The first parser refused it, saying why (expected and fine).
    Rejected(String),
    /// It panicked: the panic's message and where it was raised.
    Crashed(String),
}

thread_local! {
    /// Set while this thread runs an input: its panic is recorded.
    static RUNNING: RefCell<bool> = const { RefCell::new(false) };
    /// Set while this thread runs inputs quietly: panics are not printed.
    static QUIET: RefCell<bool> = const { RefCell::new(false) };
    /// The last panic on this thread: message and location.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs (once) a panic hook that records a fuzzed input's panic for
/// the report, printing it only when not quiet (a replay prints it, with a
/// backtrace under RUST_BACKTRACE=1); other panics print as before.
fn install_hook() {
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if RUNNING.with(|r| *r.borrow()) {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", short_path(l.file()), l.line()))
                    .unwrap_or_else(|| "an unknown place".into());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{message} (at {at})")));
            }
            if !QUIET.with(|q| *q.borrow()) {
                default(info);
            }
        }));
    });
}

/// A source path as a reader finds it: a dependency's from its crate
/// directory (`arrow-buffer-60.1.0/src/...`), stoker's from the workspace.
fn short_path(file: &str) -> &str {
    if let Some(i) = file.find("/registry/src/") {
        let rest = &file[i + "/registry/src/".len()..];
        return rest.split_once('/').map_or(rest, |(_, p)| p);
    }
    let root = workspace().to_str().unwrap_or("");
    file.strip_prefix(root)
        .map_or(file, |p| p.trim_start_matches('/'))
}

/// Runs one input of `target`, catching any panic (not printed).
pub fn run_one(target: &Target, input: &[u8], crash_dir: &Path) -> Outcome {
    run_input(target, input, crash_dir, true)
}

fn run_input(target: &Target, input: &[u8], crash_dir: &Path, quiet: bool) -> Outcome {
    install_hook();
    RUNNING.with(|r| *r.borrow_mut() = true);
    QUIET.with(|q| *q.borrow_mut() = quiet);
    LAST_PANIC.with(|p| p.borrow_mut().take());
    guard::begin(target.name, input, crash_dir);
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    guard::end();
    RUNNING.with(|r| *r.borrow_mut() = false);
    QUIET.with(|q| *q.borrow_mut() = false);
    match result {
        Ok(Ok(())) => Outcome::Accepted,
        Ok(Err(e)) if e.message().trim().is_empty() => {
            Outcome::Crashed(format!("a {} error without a message", e.kind()))
        }
        Ok(Err(e)) => Outcome::Rejected(e.message().to_string()),
        Err(_) => Outcome::Crashed(
            LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "a panic (no message recorded)".into()),
        ),
    }
}

/// FNV-1a of the input: a crash file's name.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes a crash input as `DIR/<target>-<fnv hash>.bin`.
pub fn write_crash(dir: &Path, target: &str, input: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{target}-{:016x}.bin", fnv(input)));
    std::fs::write(&path, input)?;
    Ok(path)
}

/// The workspace root (this crate is `native/fuzz` in it).
fn workspace() -> &'static Path {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(crate_dir)
}

/// The default crash directory: the workspace's `target/fuzz/crashes`.
pub fn default_crash_dir() -> PathBuf {
    workspace().join("target/fuzz/crashes")
}

/// Where a target's regression inputs live: `native/fuzz/regressions/<target>/`.
pub fn regression_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target)
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target names, visited round-robin.
    pub targets: Vec<String>,
    /// Stop after this many inputs in all.
    pub inputs: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub seed: u64,
    pub crash_dir: PathBuf,
    /// Largest single allocation (bytes) before the run calls it a crash.
    pub malloc_limit: usize,
    /// Longest one input may run before the run calls it a hang.
    pub timeout: Duration,
    /// Print a progress line every this often (None: quiet).
    pub progress: Option<Duration>,
    /// Count the known open crashes (`regressions/<target>/open/`) as
    /// crashes too.
    pub strict: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            targets: targets::all().iter().map(|t| t.name.to_string()).collect(),
            inputs: None,
            duration: Some(Duration::from_secs(60)),
            seed: 0x5eed,
            crash_dir: default_crash_dir(),
            malloc_limit: 512 << 20,
            timeout: Duration::from_secs(30),
            progress: None,
            strict: false,
        }
    }
}

/// One target's counts.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub name: &'static str,
    pub inputs: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub crashes: u64,
    /// Inputs that crashed at the place of a known open crash.
    pub known: u64,
    /// Time spent running this target's inputs (mutation included).
    pub busy: Duration,
}

impl Stats {
    pub fn per_second(&self) -> f64 {
        let s = self.busy.as_secs_f64();
        if s > 0.0 {
            self.inputs as f64 / s
        } else {
            0.0
        }
    }
}

/// A distinct crash: its target, what panicked where, and the smallest
/// input seen for it (saved).
#[derive(Debug, Clone)]
pub struct Crash {
    pub target: &'static str,
    pub what: String,
    pub input: Vec<u8>,
    pub path: Option<PathBuf>,
    pub count: u64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub stats: Vec<Stats>,
    pub crashes: Vec<Crash>,
    /// The known open crashes this run hit, and how often.
    pub known: Vec<(Known, u64)>,
    /// How many inputs reached each target's deeper stages.
    pub reached: Vec<(&'static str, u64)>,
    pub elapsed: Duration,
}

/// A crash kept under `regressions/<target>/open/`: found, not fixed yet
/// (an upstream bug, say). A run counts inputs that crash at its place
/// apart from new crashes, so that a known bug does not hide a new one
/// and does not fail every run until it is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub target: &'static str,
    /// Where it panics (`file:line`).
    pub place: String,
    pub file: PathBuf,
}

/// The known open crashes: every input under `regressions/<target>/open/`
/// that still crashes, with its place. One that no longer crashes is
/// reported (move it up to `regressions/<target>/`, where it must pass).
pub fn known_open() -> Vec<Known> {
    let mut out = Vec::new();
    for target in targets::all() {
        for file in regression_files(&regression_dir(target.name).join("open")) {
            let Ok(input) = std::fs::read(&file) else {
                continue;
            };
            match run_guarded(
                &target,
                &input,
                &default_crash_dir(),
                Options::default().malloc_limit,
            ) {
                Outcome::Crashed(what) => out.push(Known {
                    target: target.name,
                    place: place(&what).to_string(),
                    file,
                }),
                _ => eprintln!(
                    "stoker-fuzz: {} no longer crashes: move it to {}",
                    file.display(),
                    regression_dir(target.name).display()
                ),
            }
        }
    }
    out
}

/// The input files in `dir` (none if it does not exist), in name order.
pub fn regression_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "bin"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

impl Report {
    pub fn inputs(&self) -> u64 {
        self.stats.iter().map(|s| s.inputs).sum()
    }

    pub fn crash_count(&self) -> u64 {
        self.stats.iter().map(|s| s.crashes).sum()
    }

    /// The per-target table and the summary line.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<14} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10}\n",
            "target", "inputs", "accepted", "rejected", "crashes", "known", "inputs/s"
        );
        for s in &self.stats {
            out += &format!(
                "{:<14} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10.0}\n",
                s.name,
                s.inputs,
                s.accepted,
                s.rejected,
                s.crashes,
                s.known,
                s.per_second()
            );
        }
        for (stage, count) in &self.reached {
            out += &format!("  reached {stage}: {count}\n");
        }
        for (k, count) in &self.known {
            out += &format!(
                "known open crash in {} ({count} inputs) at {}: {}\n",
                k.target,
                k.place,
                k.file.display()
            );
        }
        for c in &self.crashes {
            out += &format!("CRASH in {} ({} inputs): {}\n", c.target, c.count, c.what);
            if let Some(p) = &c.path {
                out += &format!(
                    "  input: {}\n  replay: stoker-fuzz --target {} --replay {}\n",
                    p.display(),
                    c.target,
                    p.display()
                );
            }
        }
        let crashes = self.crash_count();
        out += &format!(
            "fuzzed {} inputs in {:.0} s: {} crash{}\n",
            self.inputs(),
            self.elapsed.as_secs_f64(),
            crashes,
            if crashes == 1 { "" } else { "es" }
        );
        out
    }
}

/// Accepted inputs kept per target as extra bases for mutation.
const POOL: usize = 256;

struct Lane {
    target: Target,
    seeds: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    stats: Stats,
}

/// The panic's place, without its message's details: crashes at one place
/// are one crash (the message may quote the input).
fn place(what: &str) -> &str {
    what.rsplit_once(" (at ")
        .map_or(what, |(_, at)| at.strip_suffix(')').unwrap_or(at))
}

/// Fuzzes until the input count or the duration runs out.
pub fn fuzz(opts: &Options) -> Result<Report, String> {
    let mut lanes = Vec::new();
    for name in &opts.targets {
        let target = targets::find(name).ok_or_else(|| {
            format!(
                "unknown target '{name}'; the targets are {}",
                targets::names()
            )
        })?;
        let seeds = (target.seeds)();
        if seeds.is_empty() {
            return Err(format!("target '{name}' has no seeds"));
        }
        let stats = Stats {
            name: target.name,
            ..Stats::default()
        };
        lanes.push(Lane {
            target,
            seeds,
            pool: Vec::new(),
            stats,
        });
    }
    if lanes.is_empty() {
        return Err("no targets".into());
    }
    let known: Vec<Known> = if opts.strict {
        Vec::new()
    } else {
        known_open()
    };
    let mut known_hits = vec![0u64; known.len()];
    guard::watchdog(opts.timeout);
    targets::take_reached();
    let mut rng = Rng::new(opts.seed);
    let mut crashes: Vec<Crash> = Vec::new();
    let mut index: HashMap<(&'static str, String), usize> = HashMap::new();
    let started = Instant::now();
    let mut last_progress = started;
    let mut total = 0u64;
    // Seeds first: each must run clean (a crashing seed is a crash too).
    let mut queue: Vec<(usize, Vec<u8>)> = lanes
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.seeds.iter().map(move |s| (i, s.clone())))
        .collect();
    queue.reverse();
    let mut turn = 0usize;
    loop {
        if opts.inputs.is_some_and(|n| total >= n)
            || opts.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        let t0 = Instant::now();
        let (i, input) = match queue.pop() {
            Some(q) => q,
            None => {
                let i = turn % lanes.len();
                turn += 1;
                let lane = &lanes[i];
                let mut r = rng.fork();
                let from_pool = !lane.pool.is_empty() && r.one_in(3);
                let base = if from_pool {
                    &lane.pool[r.below(lane.pool.len())]
                } else {
                    &lane.seeds[r.below(lane.seeds.len())]
                };
                (i, (lane.target.mutate)(&mut r, base, &lane.seeds))
            }
        };
        let outcome = guard_limit(opts.malloc_limit, || {
            run_one(&lanes[i].target, &input, &opts.crash_dir)
        });
        let lane = &mut lanes[i];
        lane.stats.inputs += 1;
        total += 1;
        match outcome {
            Outcome::Accepted => {
                lane.stats.accepted += 1;
                if lane.pool.len() < POOL {
                    lane.pool.push(input);
                } else {
                    let k = rng.below(POOL * 4);
                    if k < POOL {
                        lane.pool[k] = input;
                    }
                }
            }
            Outcome::Rejected(_) => lane.stats.rejected += 1,
            Outcome::Crashed(what)
                if known
                    .iter()
                    .any(|k| k.target == lane.target.name && k.place == place(&what)) =>
            {
                lane.stats.known += 1;
                if let Some(k) = known
                    .iter()
                    .position(|k| k.target == lane.target.name && k.place == place(&what))
                {
                    known_hits[k] += 1;
                }
            }
            Outcome::Crashed(what) => {
                lane.stats.crashes += 1;
                let key = (lane.target.name, place(&what).to_string());
                match index.get(&key) {
                    Some(&k) => crashes[k].count += 1,
                    None => {
                        let small = shrink(&lane.target, &input, &what, opts);
                        let path = write_crash(&opts.crash_dir, lane.target.name, &small).ok();
                        eprintln!(
                            "stoker-fuzz: CRASH in {}: {what}\n  input: {}\n  replay: stoker-fuzz --target {} --replay {}",
                            lane.target.name,
                            path.as_deref().map_or("(not saved)".into(), |p| p.display().to_string()),
                            lane.target.name,
                            path.as_deref().map_or("FILE".into(), |p| p.display().to_string()),
                        );
                        index.insert(key, crashes.len());
                        crashes.push(Crash {
                            target: lane.target.name,
                            what,
                            input: small,
                            path,
                            count: 1,
                        });
                    }
                }
            }
        }
        lane.stats.busy += t0.elapsed();
        if let Some(every) = opts.progress {
            if last_progress.elapsed() >= every {
                last_progress = Instant::now();
                eprintln!(
                    "stoker-fuzz: {total} inputs, {:.0} s, {} crashes",
                    started.elapsed().as_secs_f64(),
                    crashes.len()
                );
            }
        }
    }
    Ok(Report {
        stats: lanes.into_iter().map(|l| l.stats).collect(),
        crashes,
        known: known
            .into_iter()
            .zip(known_hits)
            .filter(|(_, n)| *n > 0)
            .collect(),
        reached: targets::take_reached().into_iter().collect(),
        elapsed: started.elapsed(),
    })
}

/// Runs one input as a fuzz run does: panics caught, and a single
/// allocation over `malloc_limit` bytes a crash (the process ends, the
/// input saved to `crash_dir`).
pub fn run_guarded(
    target: &Target,
    input: &[u8],
    crash_dir: &Path,
    malloc_limit: usize,
) -> Outcome {
    guard_limit(malloc_limit, || run_one(target, input, crash_dir))
}

/// Runs `f` with the allocation limit on.
fn guard_limit<T>(limit: usize, f: impl FnOnce() -> T) -> T {
    guard::set_alloc_limit(limit);
    let out = f();
    guard::set_alloc_limit(usize::MAX);
    out
}

/// A smaller input that crashes at the same place: chunks removed, halves
/// first, for at most a few seconds.
fn shrink(target: &Target, input: &[u8], what: &str, opts: &Options) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let wanted = place(what).to_string();
    let mut best = input.to_vec();
    let mut chunk = best.len() / 2;
    while chunk > 0 && Instant::now() < deadline {
        let mut at = 0;
        let mut shrunk = false;
        while at < best.len() && Instant::now() < deadline {
            let end = (at + chunk).min(best.len());
            let mut candidate = best[..at].to_vec();
            candidate.extend_from_slice(&best[end..]);
            let outcome = guard_limit(opts.malloc_limit, || {
                run_one(target, &candidate, &opts.crash_dir)
            });
            match outcome {
                Outcome::Crashed(w) if place(&w) == wanted => {
                    best = candidate;
                    shrunk = true;
                }
                _ => at += chunk,
            }
        }
        if !shrunk {
            chunk /= 2;
        }
    }
    best
}

/// Runs one saved input (a crash file or a regression) and says what it did.
pub fn replay(
    target: &Target,
    path: &Path,
    malloc_limit: usize,
    timeout: Duration,
) -> Result<Outcome, String> {
    let input = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    guard::watchdog(timeout);
    Ok(guard_limit(malloc_limit, || {
        run_input(target, &input, &default_crash_dir(), false)
    }))
}

/// The target a saved input is for: the one its name starts with
/// (`<target>-<hash>.bin`), or the one its directory is named for
/// (`regressions/<target>/`, `regressions/<target>/open/`).
pub fn target_of_file(path: &Path) -> Option<Target> {
    let from_name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit_once('-'))
        .and_then(|(name, _)| targets::find(name));
    from_name.or_else(|| {
        path.ancestors()
            .skip(1)
            .take(2)
            .filter_map(|dir| dir.file_name()?.to_str())
            .find_map(targets::find)
    })
}

//! `evaluation`: what a server answers a round's validation with, as the
//! driver merges it (JNI `evaluationMetrics`): a JSON array of partitions'
//! evaluations through `stoker_core::evaluation::merged_metrics`. The driver
//! trusts its servers less than its own memory: a malformed or hostile
//! answer must be refused, never crash the driver's JVM. Invariants: a merge
//! counts every row once, and a histogram never exceeds its bound.

use stoker_core::evaluation::{merged_metrics, Evaluation, ScoreHistogram, MAX_SCORE_BINS};
use stoker_core::{Error, Result, Task};

use super::{byte_mutator, check, reached, refused, Target};

pub fn target() -> Target {
    Target {
        name: "evaluation",
        about: "a JSON array of validation evaluations -> Evaluation::from_json, merge, metrics",
        seeds,
        run,
        mutate: byte_mutator,
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let regression = Evaluation::score(Task::Regression, &[1.0, 2.5, -3.0], &[1.5, 2.0, -2.0], 1.5);
    let binary = Evaluation::score(
        Task::Binary,
        &[0.1, 0.9, 0.4, 0.4],
        &[0.0, 1.0, 1.0, 0.0],
        2.0,
    );
    let two = Evaluation::score(
        Task::Multiclass { classes: 2 },
        &[0.3, 0.7, 0.8, 0.2],
        &[1.0, 0.0],
        1.0,
    );
    let three = Evaluation::score(
        Task::Multiclass { classes: 3 },
        &[0.2, 0.3, 0.5],
        &[2.0],
        0.7,
    );
    let parts = [regression, binary, two, three];
    let mut out = Vec::new();
    for e in parts.iter().flatten() {
        if let Ok(one) = serde_json::to_string(e) {
            out.push(format!("[{one}]").into_bytes());
            out.push(format!("[{one},{one}]").into_bytes());
        }
    }
    // A histogram at a coarser shift, and one of each task (a refused mix).
    let wide = Evaluation {
        scores: ScoreHistogram {
            shift: 9,
            keys: vec![1, 2, 70000],
            positives: vec![1, 0, 3],
            negatives: vec![0, 2, 1],
        },
        ..Evaluation::empty(Task::Binary)
    };
    if let Ok(w) = serde_json::to_string(&wide) {
        out.push(format!("[{w}]").into_bytes());
    }
    let all: Vec<String> = parts
        .iter()
        .flatten()
        .filter_map(|e| serde_json::to_string(e).ok())
        .collect();
    out.push(format!("[{}]", all.join(",")).into_bytes());
    out
}

fn run(input: &[u8]) -> Result<()> {
    let list: Vec<serde_json::Value> = serde_json::from_slice(input)
        .map_err(|e| refused(Error::invalid(format!("not a JSON array: {e}"))))?;
    let texts: Vec<String> = list.iter().map(|v| v.to_string()).collect();
    let parsed: Vec<Evaluation> = texts
        .iter()
        .map(|t| Evaluation::from_json(t))
        .collect::<Result<_>>()
        .map_err(refused)?;
    reached("evaluation: parsed");
    for e in &parsed {
        assert!(
            e.scores.keys.len() == e.scores.positives.len(),
            "from_json checks the histogram's shape"
        );
    }
    if let Some(merged) = check(merged_metrics(&texts)) {
        reached("evaluation: merged");
        let rows: u64 = parsed
            .iter()
            .map(|e| e.rows)
            .fold(0u64, |a, b| a.saturating_add(b));
        if parsed
            .iter()
            .map(|e| e.rows)
            .try_fold(0u64, |a, b| a.checked_add(b))
            .is_some()
        {
            assert_eq!(
                merged["rows"].as_u64(),
                Some(rows),
                "a merge counts every row once"
            );
        }
    }
    if let [a, b, ..] = parsed.as_slice() {
        if let Some(m) = check(a.merge(b)) {
            assert!(
                m.scores.keys.len()
                    <= MAX_SCORE_BINS
                        .max(a.scores.keys.len())
                        .max(b.scores.keys.len()),
                "a merged histogram stays within its bound"
            );
            check(m.metrics());
        }
    }
    Ok(())
}

//! Learning-rate schedules across a fit's rounds and within their local
//! epochs.
//!
//! A schedule maps training progress, measured in rounds (round 3, halfway
//! through its local epochs, is 3.5), to a factor of the optimizer's
//! learning rate. Progress in rounds, not steps, because partitions of
//! different sizes take different numbers of steps per round: every
//! partition of a round then trains at the same rate at the same point of
//! its round, so the states averaged together were trained alike.
//!
//! - `constant`: factor 1.
//! - `step`: `gamma^floor(t / step_rounds)`.
//! - `cosine`: from 1 down to `min_factor` along half a cosine, ending at
//!   `total_rounds`.
//!
//! Any of them may start with `warmup_rounds` of linear warmup from 0.1 to
//! the schedule's factor (starting at 0 would waste the first steps).

use serde::{Deserialize, Serialize};

use stoker_core::{Error, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Step,
    Cosine,
}

/// A learning-rate schedule (the `schedule` of an optimizer config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// The fit's rounds: where cosine reaches `min_factor`.
    pub total_rounds: f64,
    pub warmup_rounds: f64,
    /// `step`: rounds between decays, and the decay.
    pub step_rounds: f64,
    pub gamma: f64,
    /// `cosine`: the factor at the end.
    pub min_factor: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            kind: ScheduleKind::Constant,
            total_rounds: 1.0,
            warmup_rounds: 0.0,
            step_rounds: 1.0,
            gamma: 0.5,
            min_factor: 0.0,
        }
    }
}

/// Where warmup starts, as a factor of the learning rate.
const WARMUP_START: f64 = 0.1;

impl Schedule {
    /// Whether the factor is 1 throughout (no per-step work).
    pub fn is_constant(&self) -> bool {
        self.kind == ScheduleKind::Constant && self.warmup_rounds == 0.0
    }

    /// The learning-rate factor at progress `t` rounds.
    pub fn factor(&self, t: f64) -> f64 {
        let t = t.max(0.0);
        let base = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Step => self.gamma.powf((t / self.step_rounds).floor()),
            ScheduleKind::Cosine => {
                let span = (self.total_rounds - self.warmup_rounds).max(f64::MIN_POSITIVE);
                let x = ((t - self.warmup_rounds) / span).clamp(0.0, 1.0);
                self.min_factor
                    + (1.0 - self.min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())
            }
        };
        if t < self.warmup_rounds {
            base * (WARMUP_START + (1.0 - WARMUP_START) * t / self.warmup_rounds)
        } else {
            base
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| {
            Err(Error::invalid(format!(
                "learning-rate schedule: {what}, got {v}"
            )))
        };
        if !(self.warmup_rounds.is_finite() && self.warmup_rounds >= 0.0) {
            return bad("warmup_rounds must be 0 or more", self.warmup_rounds);
        }
        if !(self.total_rounds.is_finite() && self.total_rounds > 0.0) {
            return bad("total_rounds must be positive", self.total_rounds);
        }
        match self.kind {
            ScheduleKind::Step if !(self.step_rounds.is_finite() && self.step_rounds > 0.0) => {
                bad("step_rounds must be positive", self.step_rounds)
            }
            ScheduleKind::Step if !(self.gamma > 0.0 && self.gamma <= 1.0) => {
                bad("gamma must be in (0, 1]", self.gamma)
            }
            ScheduleKind::Cosine if !(0.0..=1.0).contains(&self.min_factor) => {
                bad("min_factor must be in [0, 1]", self.min_factor)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn constant_is_one_and_step_decays_at_each_boundary() {
        assert!(Schedule::default().is_constant());
        assert!(close(Schedule::default().factor(7.3), 1.0));
        let step = Schedule {
            kind: ScheduleKind::Step,
            step_rounds: 2.0,
            gamma: 0.5,
            ..Default::default()
        };
        assert!(close(step.factor(1.99), 1.0));
        assert!(close(step.factor(2.0), 0.5));
        assert!(close(step.factor(5.5), 0.25));
    }

    #[test]
    fn cosine_warms_up_then_falls_to_its_floor() {
        let cos = Schedule {
            kind: ScheduleKind::Cosine,
            total_rounds: 10.0,
            warmup_rounds: 2.0,
            min_factor: 0.1,
            ..Default::default()
        };
        assert!(close(cos.factor(0.0), 0.1));
        assert!(close(cos.factor(1.0), 0.55));
        assert!(close(cos.factor(2.0), 1.0));
        assert!(close(cos.factor(6.0), 0.55));
        assert!(close(cos.factor(10.0), 0.1));
        assert!(close(cos.factor(12.0), 0.1));
        // Within a round the factor moves with progress, not only at its start.
        assert!(cos.factor(6.25) < cos.factor(6.0));
    }

    #[test]
    fn bad_settings_are_named() {
        let e = Schedule {
            kind: ScheduleKind::Step,
            gamma: 1.5,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("gamma"), "{e}");
        let json = serde_json::json!({"kind": "linear"});
        assert!(serde_json::from_value::<Schedule>(json).is_err());
    }
}

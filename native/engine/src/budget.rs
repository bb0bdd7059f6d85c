//! How much of a device one model may take, checked before anything is
//! allocated. A built-in spec's size is arithmetic on its layer widths, so
//! `hidden: [1000000000]` is refused with a message, not by the allocator:
//! the weights are drawn into host memory first, and a failed allocation
//! there aborts the process (Rust does not unwind out of an allocation
//! failure), taking every job and model of a server with it. A TorchScript
//! module's size is known once it is loaded (its archive is bounded by the
//! message size), and its input width is checked before the probe row.

use stoker_core::{Error, ErrorKind, Loss, Result};

use crate::model::ModelSource;

/// Bytes per f32 element.
const F32: u128 = 4;

/// What one model may take of its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes: parameters (with gradients and optimizer slots when
    /// training) plus the activations of one pass of `rows` rows.
    pub bytes: usize,
    /// Rows of one pass: the training batch, or a small inference pass.
    pub rows: usize,
    /// Bytes held per parameter: 4 to serve (the weights), 16 to train
    /// (weights, gradient, and Adam's two moments).
    pub bytes_per_parameter: usize,
    /// What sets `bytes`, named in the error (a server flag).
    pub flag: &'static str,
}

/// Rows of the inference pass a served model must fit: a model whose
/// 256-row pass does not fit its budget cannot serve.
pub const SERVING_ROWS: usize = 256;

impl Budget {
    pub fn training(bytes: usize, batch_rows: usize, flag: &'static str) -> Budget {
        Budget {
            bytes,
            rows: batch_rows.max(1),
            bytes_per_parameter: 16,
            flag,
        }
    }

    pub fn serving(bytes: usize, flag: &'static str) -> Budget {
        Budget {
            bytes,
            rows: SERVING_ROWS,
            bytes_per_parameter: 4,
            flag,
        }
    }

    /// Checks a model of `source` for `width` input features, before it
    /// is built: a spec by its layer sizes, TorchScript by its input.
    pub fn check_before_build(&self, source: &ModelSource, loss: Loss, width: usize) -> Result<()> {
        match source {
            ModelSource::Spec(spec) => {
                let outputs = spec.task(loss)?.outputs();
                let mut sizes = vec![width];
                sizes.extend(&spec.hidden);
                sizes.push(outputs);
                // Saturating: widths near usize::MAX must not wrap to a
                // small size.
                let parameters = sizes.windows(2).fold(0u128, |sum, p| {
                    sum.saturating_add((p[0] as u128 * p[1] as u128).saturating_add(p[1] as u128))
                });
                let units = sizes
                    .iter()
                    .fold(0u128, |sum, &s| sum.saturating_add(s as u128));
                // Served, a spec is held to its weights, as the device tier
                // counts them: its layers' widths are all parameters too, so
                // no activation can be large without weights to show for it.
                let units = if self.is_training() { units } else { 0 };
                self.check(
                    parameters,
                    units,
                    &format!("the model spec ({width} inputs, layers {:?})", &sizes[1..]),
                )
            }
            ModelSource::TorchScript(_) => self.check(
                0,
                width as u128,
                &format!("a TorchScript model with {width} inputs"),
            ),
        }
    }

    /// Checks a loaded model's parameters (a TorchScript module's are known
    /// only once it is loaded).
    pub fn check_parameters(&self, parameters: usize, width: usize) -> Result<()> {
        self.check(
            parameters as u128,
            width as u128,
            &format!("the TorchScript model ({parameters} parameters)"),
        )
    }

    fn is_training(&self) -> bool {
        self.bytes_per_parameter > 4
    }

    /// `parameters` held at `bytes_per_parameter`, and one pass's
    /// activations: `units` values per row, kept for the backward pass
    /// when training.
    fn check(&self, parameters: u128, units: u128, what: &str) -> Result<()> {
        let passes = if self.is_training() { 2 } else { 1 };
        let needed = parameters
            .saturating_mul(self.bytes_per_parameter as u128)
            .saturating_add(units.saturating_mul(self.rows as u128 * F32 * passes));
        if needed <= self.bytes as u128 {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::ResourceExhausted,
            format!(
                "{what} needs about {} of device memory ({parameters} parameters, and {} rows of activations), over this server's model budget of {} ({})",
                size(needed),
                self.rows,
                size(self.bytes as u128),
                self.flag
            ),
        ))
    }
}

/// Bytes in the largest unit that keeps a number above 1.
fn size(bytes: u128) -> String {
    const MIB: u128 = 1 << 20;
    const GIB: u128 = 1 << 30;
    match bytes {
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelSpec;

    fn spec(hidden: &str) -> ModelSource {
        let text = format!(r#"{{"type": "mlp", "hidden": {hidden}, "num_classes": 2}}"#);
        ModelSource::Spec(ModelSpec::from_json(&text).unwrap())
    }

    #[test]
    fn a_spec_is_sized_from_its_layers_before_anything_is_built() {
        let budget = Budget::training(4 << 30, 256, "--device-model-mb");
        budget
            .check_before_build(&spec("[64, 64]"), Loss::CrossEntropy, 10)
            .unwrap();
        let e = budget
            .check_before_build(&spec("[1000000000]"), Loss::CrossEntropy, 3)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        // 3 -> 1e9 -> 2: 6e9 parameters at 16 bytes (89 GiB), and 256 rows
        // of 1e9 activations kept for the backward pass (1907 GiB).
        assert!(e.message().contains("6000000002 parameters"), "{e}");
        assert!(e.message().contains("1996.8 GiB"), "{e}");
        assert!(e.message().contains("4.0 GiB (--device-model-mb)"), "{e}");
        // Sizes that overflow 64 bits are still refused, not wrapped.
        let huge = format!("[{}, {}]", usize::MAX, usize::MAX);
        assert!(budget
            .check_before_build(&spec(&huge), Loss::CrossEntropy, usize::MAX)
            .is_err());
    }

    #[test]
    fn a_torchscript_input_and_its_loaded_parameters_are_checked() {
        let budget = Budget::serving(4 << 30, "--device-model-mb");
        let script = ModelSource::TorchScript(Vec::new());
        budget
            .check_before_build(&script, Loss::Mse, 10_000)
            .unwrap();
        let e = budget
            .check_before_build(&script, Loss::Mse, 1_000_000_000)
            .unwrap_err();
        assert!(e.message().contains("1000000000 inputs"), "{e}");
        budget.check_parameters(1_000_000, 10).unwrap();
        assert!(budget.check_parameters(2_000_000_000, 10).is_err());
    }
}

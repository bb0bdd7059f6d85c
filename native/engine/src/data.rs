//! Training data on the device: a feature matrix and a label vector.

use arrow::array::RecordBatch;
use stoker_core::labels::read_labels;
use stoker_core::{Error, FeatureLayout, Labels, Result, Task};
use tch::{Device, Tensor};

use crate::torch::{filled_matrix, internal};

/// Features `[rows, width]` (f32) and labels `[rows]` (i64 class indices or
/// f32 targets), both on the training device.
pub struct Dataset {
    pub features: Tensor,
    pub labels: Tensor,
    rows: usize,
    width: usize,
}

impl Dataset {
    /// Converts Arrow batches: one copy from Arrow into the host tensor, one
    /// transfer to the device. Bad values (nulls, NaN, labels out of range)
    /// are errors naming the column and row.
    pub fn from_batches(
        batches: &[RecordBatch],
        layout: &FeatureLayout,
        label: &str,
        task: Task,
        device: Device,
    ) -> Result<Dataset> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let labels = read_labels(batches, label, task)?;
        let features = filled_matrix::<f32>(rows, layout.width(), |buf| {
            layout.write_batches(batches, 0, buf)
        })?;
        Self::from_parts(features, labels, device)
    }

    /// From a host feature matrix and labels.
    pub fn from_parts(features: Tensor, labels: Labels, device: Device) -> Result<Dataset> {
        let size = features.size();
        if size.len() != 2 {
            return Err(Error::invalid(format!(
                "features must be a matrix, got shape {size:?}"
            )));
        }
        let (rows, width) = (size[0] as usize, size[1] as usize);
        if labels.len() != rows {
            return Err(Error::invalid(format!(
                "{} labels for {rows} feature rows",
                labels.len()
            )));
        }
        let labels = match &labels {
            Labels::Classes(c) => Tensor::f_from_slice(c),
            Labels::Values(v) => Tensor::f_from_slice(v),
        }
        .map_err(internal("label tensor"))?;
        Ok(Dataset {
            features: features
                .f_to_device(device)
                .map_err(internal("moving features to the device"))?,
            labels: labels
                .f_to_device(device)
                .map_err(internal("moving labels to the device"))?,
            rows,
            width,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// New handles on the same tensors (no copy of the data).
    pub fn shallow_clone(&self) -> Dataset {
        Dataset {
            features: self.features.shallow_clone(),
            labels: self.labels.shallow_clone(),
            rows: self.rows,
            width: self.width,
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Bytes the dataset holds on its device.
    pub fn bytes(&self) -> usize {
        self.rows * self.width * 4 + self.rows * 8
    }
}

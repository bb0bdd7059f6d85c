//! Matrix jobs: a job created with `matrix` caches its partitions as dense
//! matrices of its feature columns (float32 or float64) and runs `linalg`
//! kernels on them (docs/linalg.md). The put path, the cache, its budget and
//! its misses are the training jobs' own.

use std::sync::Mutex;
use std::time::Instant;

use arrow::array::RecordBatch;
use stoker_core::protocol::{CreateJob, PartitionKey};
use stoker_core::{Error, FeatureLayout, Result};
use stoker_engine::linalg::{Matrix, Precision};
use stoker_engine::{Device, DeviceSpec};

use super::{lock, Cached, Job, Partition, Work};

pub(super) struct MatrixWork {
    features: Vec<String>,
    precision: Precision,
    device: Device,
    /// Fixed by the first partition: every later one must have its width.
    layout: Mutex<Option<FeatureLayout>>,
}

impl Job {
    /// A matrix job as `req` asks: feature columns and a precision, no model.
    pub(super) fn matrix(req: CreateJob, default_device: DeviceSpec) -> Result<Job> {
        let Some(options) = &req.matrix else {
            return Err(Error::internal("Job::matrix without matrix options"));
        };
        let precision: Precision = options.precision.parse()?;
        if req.spec.is_some() || req.torchscript_path.is_some() || req.data.is_some() {
            return Err(Error::invalid(format!(
                "job '{}' is a matrix job: it takes feature columns and a precision, \
                 not a model (spec, torchscript_path) or another job's data",
                req.job
            )));
        }
        if req.features.is_empty() {
            return Err(Error::invalid(format!(
                "matrix job '{}' needs at least one feature column",
                req.job
            )));
        }
        let device = match req.device {
            Some(d) => d.parse::<DeviceSpec>()?,
            None => default_device,
        }
        .resolve()?;
        Ok(Job {
            name: req.job,
            data: None,
            work: Work::Matrix(MatrixWork {
                features: req.features,
                precision,
                device,
                layout: Mutex::new(None),
            }),
            resolved: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            round_input: Mutex::new(None),
        })
    }

    /// The cached matrix of a matrix job's partition.
    pub fn matrix_of(&self, partition: &Partition) -> Result<Matrix> {
        if !matches!(self.work, Work::Matrix(_)) {
            return Err(Error::invalid(format!(
                "job '{}' is a training job; linalg kernels run on matrix jobs \
                 (create_job with 'matrix')",
                self.name
            )));
        }
        *lock(&partition.last_used) = Instant::now();
        match &*lock(&partition.data) {
            Cached::Matrix(m) => Ok(m.shallow_clone()),
            Cached::Rows(_) => Err(Error::internal(format!(
                "{} of a matrix job holds training rows",
                partition.key
            ))),
        }
    }
}

impl MatrixWork {
    /// Converts a partition's batches into the job's matrix on its device,
    /// fixing the layout on the first partition.
    pub(super) fn prepare(
        &self,
        key: PartitionKey,
        first: &RecordBatch,
        batches: &[RecordBatch],
    ) -> Result<Partition> {
        let mine = FeatureLayout::resolve(&first.schema(), &self.features, Some(first))
            .map_err(|e| e.context(key.to_string()))?;
        let layout = match lock(&self.layout).clone() {
            Some(fixed) if fixed.width() != mine.width() => {
                return Err(Error::invalid(format!(
                    "{key} has {} matrix columns per row, earlier partitions had {}",
                    mine.width(),
                    fixed.width()
                )))
            }
            Some(fixed) => fixed,
            None => mine,
        };
        let matrix = Matrix::from_batches(batches, &layout, self.precision, self.device)
            .map_err(|e| e.context(key.to_string()))?;
        lock(&self.layout).get_or_insert(layout);
        Ok(Partition::new(
            key,
            matrix.rows(),
            matrix.bytes(),
            Cached::Matrix(matrix),
        ))
    }
}

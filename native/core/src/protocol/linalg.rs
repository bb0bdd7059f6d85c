//! `linalg`: matrix work on the servers (docs/linalg.md). One action with an
//! `op`: the kernels run on one cached partition of a matrix job (a job
//! created with `matrix`), the solves on matrices the request carries. Input
//! and output matrices travel as blobs: per-partition results as
//! safetensors ([`crate::linalg`]), dense inputs and outputs as raw
//! little-endian float64, row-major.

use serde::{Deserialize, Serialize};

use super::{PartitionKey, Split};

/// `create_job`'s `matrix`: the job caches its partitions as a dense matrix
/// of its feature columns, for `linalg`, instead of training on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixOptions {
    /// float32 or float64 (the default): what the partitions are cached and
    /// computed in. Results are float64 either way.
    #[serde(default = "float64")]
    pub precision: String,
}

fn float64() -> String {
    "float64".into()
}

/// Which cached partition a kernel runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnPartition {
    pub job: String,
    pub partition: u32,
    pub version: String,
    /// Drop the partition after this kernel (the caller's last pass).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release: bool,
}

impl OnPartition {
    pub fn key(&self) -> PartitionKey {
        PartitionKey {
            job: self.job.clone(),
            split: Split::Train,
            partition: self.partition,
            version: self.version.clone(),
        }
    }
}

/// `product`'s body: a partition (as [`OnPartition`]) and the columns of `V`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductOn {
    pub job: String,
    pub partition: u32,
    pub version: String,
    pub k: usize,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release: bool,
}

impl ProductOn {
    pub fn on(&self) -> OnPartition {
        OnPartition {
            job: self.job.clone(),
            partition: self.partition,
            version: self.version.clone(),
            release: self.release,
        }
    }
}

/// The body of a `linalg` action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Linalg {
    /// Row count, column means and centered scatter of a cached partition:
    /// a `result` blob.
    Moments(OnPartition),
    /// Column sums and sums of squares (`width × 2`, float64) of a cached
    /// partition: a `result` blob (a product).
    Sums(OnPartition),
    /// `(X - c)ᵀ (X - c) V` on a cached partition, for the `center` blob
    /// `c` (width values) and the `v` blob (`width × k`): a `result` blob.
    Product(ProductOn),
    /// The `k` leading eigenpairs of the covariance (or, with `gramian`,
    /// the uncentered Gramian) of the `moments` blob: JSON `values`,
    /// `total`, the column `mean`, and a `vectors` blob (`width × k`).
    Eigen {
        k: usize,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        gramian: bool,
    },
    /// An orthonormal basis (reduced QR) of the `matrix` blob's `n × k`
    /// columns: a `q` blob.
    Orthonormalize { n: usize, k: usize },
    /// Rayleigh-Ritz for subspace iteration: with `v` (`n × k`,
    /// orthonormal) and `z` = M·V, the eigenpairs of Vᵀ Z, and V rotated
    /// onto them: JSON `values`, a `vectors` blob (`n × k`).
    Ritz { n: usize, k: usize },
    /// Least squares from the `moments` blob of `[features | label]`:
    /// JSON with coefficients, intercept, standard errors, rank, rss, r2.
    LeastSquares {
        label: usize,
        #[serde(default = "yes")]
        intercept: bool,
        #[serde(default)]
        ridge: f64,
    },
    /// The `gramian`, `covariance`, `mean` or `variance` of the `moments` blob as a
    /// `matrix` blob (for clients with no stoker library of their own).
    Matrix { of: String },
}

fn yes() -> bool {
    true
}

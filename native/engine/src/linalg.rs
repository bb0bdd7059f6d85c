//! Matrix work with libtorch: per-partition kernels over a cached matrix
//! (moments, products) and the dense solves that follow on one device
//! (eigendecomposition, orthonormalization, least squares).
//!
//! The split follows "matrix computations on the cluster, vector
//! operations on the driver" (Zadeh et al., KDD 2016), with one change: the
//! driver's JVM has no libtorch, so the dense step runs on the driver
//! node's server, on its device (cuSOLVER on a GPU, LAPACK on the CPU).
//! Kernels compute in the matrix's precision (float32 or float64) and hand
//! back float64, which is what the driver combines
//! ([`stoker_core::linalg`]).

use arrow::array::RecordBatch;
use stoker_core::linalg::{Moments, Product};
use stoker_core::{Error, FeatureLayout, Result};
use tch::{Device, Kind, Tensor};

use crate::torch::{filled_matrix, internal, to_vec};

/// The element type a matrix is cached and computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    Float32,
    #[default]
    Float64,
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Precision> {
        match s {
            "float32" | "float" | "f32" => Ok(Precision::Float32),
            "float64" | "double" | "f64" => Ok(Precision::Float64),
            other => Err(Error::invalid(format!(
                "matrix precision '{other}' is not one of float32, float64"
            ))),
        }
    }
}

impl Precision {
    fn size(self) -> usize {
        match self {
            Precision::Float32 => 4,
            Precision::Float64 => 8,
        }
    }
}

/// The element names of a layout: a scalar column's name, or `name[i]` for
/// each element of a vector column.
pub fn column_names(layout: &FeatureLayout) -> Vec<String> {
    let mut out = Vec::with_capacity(layout.width());
    for c in layout.columns() {
        if c.shape == stoker_core::features::ColumnShape::Scalar {
            out.push(c.name.clone());
        } else {
            out.extend((0..c.width()).map(|i| format!("{}[{i}]", c.name)));
        }
    }
    out
}

/// A partition's rows as a dense `rows × width` matrix on a device.
pub struct Matrix {
    values: Tensor,
    rows: usize,
    columns: Vec<String>,
    precision: Precision,
}

impl Matrix {
    /// Converts Arrow batches: one copy into a host tensor of the asked
    /// precision, one transfer to the device. A null or a value that is not
    /// finite is an error naming the column and row.
    pub fn from_batches(
        batches: &[RecordBatch],
        layout: &FeatureLayout,
        precision: Precision,
        device: Device,
    ) -> Result<Matrix> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let width = layout.width();
        let host = match precision {
            Precision::Float32 => {
                filled_matrix::<f32>(rows, width, |buf| layout.write_batches(batches, 0, buf))?
            }
            Precision::Float64 => {
                filled_matrix::<f64>(rows, width, |buf| layout.write_batches(batches, 0, buf))?
            }
        };
        let values = host
            .f_to_device(device)
            .map_err(internal("moving the matrix to the device"))?;
        Ok(Matrix {
            values,
            rows,
            columns: column_names(layout),
            precision,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Bytes the matrix holds on its device.
    pub fn bytes(&self) -> usize {
        self.rows * self.width() * self.precision.size()
    }

    pub fn shallow_clone(&self) -> Matrix {
        Matrix {
            values: self.values.shallow_clone(),
            rows: self.rows,
            columns: self.columns.clone(),
            precision: self.precision,
        }
    }

    /// Row count, column means and centered scatter `(X - m)ᵀ(X - m)` (a
    /// SYRK's work on the device: [`symmetric_gram`]).
    pub fn moments(&self) -> Result<Moments> {
        let w = self.width();
        if self.rows == 0 {
            return Ok(Moments {
                rows: 0,
                columns: self.columns.clone(),
                mean: vec![0.0; w],
                scatter: vec![0.0; w * w],
            });
        }
        let mean = self
            .values
            .f_mean_dim(0i64, true, None::<Kind>)
            .map_err(internal("column means"))?;
        let centered = self
            .values
            .f_sub(&mean)
            .map_err(internal("centering the matrix"))?;
        let scatter = symmetric_gram(&centered).map_err(internal("the scatter matrix"))?;
        Ok(Moments {
            rows: self.rows as u64,
            columns: self.columns.clone(),
            mean: to_vec::<f64>(&mean)?,
            scatter: to_vec::<f64>(&scatter)?,
        })
    }

    /// Column sums and sums of squares, `width × 2`, accumulated in float64
    /// whatever the matrix's precision (the driver takes variances from
    /// them by subtraction, so they must not be float32 sums).
    pub fn sums(&self) -> Result<Product> {
        let w = self.width();
        let values = if self.rows == 0 {
            vec![0.0; w * 2]
        } else {
            let x = self
                .values
                .f_to_kind(Kind::Double)
                .map_err(internal("widening the matrix"))?;
            let s = x
                .f_sum_dim_intlist(0i64, false, None::<Kind>)
                .and_then(|s| {
                    let q = x.f_square()?.f_sum_dim_intlist(0i64, false, None::<Kind>)?;
                    Tensor::f_stack(&[s, q], 1)
                })
                .map_err(internal("column sums"))?;
            to_vec::<f64>(&s)?
        };
        Ok(Product {
            rows: self.rows as u64,
            columns: self.columns.clone(),
            shape: [w, 2],
            values,
        })
    }

    /// `(X - c)ᵀ ((X - c) V)` for a `width × k` matrix `V` (row-major) and a
    /// center `c` (zeros for the uncentered product): one step of subspace
    /// iteration on the covariance or the Gramian, without forming either.
    pub fn product(&self, center: &[f64], v: &[f64], k: usize) -> Result<Product> {
        let w = self.width();
        if center.len() != w || v.len() != w * k || k == 0 {
            return Err(Error::invalid(format!(
                "a product needs a center of {w} values and a {w} x k matrix with k >= 1; \
                 got {} and {} values for k = {k}",
                center.len(),
                v.len()
            )));
        }
        let kind = self.values.kind();
        let device = self.values.device();
        let c = on_device(center, &[1, w as i64], kind, device)?;
        let v = on_device(v, &[w as i64, k as i64], kind, device)?;
        let product = self
            .values
            .f_sub(&c)
            .and_then(|x| x.f_mm(&v).and_then(|xv| x.f_tr()?.f_mm(&xv)))
            .map_err(internal("the matrix product"))?;
        Ok(Product {
            rows: self.rows as u64,
            columns: self.columns.clone(),
            shape: [w, k],
            values: to_vec::<f64>(&product)?,
        })
    }
}

/// Column blocks of [`symmetric_gram`]: 256 keeps each product a large
/// GEMM (rows × 256 by rows × the rest) while cutting the work to ~56% of
/// a full `XᵀX` at 2,048 columns.
const GRAM_BLOCK: i64 = 256;

/// `XᵀX`, computing only the column blocks on and above the diagonal and
/// mirroring them: libtorch has no SYRK, and a full GEMM does every
/// off-diagonal product twice. At 10,000 x 2,048 float64 here the scatter
/// took 3.4 s as one GEMM. Below two blocks it is one GEMM.
fn symmetric_gram(x: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
    let w = x.size2()?.1;
    if w < 2 * GRAM_BLOCK {
        return x.f_tr()?.f_mm(x);
    }
    let out = Tensor::f_empty([w, w], (x.kind(), x.device()))?;
    let mut start = 0;
    while start < w {
        let width = GRAM_BLOCK.min(w - start);
        let rest = w - start;
        // (rows × width)ᵀ · (rows × rest): block row `start` from the
        // diagonal on; strided column views, no copies.
        let block = x
            .f_narrow(1, start, width)?
            .f_tr()?
            .f_mm(&x.f_narrow(1, start, rest)?)?;
        out.f_narrow(0, start, width)?
            .f_narrow(1, start, rest)?
            .f_copy_(&block)?;
        out.f_narrow(0, start, rest)?
            .f_narrow(1, start, width)?
            .f_copy_(&block.f_tr()?)?;
        start += width;
    }
    Ok(out)
}

/// `values` as a tensor of `shape` and `kind` on `device`.
fn on_device(values: &[f64], shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
    Tensor::f_from_slice(values)
        .and_then(|t| t.f_view(shape))
        .and_then(|t| t.f_to_device(device))
        .and_then(|t| t.f_to_kind(kind))
        .map_err(internal("copying a matrix to the device"))
}

/// A square `n × n` f64 matrix on `device`.
fn square(values: &[f64], n: usize, device: Device) -> Result<Tensor> {
    if values.len() != n * n {
        return Err(Error::invalid(format!(
            "expected a {n} x {n} matrix ({} values), got {} values",
            n * n,
            values.len()
        )));
    }
    on_device(values, &[n as i64, n as i64], Kind::Double, device)
}

/// The leading eigenpairs of a symmetric matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Eigen {
    /// The `k` largest eigenvalues, largest first.
    pub values: Vec<f64>,
    /// `n × k`, row-major: column `j` is the eigenvector of `values[j]`,
    /// its largest-magnitude entry positive (a fixed sign, so reruns and
    /// devices agree).
    pub vectors: Vec<f64>,
    /// The sum of all `n` eigenvalues (the trace).
    pub total: f64,
}

/// The `k` largest eigenpairs of the symmetric `n × n` matrix `a` (float64,
/// on `device`).
pub fn top_eigen(a: &[f64], n: usize, k: usize, device: Device) -> Result<Eigen> {
    if k == 0 || k > n {
        return Err(Error::invalid(format!(
            "k = {k} eigenpairs asked of a {n} x {n} matrix; k must be between 1 and {n}"
        )));
    }
    let t = square(a, n, device)?;
    let (w, v) = t
        .f_linalg_eigh("L")
        .map_err(internal("the symmetric eigendecomposition"))?;
    Ok(leading(&to_vec::<f64>(&w)?, &to_vec::<f64>(&v)?, n, k))
}

/// Rayleigh-Ritz, the last step of subspace iteration: for an orthonormal
/// `n × k` basis `V` and `Z = M V` (both row-major), the eigenpairs of the
/// `k × k` projection `Vᵀ Z`, with their vectors rotated back (`V U`).
/// `total` is the projection's trace.
pub fn ritz(v: &[f64], z: &[f64], n: usize, k: usize, device: Device) -> Result<Eigen> {
    if v.len() != n * k || z.len() != n * k || k == 0 {
        return Err(Error::invalid(format!(
            "ritz needs two {n} x {k} matrices; got {} and {} values",
            v.len(),
            z.len()
        )));
    }
    let (n64, k64) = (n as i64, k as i64);
    let tv = on_device(v, &[n64, k64], Kind::Double, device)?;
    let tz = on_device(z, &[n64, k64], Kind::Double, device)?;
    let (w, rotated) = tv
        .f_tr()
        .and_then(|vt| vt.f_mm(&tz))
        // Symmetrize: Vᵀ M V is symmetric but rounding leaves it slightly not.
        .and_then(|t| t.f_add(&t.f_tr()?)?.f_mul_scalar(0.5))
        .and_then(|t| t.f_linalg_eigh("L"))
        .and_then(|(w, u)| Ok((w, tv.f_mm(&u)?)))
        .map_err(internal("the Rayleigh-Ritz step"))?;
    Ok(leading(
        &to_vec::<f64>(&w)?,
        &to_vec::<f64>(&rotated)?,
        n,
        k,
    ))
}

/// The `k` largest of `m` ascending eigenvalues with their vectors (the
/// columns of the `n × m` row-major `vectors`), largest first, each vector
/// signed so that its largest-magnitude entry is positive.
fn leading(ascending: &[f64], vectors: &[f64], n: usize, k: usize) -> Eigen {
    let m = ascending.len();
    let mut values = Vec::with_capacity(k);
    let mut out = vec![0.0; n * k];
    for j in 0..k.min(m) {
        let col = m - 1 - j;
        values.push(ascending[col]);
        let column: Vec<f64> = (0..n).map(|i| vectors[i * m + col]).collect();
        let sign = sign_of_largest(&column);
        for i in 0..n {
            out[i * k + j] = sign * column[i];
        }
    }
    Eigen {
        values,
        vectors: out,
        total: ascending.iter().sum(),
    }
}

/// +1 or -1: the sign that makes `v`'s largest-magnitude entry positive
/// (the first such entry on ties).
fn sign_of_largest(v: &[f64]) -> f64 {
    let mut best = 0.0f64;
    for &x in v {
        if x.abs() > best.abs() {
            best = x;
        }
    }
    if best < 0.0 {
        -1.0
    } else {
        1.0
    }
}

/// An orthonormal basis of the columns of the `n × k` matrix `z`
/// (row-major), by a reduced QR on `device`.
pub fn orthonormalize(z: &[f64], n: usize, k: usize, device: Device) -> Result<Vec<f64>> {
    if z.len() != n * k || k == 0 || k > n {
        return Err(Error::invalid(format!(
            "orthonormalize needs an n x k matrix with 1 <= k <= n; got {} values for {n} x {k}",
            z.len()
        )));
    }
    let t = on_device(z, &[n as i64, k as i64], Kind::Double, device)?;
    let (q, _) = Tensor::f_linalg_qr(&t, "reduced").map_err(internal("the QR factorization"))?;
    to_vec::<f64>(&q)
}

/// What [`least_squares`] solves: the label column, whether to fit an
/// intercept, and the ridge penalty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeastSquaresOptions {
    /// Index of the label among the moments' columns; the others are the
    /// features, in order.
    pub label: usize,
    pub intercept: bool,
    /// λ in `(1/2n)‖y - Xβ - b‖² + (λ/2)‖β‖²` (the intercept is not
    /// penalized): the normal equations become `(XᵀX + nλI) β = Xᵀy`.
    pub ridge: f64,
}

/// A least-squares fit from the moments of `[X | y]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LeastSquares {
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    /// Standard errors of the coefficients, then the intercept's (when
    /// fitted), as Spark's `coefficientStandardErrors` orders them; empty
    /// when they are not defined (a ridge penalty, rank deficiency, or no
    /// residual degrees of freedom).
    pub standard_errors: Vec<f64>,
    /// The numerical rank of the (penalized) normal matrix.
    pub rank: usize,
    pub rows: u64,
    /// Residual sum of squares and the coefficient of determination.
    pub rss: f64,
    pub r2: f64,
}

/// Eigenvalues below this fraction of the largest count as zero when
/// solving the normal equations: forming `XᵀX` squares `X`'s condition
/// number, so this keeps directions whose singular value is within ~1e6 of
/// the largest, and solves the rest in the least-norm sense.
pub const RANK_TOLERANCE: f64 = 1e-12;

/// The minimum-norm pseudo-inverse `A⁺ = V diag(1/w) Vᵀ` of the symmetric
/// positive semi-definite `p × p` matrix `a`, over the eigenpairs whose
/// value is above [`RANK_TOLERANCE`] of the largest, and how many those
/// are (the numerical rank). The products run on `device`: a host loop
/// took 20 s for p = 2,048 here, the matmul under a second.
fn pseudo_inverse(a: &[f64], p: usize, device: Device) -> Result<(Vec<f64>, usize)> {
    let t = square(a, p, device)?;
    let (inverse, rank) = t
        .f_linalg_eigh("L")
        .and_then(|(w, v)| {
            // eigh's values ascend: the last is the largest.
            let largest = w.f_max()?.f_double_value(&[])?.max(0.0);
            let kept = w.f_gt(largest * RANK_TOLERANCE)?;
            let rank = kept.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            // where(), not a product with the mask: 1/0 would turn a dropped
            // direction into NaN.
            let scale = w.f_reciprocal()?.f_where_self(&kept, &w.f_zeros_like()?)?;
            let inverse = v.f_mul(&scale.f_unsqueeze(0)?)?.f_mm(&v.f_tr()?)?;
            Ok((inverse, rank))
        })
        .map_err(internal("the pseudo-inverse of the normal matrix"))?;
    Ok((to_vec::<f64>(&inverse)?, rank as usize))
}

/// Ordinary or ridge least squares through the normal equations, solved by
/// a symmetric eigendecomposition (on `device`): a rank-deficient system
/// gets the minimum-norm solution, and says its rank.
pub fn least_squares(
    m: &Moments,
    opts: LeastSquaresOptions,
    device: Device,
) -> Result<LeastSquares> {
    let w = m.width();
    if opts.label >= w {
        return Err(Error::invalid(format!(
            "label index {} is outside the {w} columns",
            opts.label
        )));
    }
    if !(opts.ridge >= 0.0 && opts.ridge.is_finite()) {
        return Err(Error::invalid(format!(
            "the ridge penalty must be finite and >= 0, got {}",
            opts.ridge
        )));
    }
    let n = m.rows as f64;
    if m.rows == 0 {
        return Err(Error::invalid("least squares needs at least one row"));
    }
    // Centered cross-products fit with an intercept; raw ones through the
    // origin.
    let cross = if opts.intercept {
        m.scatter.clone()
    } else {
        m.gramian()
    };
    let features: Vec<usize> = (0..w).filter(|&j| j != opts.label).collect();
    let p = features.len();
    let y = opts.label;
    let mut a = vec![0.0; p * p];
    let mut b = vec![0.0; p];
    for (i, &fi) in features.iter().enumerate() {
        for (j, &fj) in features.iter().enumerate() {
            a[i * p + j] = cross[fi * w + fj];
        }
        a[i * p + i] += n * opts.ridge;
        b[i] = cross[fi * w + y];
    }
    let yy = cross[y * w + y];
    let (coefficients, rank, inverse) = if p == 0 {
        (Vec::new(), 0, Vec::new())
    } else {
        let (inverse, rank) = pseudo_inverse(&a, p, device)?;
        let beta: Vec<f64> = (0..p)
            .map(|r| (0..p).map(|c| inverse[r * p + c] * b[c]).sum())
            .collect();
        (beta, rank, inverse)
    };
    let means: Vec<f64> = features.iter().map(|&f| m.mean[f]).collect();
    let intercept = if opts.intercept {
        m.mean[y]
            - coefficients
                .iter()
                .zip(&means)
                .map(|(c, x)| c * x)
                .sum::<f64>()
    } else {
        0.0
    };
    // RSS = yᵀy - 2βᵀXᵀy + βᵀXᵀXβ in the same (centered or raw) terms,
    // with the unpenalized XᵀX.
    let mut quad = 0.0;
    for (i, &fi) in features.iter().enumerate() {
        for (j, &fj) in features.iter().enumerate() {
            quad += coefficients[i] * cross[fi * w + fj] * coefficients[j];
        }
    }
    let linear: f64 = coefficients.iter().zip(&b).map(|(c, v)| c * v).sum();
    let rss = (yy - 2.0 * linear + quad).max(0.0);
    let total = if opts.intercept {
        m.scatter[y * w + y]
    } else {
        yy
    };
    let r2 = if total > 0.0 {
        1.0 - rss / total
    } else {
        f64::NAN
    };
    let dof = m.rows as i64 - p as i64 - i64::from(opts.intercept);
    let standard_errors = if opts.ridge == 0.0 && rank == p && p > 0 && dof > 0 {
        let sigma2 = rss / dof as f64;
        let mut se: Vec<f64> = (0..p)
            .map(|i| (sigma2 * inverse[i * p + i]).sqrt())
            .collect();
        if opts.intercept {
            let mut q = 0.0;
            for r in 0..p {
                for c in 0..p {
                    q += means[r] * inverse[r * p + c] * means[c];
                }
            }
            se.push((sigma2 * (1.0 / n + q)).sqrt());
        }
        se
    } else {
        Vec::new()
    };
    Ok(LeastSquares {
        coefficients,
        intercept,
        standard_errors,
        rank,
        rows: m.rows,
        rss,
        r2,
    })
}

#[cfg(test)]
mod tests;

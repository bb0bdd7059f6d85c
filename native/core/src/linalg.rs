//! The small results of matrix work on cached partitions, and how the
//! driver combines them.
//!
//! A server reduces each partition it holds to a result whose size depends
//! on the columns only: the row count, column means and the centered scatter
//! matrix `Σ (x - mean)(x - mean)ᵀ` ([`Moments`]), or an `n × k` product
//! ([`Product`]). Only these travel, as safetensors states of float64
//! tensors (the state format, so that one reader, one size limit and one
//! corruption check serve both). The driver folds them into one in
//! partition order ([`combine`]): float64 addition is not associative in its
//! last bits, and a fixed order is what makes a rerun give the same bits.
//!
//! Moments merge by Chan, Golub and LeVeque's pairwise update rather than
//! by summing raw Gramians: a Gramian minus `n · mean · meanᵀ` cancels
//! catastrophically when a column's mean is large next to its spread (a
//! constant column of 1e4 in float32 came out with a variance of ~1e1
//! instead of 0), while centered partial scatters merge without cancelling.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::state::{DType, State, StateMeta, TensorData};

/// `model_id` of serialized [`Moments`].
const MOMENTS_ID: &str = "stoker.linalg.moments";
/// `model_id` of a serialized [`Product`].
const PRODUCT_ID: &str = "stoker.linalg.product";
/// Metadata entry naming the columns (comma-separated).
const COLUMNS_META: &str = "columns";

/// Row count, column means and centered scatter of a set of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub rows: u64,
    /// The names of the columns, in order (a vector column's elements are
    /// `name[i]`).
    pub columns: Vec<String>,
    pub mean: Vec<f64>,
    /// `width × width`, row-major: `Σ (x - mean)(x - mean)ᵀ`.
    pub scatter: Vec<f64>,
}

impl Moments {
    pub fn width(&self) -> usize {
        self.mean.len()
    }

    /// Merges `other` in (Chan et al.'s pairwise update). Both must describe
    /// the same columns.
    pub fn merge(&mut self, other: &Moments) -> Result<()> {
        if other.columns != self.columns || other.width() != self.width() {
            return Err(Error::invalid(format!(
                "cannot combine moments of {} columns ({}) with moments of {} columns ({})",
                self.width(),
                self.columns.join(","),
                other.width(),
                other.columns.join(",")
            )));
        }
        if other.rows == 0 {
            return Ok(());
        }
        if self.rows == 0 {
            *self = other.clone();
            return Ok(());
        }
        let (na, nb) = (self.rows as f64, other.rows as f64);
        let n = na + nb;
        let delta: Vec<f64> = other
            .mean
            .iter()
            .zip(&self.mean)
            .map(|(b, a)| b - a)
            .collect();
        let scale = na * nb / n;
        let w = self.width();
        for i in 0..w {
            let di = delta[i] * scale;
            let row = &mut self.scatter[i * w..(i + 1) * w];
            let theirs = &other.scatter[i * w..(i + 1) * w];
            for j in 0..w {
                row[j] += theirs[j] + di * delta[j];
            }
        }
        for (m, d) in self.mean.iter_mut().zip(&delta) {
            *m += d * nb / n;
        }
        self.rows += other.rows;
        Ok(())
    }

    /// The sample covariance, `scatter / (rows - 1)`.
    pub fn covariance(&self) -> Result<Vec<f64>> {
        if self.rows < 2 {
            return Err(Error::invalid(format!(
                "a covariance needs at least 2 rows, the data has {}",
                self.rows
            )));
        }
        let d = (self.rows - 1) as f64;
        Ok(self.scatter.iter().map(|v| v / d).collect())
    }

    /// The uncentered Gramian `Σ x xᵀ = scatter + rows · mean · meanᵀ`.
    pub fn gramian(&self) -> Vec<f64> {
        let (w, n) = (self.width(), self.rows as f64);
        let mut g = self.scatter.clone();
        for i in 0..w {
            for j in 0..w {
                g[i * w + j] += n * self.mean[i] * self.mean[j];
            }
        }
        g
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let w = self.width();
        let state = State {
            meta: meta(MOMENTS_ID, self.rows, &self.columns),
            tensors: vec![
                f64_tensor("mean", vec![w], &self.mean),
                f64_tensor("scatter", vec![w, w], &self.scatter),
            ],
        };
        state.to_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Moments> {
        let state = read(bytes, MOMENTS_ID)?;
        let columns = columns(&state);
        let w = columns.len();
        let mean = tensor(&state, "mean", &[w])?;
        let scatter = tensor(&state, "scatter", &[w, w])?;
        Ok(Moments {
            rows: state.meta.samples,
            columns,
            mean,
            scatter,
        })
    }
}

/// A sum of per-partition `rows × k` products, such as `Σ (X - c)ᵀ (X - c) V`.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub rows: u64,
    pub columns: Vec<String>,
    /// `shape[0] × shape[1]`, row-major.
    pub shape: [usize; 2],
    pub values: Vec<f64>,
}

impl Product {
    pub fn merge(&mut self, other: &Product) -> Result<()> {
        if other.shape != self.shape || other.columns != self.columns {
            return Err(Error::invalid(format!(
                "cannot add a {:?} product to a {:?} product",
                other.shape, self.shape
            )));
        }
        for (a, b) in self.values.iter_mut().zip(&other.values) {
            *a += b;
        }
        self.rows += other.rows;
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        State {
            meta: meta(PRODUCT_ID, self.rows, &self.columns),
            tensors: vec![f64_tensor("product", self.shape.to_vec(), &self.values)],
        }
        .to_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Product> {
        let state = read(bytes, PRODUCT_ID)?;
        let t = state
            .tensor("product")
            .ok_or_else(|| Error::invalid("a matrix product has no 'product' tensor"))?;
        let [r, c] = t.shape[..] else {
            return Err(Error::invalid(format!(
                "a matrix product must be 2-d, got shape {:?}",
                t.shape
            )));
        };
        Ok(Product {
            rows: state.meta.samples,
            columns: columns(&state),
            shape: [r, c],
            values: t.to_f64(),
        })
    }
}

/// Folds the serialized result `b` into `a` ([`Moments`] or [`Product`],
/// by what `a` is), returning the combined bytes. The caller fixes the
/// order (partition order on the driver).
pub fn combine(a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
    let id = StateMeta::read(a)?.model_id;
    match id.as_str() {
        MOMENTS_ID => {
            let mut m = Moments::from_bytes(a)?;
            m.merge(&Moments::from_bytes(b)?)?;
            m.to_bytes()
        }
        PRODUCT_ID => {
            let mut p = Product::from_bytes(a)?;
            p.merge(&Product::from_bytes(b)?)?;
            p.to_bytes()
        }
        other => Err(Error::invalid(format!(
            "'{other}' is not a matrix result (moments or product) that can be combined"
        ))),
    }
}

/// Raw little-endian float64 values (how dense matrices travel as blobs).
pub fn decode_f64(bytes: &[u8], what: &str) -> Result<Vec<f64>> {
    if !bytes.len().is_multiple_of(8) {
        return Err(Error::invalid(format!(
            "{what} has {} bytes, not a whole number of float64 values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// `values` as raw little-endian float64.
pub fn encode_f64(values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 8);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn meta(id: &str, rows: u64, columns: &[String]) -> StateMeta {
    StateMeta {
        model_id: id.to_string(),
        round: 0,
        samples: rows,
        extra: BTreeMap::from([(COLUMNS_META.to_string(), columns.join(","))]),
    }
}

fn read(bytes: &[u8], id: &str) -> Result<State> {
    let state = State::from_bytes(bytes)?;
    if state.meta.model_id != id {
        return Err(Error::invalid(format!(
            "expected a '{id}' result, got '{}'",
            state.meta.model_id
        )));
    }
    Ok(state)
}

fn columns(state: &State) -> Vec<String> {
    match state.meta.extra.get(COLUMNS_META) {
        Some(c) if !c.is_empty() => c.split(',').map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn tensor(state: &State, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
    let t = state
        .tensor(name)
        .ok_or_else(|| Error::invalid(format!("matrix result has no '{name}' tensor")))?;
    if t.shape != shape {
        return Err(Error::invalid(format!(
            "matrix result tensor '{name}' has shape {:?}, its columns say {shape:?}",
            t.shape
        )));
    }
    Ok(t.to_f64())
}

fn f64_tensor(name: &str, shape: Vec<usize>, values: &[f64]) -> TensorData {
    TensorData {
        name: name.to_string(),
        dtype: DType::F64,
        shape,
        data: Bytes::from(encode_f64(values)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moments computed directly, for checking the merge.
    fn direct(rows: &[Vec<f64>]) -> Moments {
        let w = rows[0].len();
        let n = rows.len() as f64;
        let mean: Vec<f64> = (0..w)
            .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
            .collect();
        let mut scatter = vec![0.0; w * w];
        for r in rows {
            for i in 0..w {
                for j in 0..w {
                    scatter[i * w + j] += (r[i] - mean[i]) * (r[j] - mean[j]);
                }
            }
        }
        Moments {
            rows: rows.len() as u64,
            columns: (0..w).map(|j| format!("x[{j}]")).collect(),
            mean,
            scatter,
        }
    }

    fn rows() -> Vec<Vec<f64>> {
        (0..50)
            .map(|i| {
                let t = i as f64;
                vec![1e4 + (t * 0.37).sin(), 3.0 * t - 2.0, 7.5, (t * 1.3).cos()]
            })
            .collect()
    }

    #[test]
    fn merging_partitions_equals_the_whole() {
        let all = rows();
        let whole = direct(&all);
        let mut merged = direct(&all[..7]);
        merged.merge(&direct(&all[7..31])).unwrap();
        merged.merge(&direct(&all[31..])).unwrap();
        assert_eq!(merged.rows, 50);
        for (a, b) in merged.mean.iter().zip(&whole.mean) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
        }
        for (a, b) in merged.scatter.iter().zip(&whole.scatter) {
            assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
        }
        // The constant column has no spread at all, not a cancelled remainder.
        let w = 4;
        assert_eq!(merged.scatter[2 * w + 2], 0.0);
    }

    #[test]
    fn empty_moments_are_neutral_and_bytes_round_trip() {
        let all = rows();
        let part = direct(&all[..10]);
        let empty = Moments {
            rows: 0,
            columns: part.columns.clone(),
            mean: vec![0.0; 4],
            scatter: vec![0.0; 16],
        };
        let mut a = empty.clone();
        a.merge(&part).unwrap();
        a.merge(&empty).unwrap();
        assert_eq!(a, part);
        let bytes = combine(&part.to_bytes().unwrap(), &empty.to_bytes().unwrap()).unwrap();
        assert_eq!(Moments::from_bytes(&bytes).unwrap(), part);
    }

    #[test]
    fn gramian_and_covariance() {
        let all = rows();
        let m = direct(&all);
        let g = m.gramian();
        let raw: f64 = all.iter().map(|r| r[1] * r[3]).sum();
        assert!((g[4 + 3] - raw).abs() < 1e-9 * raw.abs().max(1.0));
        let c = m.covariance().unwrap();
        assert!((c[5] - m.scatter[5] / 49.0).abs() < 1e-12);
        let one = direct(&all[..1]);
        assert!(one.covariance().unwrap_err().to_string().contains("2 rows"));
    }

    #[test]
    fn products_add_and_mismatches_are_refused() {
        let p = Product {
            rows: 3,
            columns: vec!["a".into(), "b".into()],
            shape: [2, 1],
            values: vec![1.0, 2.0],
        };
        let sum = combine(&p.to_bytes().unwrap(), &p.to_bytes().unwrap()).unwrap();
        let sum = Product::from_bytes(&sum).unwrap();
        assert_eq!(sum.values, vec![2.0, 4.0]);
        assert_eq!(sum.rows, 6);
        let m = direct(&rows());
        let err = combine(&m.to_bytes().unwrap(), &p.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("expected a"), "{err}");
        let other = Moments {
            columns: vec!["z".into(); 4],
            ..m.clone()
        };
        let err = combine(&m.to_bytes().unwrap(), &other.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("cannot combine"), "{err}");
    }
}

//! The kernels and solves against closed forms: sums by hand, a diagonal
//! matrix, a noisy line and a duplicated column.

use super::*;
use arrow::array::{ArrayRef, Float64Array};
use std::sync::Arc;

fn batch(columns: &[(&str, Vec<f64>)]) -> RecordBatch {
    RecordBatch::try_from_iter(
        columns
            .iter()
            .map(|(n, v)| (*n, Arc::new(Float64Array::from(v.clone())) as ArrayRef)),
    )
    .unwrap()
}

fn layout(b: &RecordBatch, names: &[&str]) -> FeatureLayout {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    FeatureLayout::resolve(&b.schema(), &names, Some(b)).unwrap()
}

/// The moments of `names` in `b`, computed on the CPU in `precision`.
fn moments_of(b: &RecordBatch, names: &[&str], precision: Precision) -> Moments {
    let l = layout(b, names);
    Matrix::from_batches(std::slice::from_ref(b), &l, precision, Device::Cpu)
        .unwrap()
        .moments()
        .unwrap()
}

#[test]
fn moments_in_both_precisions_and_products() {
    let x1: Vec<f64> = (0..40).map(|i| 1e4 + (i as f64 * 0.3).sin()).collect();
    let x2: Vec<f64> = (0..40).map(|i| i as f64 * 0.5).collect();
    let c: Vec<f64> = vec![3.25; 40];
    let b = batch(&[("a", x1.clone()), ("b", x2.clone()), ("c", c)]);
    let l = layout(&b, &["a", "b", "c"]);
    let m64 = moments_of(&b, &["a", "b", "c"], Precision::Float64);
    let mean1 = x1.iter().sum::<f64>() / 40.0;
    assert!((m64.mean[0] - mean1).abs() < 1e-9);
    let s11: f64 = x1.iter().map(|v| (v - mean1).powi(2)).sum();
    assert!((m64.scatter[0] - s11).abs() < 1e-9 * s11);
    assert_eq!(m64.scatter[8], 0.0, "a constant column has no spread");
    assert_eq!(m64.columns, vec!["a", "b", "c"]);
    let m32 = moments_of(&b, &["a", "b", "c"], Precision::Float32);
    assert!((m32.scatter[4] - m64.scatter[4]).abs() < 1e-3 * m64.scatter[4]);
    assert_eq!(m32.scatter[8], 0.0);

    // The centered product with V = I is the scatter.
    let matrix = Matrix::from_batches(&[b], &l, Precision::Float64, Device::Cpu).unwrap();
    let eye = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let p = matrix.product(&m64.mean, &eye, 2).unwrap();
    assert_eq!(p.shape, [3, 2]);
    assert!((p.values[0] - m64.scatter[0]).abs() < 1e-9 * s11);
    assert!((p.values[3] - m64.scatter[4]).abs() < 1e-6);
    assert!(matrix.product(&m64.mean, &eye, 3).is_err());
}

#[test]
fn eigenpairs_are_sorted_and_signed() {
    // diag(1, 5, 3) rotated by nothing: eigenvectors are unit axes.
    let a = [1.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 3.0];
    let e = top_eigen(&a, 3, 2, Device::Cpu).unwrap();
    assert!((e.values[0] - 5.0).abs() < 1e-12 && (e.values[1] - 3.0).abs() < 1e-12);
    assert!((e.vectors[2] - 1.0).abs() < 1e-12, "{:?}", e.vectors);
    assert!((e.vectors[2 * 2 + 1] - 1.0).abs() < 1e-12);
    assert!((e.total - 9.0).abs() < 1e-12);
    assert!(top_eigen(&a, 3, 4, Device::Cpu).is_err());
    let q = orthonormalize(&[3.0, 1.0, 0.0, 2.0, 4.0, 0.0], 3, 2, Device::Cpu).unwrap();
    let dot: f64 = (0..3).map(|i| q[i * 2] * q[i * 2 + 1]).sum();
    assert!(dot.abs() < 1e-12);
}

#[test]
fn least_squares_recovers_a_line_and_reports_rank() {
    let x: Vec<f64> = (0..30).map(|i| i as f64).collect();
    let noise: Vec<f64> = (0..30).map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.01).collect();
    let y: Vec<f64> = x
        .iter()
        .zip(&noise)
        .map(|(x, e)| 2.0 * x - 1.0 + e)
        .collect();
    let dup = x.clone();
    let b = batch(&[("x", x), ("d", dup), ("y", y)]);
    let m = moments_of(&b, &["x", "y"], Precision::Float64);
    let opts = LeastSquaresOptions {
        label: 1,
        intercept: true,
        ridge: 0.0,
    };
    let fit = least_squares(&m, opts, Device::Cpu).unwrap();
    assert!((fit.coefficients[0] - 2.0).abs() < 1e-3, "{fit:?}");
    assert!((fit.intercept + 1.0).abs() < 1e-2, "{fit:?}");
    assert_eq!(fit.rank, 1);
    assert_eq!(fit.standard_errors.len(), 2);
    assert!(fit.r2 > 0.999);
    // Two identical columns: rank 1, the weight split evenly (least norm).
    let m2 = moments_of(&b, &["x", "d", "y"], Precision::Float64);
    let fit2 = least_squares(&m2, LeastSquaresOptions { label: 2, ..opts }, Device::Cpu).unwrap();
    assert_eq!(fit2.rank, 1);
    assert!((fit2.coefficients[0] - 1.0).abs() < 1e-3, "{fit2:?}");
    assert!((fit2.coefficients[1] - 1.0).abs() < 1e-3, "{fit2:?}");
    assert!(fit2.standard_errors.is_empty());
}

#[test]
fn the_blocked_gram_equals_a_full_product() {
    // 3 blocks, the last one narrow: every off-diagonal block and its mirror.
    let x = Tensor::randn([50, 2 * GRAM_BLOCK + 37], (Kind::Double, Device::Cpu));
    let full = x.tr().mm(&x);
    let blocked = symmetric_gram(&x).unwrap();
    let diff = f64::try_from((&blocked - &full).abs().max()).unwrap();
    let scale = f64::try_from(full.abs().max()).unwrap();
    assert!(diff <= 1e-12 * scale, "{diff} vs {scale}");
    let narrow = Tensor::randn([20, 7], (Kind::Float, Device::Cpu));
    let small = symmetric_gram(&narrow).unwrap();
    assert_eq!(small.size(), [7, 7]);
}

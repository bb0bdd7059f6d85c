//! `linalg`'s service side (docs/linalg.md): kernels on a matrix job's cached
//! partitions, and dense solves on the matrices a request carries, each on a
//! blocking thread. The arithmetic is the engine's (`stoker_engine::linalg`);
//! this module finds the partition, reads and writes blobs, and counts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use stoker_core::linalg::{decode_f64, encode_f64, Moments};
use stoker_core::protocol::{Envelope, Linalg, OnPartition};
use stoker_core::{Error, Result};
use stoker_engine::linalg::{self as la, Matrix};
use stoker_wire::outgoing::ActionResult;

use crate::actions::Blobs;
use crate::service::{blocking, Service};

/// A required blob, or an error naming the op and the blob.
fn blob(blobs: &Blobs, op: &str, name: &str) -> Result<bytes::Bytes> {
    blobs
        .get(name)
        .ok_or_else(|| Error::invalid(format!("linalg {op} needs a '{name}' blob")))
}

fn f64_blob(blobs: &Blobs, op: &str, name: &str) -> Result<Vec<f64>> {
    decode_f64(
        &blob(blobs, op, name)?,
        &format!("linalg {op}'s '{name}' blob"),
    )
}

fn reply(json: serde_json::Value, name: &str, bytes: Vec<u8>) -> Result<Vec<ActionResult>> {
    let out = Envelope::new(json)?.with_blob(name, bytes);
    Ok(vec![ActionResult::one(out.encode()?)])
}

impl Service {
    pub async fn linalg(self: Arc<Self>, req: Linalg, blobs: Blobs) -> Result<Vec<ActionResult>> {
        match req {
            Linalg::Moments(on) => self.kernel(on, |m| m.moments()?.to_bytes()).await,
            Linalg::Sums(on) => self.kernel(on, |m| m.sums()?.to_bytes()).await,
            Linalg::Product(req) => {
                let center = f64_blob(&blobs, "product", "center")?;
                let v = f64_blob(&blobs, "product", "v")?;
                let k = req.k;
                self.kernel(req.on(), move |m| m.product(&center, &v, k)?.to_bytes())
                    .await
            }
            solve => self.solve(solve, blobs).await,
        }
    }

    /// Runs `f` on the cached matrix of `on`'s partition; its bytes are the
    /// `result` blob. A missing job is `not_found` and a missing partition a
    /// `cache_miss`, as for `train_round`: the caller creates or sends it.
    async fn kernel(
        &self,
        on: OnPartition,
        f: impl FnOnce(Matrix) -> Result<Vec<u8>> + Send + 'static,
    ) -> Result<Vec<ActionResult>> {
        let job = self.jobs.get(&on.job)?;
        let key = on.key();
        let part = self.jobs.partition(&key)?;
        let matrix = job.matrix_of(&part)?;
        let rows = matrix.rows();
        let context = key.to_string();
        let bytes = blocking(move || f(matrix).map_err(|e| e.context(context))).await?;
        if on.release {
            self.jobs.release(&key);
        }
        self.counters.linalg_kernels.fetch_add(1, Ordering::Relaxed);
        reply(
            serde_json::json!({"job": on.job, "partition": on.partition, "rows": rows}),
            "result",
            bytes,
        )
    }

    /// A dense solve on this server's device.
    async fn solve(&self, req: Linalg, blobs: Blobs) -> Result<Vec<ActionResult>> {
        let device = self.device.resolve()?;
        let moments =
            |op: &str| -> Result<Moments> { Moments::from_bytes(&blob(&blobs, op, "moments")?) };
        let out = match req {
            Linalg::Eigen { k, gramian } => {
                let m = moments("eigen")?;
                let n = m.width();
                // The column means come back too: a PCA needs them, and asking
                // for them separately would send the n x n moments again.
                let mean = m.mean.clone();
                let e = blocking(move || {
                    let a = if gramian {
                        m.gramian()
                    } else {
                        m.covariance()?
                    };
                    la::top_eigen(&a, n, k, device)
                })
                .await?;
                reply(
                    serde_json::json!({
                        "n": n, "k": k, "values": e.values, "total": e.total, "mean": mean,
                    }),
                    "vectors",
                    encode_f64(&e.vectors),
                )
            }
            Linalg::Orthonormalize { n, k } => {
                let z = f64_blob(&blobs, "orthonormalize", "matrix")?;
                let q = blocking(move || la::orthonormalize(&z, n, k, device)).await?;
                reply(serde_json::json!({"n": n, "k": k}), "q", encode_f64(&q))
            }
            Linalg::Ritz { n, k } => {
                let v = f64_blob(&blobs, "ritz", "v")?;
                let z = f64_blob(&blobs, "ritz", "z")?;
                let e = blocking(move || la::ritz(&v, &z, n, k, device)).await?;
                reply(
                    serde_json::json!({"n": n, "k": k, "values": e.values, "total": e.total}),
                    "vectors",
                    encode_f64(&e.vectors),
                )
            }
            Linalg::LeastSquares {
                label,
                intercept,
                ridge,
            } => {
                let m = moments("least_squares")?;
                let opts = la::LeastSquaresOptions {
                    label,
                    intercept,
                    ridge,
                };
                let fit = blocking(move || la::least_squares(&m, opts, device)).await?;
                let json = serde_json::to_value(&fit)
                    .map_err(|e| Error::internal(format!("encoding JSON: {e}")))?;
                Ok(vec![ActionResult::one(Envelope::new(json)?.encode()?)])
            }
            Linalg::Matrix { of } => {
                let m = moments("matrix")?;
                let n = m.width();
                let values = match of.as_str() {
                    "gramian" => m.gramian(),
                    "covariance" => m.covariance()?,
                    "mean" => m.mean.clone(),
                    "variance" => {
                        let c = m.covariance()?;
                        (0..n).map(|i| c[i * n + i]).collect()
                    }
                    other => {
                        return Err(Error::invalid(format!(
                            "linalg matrix of '{other}': expected gramian, covariance, mean or variance"
                        )))
                    }
                };
                reply(
                    serde_json::json!({"n": n, "rows": m.rows, "columns": m.columns}),
                    "matrix",
                    encode_f64(&values),
                )
            }
            Linalg::Moments(_) | Linalg::Sums(_) | Linalg::Product(_) => {
                Err(Error::internal("a partition kernel reached the solver"))
            }
        };
        self.counters.linalg_solves.fetch_add(1, Ordering::Relaxed);
        out
    }
}

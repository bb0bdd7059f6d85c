package dev.stoker.spark

import dev.stoker.InvalidInputException
import org.apache.spark.ml.linalg.{DenseMatrix, DenseVector, Vectors}
import org.apache.spark.sql.Dataset
import org.json4s._

/**
 * Matrix statistics of a DataFrame's columns computed on the stoker servers
 * (docs/linalg.md): `columns` are numeric columns, or one Spark ML Vector / array
 * column. Results are float64 whatever `precision` the servers computed in. PySpark's
 * `stoker.linalg` calls these.
 */
object StokerLinalg {

  /** The Gramian `AᵀA` (n x n). */
  def gramian(dataset: Dataset[_], columns: Array[String], precision: String,
      serverAddress: String): DenseMatrix =
    square(dataset, columns, precision, serverAddress, "gramian")

  /** The sample covariance (n x n), as RowMatrix.computeCovariance. */
  def covariance(dataset: Dataset[_], columns: Array[String], precision: String,
      serverAddress: String): DenseMatrix =
    square(dataset, columns, precision, serverAddress, "covariance")

  /**
   * The `k` leading singular values of `A` (largest first) and right singular vectors
   * (n x k), as RowMatrix.computeSVD(k) without U; `method` exact (the Gramian's
   * eigendecomposition), randomized (subspace iteration, no n x n matrix) or auto.
   */
  def svd(dataset: Dataset[_], columns: Array[String], k: Int, precision: String,
      serverAddress: String, method: String): (DenseVector, DenseMatrix) = {
    val (job, width) = open(dataset, columns, precision, serverAddress, "stoker svd")
    if (k < 1 || k > width) {
      job.close()
      throw new InvalidInputException(s"svd: k = $k must be between 1 and $width columns")
    }
    val randomized = method match {
      case "exact" => false
      case "randomized" => true
      case "auto" => width > StokerPCA.ExactMaxColumns
      case other => job.close()
        throw new InvalidInputException(s"svd method '$other' is not exact, randomized or auto")
    }
    val (values, vectors) = try {
      if (randomized) {
        val found = Subspace.run(job, width, k, 10, 4, 0L, centered = false)
        (found.values, found.vectors)
      } else {
        val moments = job.pass("moments", last = true)
        val eigen = job.solve("eigen", List("k" -> JInt(k), "gramian" -> JBool(true)),
          Seq("moments" -> moments))
        (MatrixJob.numbers(eigen.json \ "values"), MatrixJob.doubles(eigen.blob("vectors").get))
      }
    } finally job.close()
    (Vectors.dense(values.map(v => math.sqrt(math.max(v, 0.0)))).toDense,
      rowMajor(width, k, vectors))
  }

  /** Row-major values as a Spark matrix. */
  private def rowMajor(rows: Int, cols: Int, values: Array[Double]): DenseMatrix =
    new DenseMatrix(rows, cols, values, true).toDense

  private def open(dataset: Dataset[_], columns: Array[String], precision: String,
      serverAddress: String, what: String): (MatrixJob, Int) = {
    if (columns.isEmpty) throw new InvalidInputException(s"$what: name at least one column")
    val numeric = columns.length > 1 || dataset.schema.find(_.name == columns.head)
      .exists(_.dataType.isInstanceOf[org.apache.spark.sql.types.NumericType])
    val (cols, names) =
      if (numeric) Features.columns(dataset.schema, columns, "", precision)
      else Features.columns(dataset.schema, Array.empty, columns.head, precision)
    val width = Features.width(dataset, cols, names)
    (new MatrixJob(dataset, cols, names, precision, ServerTarget.fromConf(serverAddress), what),
      width)
  }

  private def square(dataset: Dataset[_], columns: Array[String], precision: String,
      serverAddress: String, of: String): DenseMatrix = {
    val (job, _) = open(dataset, columns, precision, serverAddress, s"stoker $of")
    val result = try {
      val moments = job.pass("moments", last = true)
      job.solve("matrix", List("of" -> JString(of)), Seq("moments" -> moments))
    } finally job.close()
    val n = Envelope.number(result.json \ "n").toInt
    rowMajor(n, n, MatrixJob.doubles(result.blob("matrix").get))
  }
}

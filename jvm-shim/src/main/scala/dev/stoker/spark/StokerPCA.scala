package dev.stoker.spark

import dev.stoker.InvalidInputException
import org.apache.hadoop.fs.Path
import org.apache.spark.ml.{Estimator, Model}
import org.apache.spark.ml.linalg.{DenseMatrix, DenseVector, SQLDataTypes, Vector, Vectors}
import org.apache.spark.ml.param._
import org.apache.spark.ml.stoker.ParamsIO
import org.apache.spark.ml.util._
import org.apache.spark.sql.{DataFrame, Dataset, SparkSession}
import org.apache.spark.sql.functions.udf
import org.apache.spark.sql.types.{StructField, StructType}
import org.json4s._

/** Params shared by the matrix estimators and their models (docs/linalg.md). */
trait MatrixParams extends Params {
  final val precision: Param[String] = new Param[String](this, "precision",
    "what the servers cache and compute the matrix in: float64 or float32 " +
      "(results are float64 either way)",
    ParamValidators.inArray(Array("float32", "float64")))
  final val serverAddress: Param[String] = new Param[String](this, "serverAddress",
    "stoker server: grpc://host:port, a per-host map, or empty for auto-started servers")

  setDefault(precision -> "float64", serverAddress -> "")

  def getPrecision: String = $(precision)
  def getServerAddress: String = $(serverAddress)

  private[spark] def target: ServerTarget = ServerTarget.fromConf($(serverAddress))
}

/** PCA's params. */
trait PCAParams extends MatrixParams {
  final val inputCol: Param[String] = new Param[String](this, "inputCol",
    "input column: a Spark ML Vector or an array of numbers (or set inputCols)")
  final val inputCols: StringArrayParam = new StringArrayParam(this, "inputCols",
    "numeric input columns, used instead of inputCol when set")
  final val outputCol: Param[String] = new Param[String](this, "outputCol",
    "output column: the projection onto the k components (a Vector)")
  final val k: IntParam = new IntParam(this, "k", "number of principal components (>= 1)",
    ParamValidators.gtEq(1))
  final val method: Param[String] = new Param[String](this, "method",
    "exact (eigendecomposition of the covariance, n x n), randomized (subspace iteration " +
      "with n x (k + oversampling) products, no n x n matrix), or auto: exact up to " +
      s"${StokerPCA.ExactMaxColumns} columns",
    ParamValidators.inArray(Array("auto", "exact", "randomized")))
  final val powerIterations: IntParam = new IntParam(this, "powerIterations",
    "randomized: subspace iterations (each one pass over the cached data)",
    ParamValidators.gtEq(1))
  final val oversampling: IntParam = new IntParam(this, "oversampling",
    "randomized: extra basis vectors beyond k", ParamValidators.gtEq(0))
  final val seed: LongParam = new LongParam(this, "seed", "randomized: the start basis's seed")
  final val centerOutput: BooleanParam = new BooleanParam(this, "centerOutput",
    "subtract the column means before projecting (Spark ML's PCAModel does not; " +
      "scikit-learn does)")

  setDefault(inputCol -> "features", inputCols -> Array.empty[String],
    outputCol -> "pca_features", method -> "auto", powerIterations -> 4,
    oversampling -> 10, seed -> 0L, centerOutput -> false)

  def getInputCol: String = $(inputCol)
  def getInputCols: Array[String] = $(inputCols)

  def getOutputCol: String = $(outputCol)
  def getK: Int = $(k)
  def getMethod: String = $(method)
  def getPowerIterations: Int = $(powerIterations)
  def getOversampling: Int = $(oversampling)
  def getSeed: Long = $(seed)
  def getCenterOutput: Boolean = $(centerOutput)

  /** The input columns as a matrix job sends them, and their names. */
  private[spark] def inputColumns(schema: StructType) =
    Features.columns(schema, $(inputCols), $(inputCol), $(precision))
}

/**
 * Principal components on the stoker servers (docs/linalg.md): each partition's moments
 * (mean and centered scatter) are computed where the partition is cached, on the
 * server's device, combined on the driver in partition order, and the covariance's
 * leading eigenvectors found on the driver node's server. Mirrors Spark ML's `PCA`:
 * the same components (up to sign; stoker makes each component's largest entry
 * positive), the same explained variance, and by default the same uncentered projection.
 */
class StokerPCA(override val uid: String) extends Estimator[StokerPCAModel] with PCAParams
  with DefaultParamsWritable {

  def this() = this(Identifiable.randomUID("stokerPCA"))

  def setInputCol(value: String): this.type = set(inputCol, value)
  def setInputCols(value: Array[String]): this.type = set(inputCols, value)
  def setOutputCol(value: String): this.type = set(outputCol, value)
  def setK(value: Int): this.type = set(k, value)
  def setMethod(value: String): this.type = set(method, value)
  def setPrecision(value: String): this.type = set(precision, value)
  def setPowerIterations(value: Int): this.type = set(powerIterations, value)
  def setOversampling(value: Int): this.type = set(oversampling, value)
  def setSeed(value: Long): this.type = set(seed, value)
  def setCenterOutput(value: Boolean): this.type = set(centerOutput, value)
  def setServerAddress(value: String): this.type = set(serverAddress, value)

  override def fit(dataset: Dataset[_]): StokerPCAModel = {
    if (!isSet(k)) throw new InvalidInputException("StokerPCA needs k (setK)")
    transformSchema(dataset.schema)
    val (columns, names) = inputColumns(dataset.schema)
    val width = Features.width(dataset, columns, names)
    if ($(k) > width) {
      throw new InvalidInputException(
        s"k = ${$(k)} components asked of $width columns; k must be at most $width")
    }
    val randomized = $(method) match {
      case "exact" => false
      case "randomized" => true
      case _ => width > StokerPCA.ExactMaxColumns
    }
    val job = new MatrixJob(dataset, columns, names, $(precision), target, "StokerPCA")
    val (pc, variance, mean) = try {
      if (randomized) Subspace.pca(job, width, $(k), $(oversampling), $(powerIterations),
        $(seed))
      else {
        val moments = job.pass("moments", last = true)
        val eigen = job.solve("eigen", List("k" -> JInt($(k))), Seq("moments" -> moments))
        val mean = MatrixJob.numbers(eigen.json \ "mean")
        val values = MatrixJob.numbers(eigen.json \ "values")
        val total = Envelope.number(eigen.json \ "total")
        (MatrixJob.doubles(eigen.blob("vectors").get), values.map(_ / total), mean)
      }
    } finally job.close()
    // Row-major n x k from the server; Spark's DenseMatrix is column-major.
    val matrix = new DenseMatrix(width, $(k), pc, true).toDense
    val model = new StokerPCAModel(uid, new DenseMatrix(width, $(k), matrix.toArray),
      Vectors.dense(variance).toDense, Vectors.dense(mean).toDense)
    copyValues(model.setParent(this))
  }

  override def transformSchema(schema: StructType): StructType =
    StokerPCA.outputSchema(schema, $(outputCol))

  override def copy(extra: ParamMap): StokerPCA = defaultCopy(extra)
}

object StokerPCA extends DefaultParamsReadable[StokerPCA] {
  /** `auto` computes exactly (an n x n covariance per partition result) up to this many
   *  columns: 4096 columns is a 128 MiB float64 matrix. */
  val ExactMaxColumns = 4096

  override def load(path: String): StokerPCA = super.load(path)

  private[spark] def outputSchema(schema: StructType, output: String): StructType = {
    if (schema.fieldNames.contains(output)) {
      throw new InvalidInputException(s"output column '$output' already exists")
    }
    StructType(schema.fields :+ StructField(output, SQLDataTypes.VectorType, nullable = true))
  }
}

/**
 * A fitted [[StokerPCA]]: `pc` (n x k, the components as columns), `explainedVariance`
 * (each component's share of the total variance) and the column `mean`. `transform`
 * projects each row onto the components in the JVM (an n x k product per row, as Spark
 * ML's PCAModel does).
 */
class StokerPCAModel private[spark] (override val uid: String, val pc: DenseMatrix,
    val explainedVariance: DenseVector, val mean: DenseVector)
  extends Model[StokerPCAModel] with PCAParams with MLWritable {

  def setOutputCol(value: String): this.type = set(outputCol, value)
  def setCenterOutput(value: Boolean): this.type = set(centerOutput, value)

  override def transform(dataset: Dataset[_]): DataFrame = {
    transformSchema(dataset.schema)
    val (columns, names) = inputColumns(dataset.schema)
    val n = pc.numRows
    val components = pc.transpose
    val center = if ($(centerOutput)) Some(mean.toArray) else None
    val project = udf { (row: org.apache.spark.sql.Row) =>
      val x = new Array[Double](n)
      var at = 0
      for (i <- 0 until row.length) row.get(i) match {
        case null => throw new InvalidInputException(
          s"input column '${names(i)}' has a null; fill or drop nulls before transform")
        case v: Number => x(at) = v.doubleValue(); at += 1
        case s: scala.collection.Seq[_] =>
          s.foreach { e => x(at) = e.asInstanceOf[Number].doubleValue(); at += 1 }
        case v: Vector => v.foreachActive((j, value) => x(at + j) = value); at += v.size
        case other => throw new InvalidInputException(
          s"input column '${names(i)}' holds ${other.getClass.getSimpleName}, not numbers")
      }
      if (at != n) {
        throw new InvalidInputException(s"a row has $at input values, the model $n")
      }
      center.foreach(c => for (j <- 0 until n) x(j) -= c(j))
      components.multiply(Vectors.dense(x)): Vector
    }
    val struct = org.apache.spark.sql.functions.struct(columns: _*)
    dataset.withColumn($(outputCol), project(struct))
  }

  override def transformSchema(schema: StructType): StructType =
    StokerPCA.outputSchema(schema, $(outputCol))

  override def copy(extra: ParamMap): StokerPCAModel =
    copyValues(new StokerPCAModel(uid, pc, explainedVariance, mean), extra).setParent(parent)

  override def write: MLWriter = new StokerPCAModel.Writer(this)
}

object StokerPCAModel extends MLReadable[StokerPCAModel] {
  private final case class Data(pc: org.apache.spark.ml.linalg.Matrix,
      explainedVariance: Vector, mean: Vector)

  private class Writer(model: StokerPCAModel) extends MLWriter {
    override protected def saveImpl(path: String): Unit = {
      ParamsIO.saveMetadata(model, path, sparkSession)
      val data = Data(model.pc, model.explainedVariance, model.mean)
      sparkSession.createDataFrame(Seq(data)).repartition(1)
        .write.parquet(new Path(path, "data").toString)
    }
  }

  override def read: MLReader[StokerPCAModel] = new MLReader[StokerPCAModel] {
    override def load(path: String): StokerPCAModel = {
      val spark = SparkSession.active
      val row = spark.read.parquet(new Path(path, "data").toString)
        .select("pc", "explainedVariance", "mean").head()
      val model = new StokerPCAModel(
        ParamsIO.uid(path, spark, classOf[StokerPCAModel].getName),
        row.getAs[org.apache.spark.ml.linalg.Matrix](0).toDense,
        row.getAs[Vector](1).toDense, row.getAs[Vector](2).toDense)
      ParamsIO.loadInto(model, path, spark, classOf[StokerPCAModel].getName)
      model
    }
  }

  override def load(path: String): StokerPCAModel = super.load(path)
}

/**
 * Randomized PCA by subspace iteration (Halko, Martinsson and Tropp 2011, algorithm
 * 4.4): a seeded Gaussian start basis of k + oversampling columns, `iterations` passes
 * of `Z = S V` (S the centered scatter, applied per partition as `(X - m)ᵀ(X - m)V`,
 * never formed) each followed by a QR, then Rayleigh-Ritz on the last pass. Each pass
 * moves n x (k + p) values per partition; nothing n x n exists anywhere.
 */
private[spark] object Subspace {

  /** What a run found: the leading `k` eigenvalues of the centered scatter (or the
   *  Gramian) with their vectors (n x k, row-major), the column means and the rows. */
  final case class Found(values: Array[Double], vectors: Array[Double], mean: Array[Double],
      totalVariance: Double, rows: Double)

  def run(job: MatrixJob, n: Int, k: Int, oversampling: Int, iterations: Int, seed: Long,
      centered: Boolean): Found = {
    val sums = dev.stoker.jni.NativeBridge.linalgValues(job.pass("sums"))
    val rows = sums.last
    if (rows < 2) throw new InvalidInputException(
      s"this needs at least 2 rows, the data has ${rows.toLong}")
    val mean = Array.tabulate(n)(j => sums(2 * j) / rows)
    // Total variance (explained ratios' denominator) from the float64 sums.
    val total = (0 until n).map { j =>
      (sums(2 * j + 1) - rows * mean(j) * mean(j)) / (rows - 1)
    }.sum
    val l = math.min(n, k + oversampling)
    val random = new java.util.Random(seed)
    var v = orthonormalize(job, Array.fill(n * l)(random.nextGaussian()), n, l)
    val center = "center" -> MatrixJob.bytes(if (centered) mean else new Array[Double](n))
    def product(basis: Array[Double], last: Boolean): Array[Double] = {
      val values = dev.stoker.jni.NativeBridge.linalgValues(job.pass("product",
        List("k" -> JInt(l)), Seq(center, "v" -> MatrixJob.bytes(basis)), last))
      values.take(n * l)
    }
    for (_ <- 1 until iterations) v = orthonormalize(job, product(v, last = false), n, l)
    val z = product(v, last = true)
    val ritz = job.solve("ritz", List("n" -> JInt(n), "k" -> JInt(l)),
      Seq("v" -> MatrixJob.bytes(v), "z" -> MatrixJob.bytes(z)))
    val vectors = MatrixJob.doubles(ritz.blob("vectors").get)
    Found(MatrixJob.numbers(ritz.json \ "values").take(k),
      Array.tabulate(n * k)(i => vectors((i / k) * l + i % k)), mean, total, rows)
  }

  /** Components (n x k row-major), explained variance ratios, column means. */
  def pca(job: MatrixJob, n: Int, k: Int, oversampling: Int, iterations: Int,
      seed: Long): (Array[Double], Array[Double], Array[Double]) = {
    val found = run(job, n, k, oversampling, iterations, seed, centered = true)
    (found.vectors, found.values.map(_ / (found.rows - 1) / found.totalVariance), found.mean)
  }

  private def orthonormalize(job: MatrixJob, z: Array[Double], n: Int, l: Int) =
    MatrixJob.doubles(job.solve("orthonormalize", List("n" -> JInt(n), "k" -> JInt(l)),
      Seq("matrix" -> MatrixJob.bytes(z))).blob("q").get)
}

package dev.stoker.spark

import dev.stoker.InvalidInputException
import org.apache.hadoop.fs.Path
import org.apache.spark.ml.{Estimator, Model}
import org.apache.spark.ml.linalg.{DenseVector, Vector, Vectors}
import org.apache.spark.ml.param._
import org.apache.spark.ml.stoker.ParamsIO
import org.apache.spark.ml.util._
import org.apache.spark.sql.{DataFrame, Dataset, SparkSession}
import org.apache.spark.sql.functions.udf
import org.apache.spark.sql.types.{DoubleType, StructField, StructType}
import org.json4s._

/** Least squares' params (the names Spark ML's LinearRegression uses). */
trait LeastSquaresParams extends MatrixParams {
  final val featuresCol: Param[String] = new Param[String](this, "featuresCol",
    "features column: a Spark ML Vector or an array of numbers (or set featureCols)")
  final val featureCols: StringArrayParam = new StringArrayParam(this, "featureCols",
    "numeric feature columns, used instead of featuresCol when set")
  final val labelCol: Param[String] = new Param[String](this, "labelCol", "label column")
  final val predictionCol: Param[String] = new Param[String](this, "predictionCol",
    "prediction column (double)")
  final val fitIntercept: BooleanParam = new BooleanParam(this, "fitIntercept",
    "fit an intercept (not penalized by regParam)")
  final val regParam: DoubleParam = new DoubleParam(this, "regParam",
    "ridge penalty λ of (1/2n)‖y - Xβ - b‖² + (λ/2)‖β‖², on the features as they are " +
      "(not standardized)", ParamValidators.gtEq(0.0))

  setDefault(featuresCol -> "features", featureCols -> Array.empty[String],
    labelCol -> "label", predictionCol -> "prediction", fitIntercept -> true,
    regParam -> 0.0)

  def getFeaturesCol: String = $(featuresCol)
  def getFeatureCols: Array[String] = $(featureCols)
  def getLabelCol: String = $(labelCol)
  def getPredictionCol: String = $(predictionCol)
  def getFitIntercept: Boolean = $(fitIntercept)
  def getRegParam: Double = $(regParam)

  private[spark] def featureColumns(schema: StructType) =
    Features.columns(schema, $(featureCols), $(featuresCol), $(precision))
}

/**
 * Ordinary and ridge least squares on the stoker servers (docs/linalg.md): the moments
 * of `[label | features]` are computed per partition on the servers' devices and
 * combined on the driver in partition order, and the normal equations solved on the
 * driver node's server by a symmetric eigendecomposition, so rank-deficient data gets
 * the minimum-norm solution (and says its rank) instead of failing. Equals Spark ML's
 * `LinearRegression(solver = "normal")` without regularization, with the same
 * coefficient standard errors.
 */
class StokerLinearRegression(override val uid: String)
  extends Estimator[StokerLinearRegressionModel] with LeastSquaresParams
  with DefaultParamsWritable {

  def this() = this(Identifiable.randomUID("stokerLinReg"))

  def setFeaturesCol(value: String): this.type = set(featuresCol, value)
  def setFeatureCols(value: Array[String]): this.type = set(featureCols, value)
  def setLabelCol(value: String): this.type = set(labelCol, value)
  def setPredictionCol(value: String): this.type = set(predictionCol, value)
  def setFitIntercept(value: Boolean): this.type = set(fitIntercept, value)
  def setRegParam(value: Double): this.type = set(regParam, value)
  def setPrecision(value: String): this.type = set(precision, value)
  def setServerAddress(value: String): this.type = set(serverAddress, value)

  override def fit(dataset: Dataset[_]): StokerLinearRegressionModel = {
    transformSchema(dataset.schema)
    val (features, names) = featureColumns(dataset.schema)
    if (names.contains($(labelCol))) {
      throw new InvalidInputException(s"column '${$(labelCol)}' is both a feature and the label")
    }
    val label = Features.label(dataset.schema, $(labelCol))
    // The label first: its index is 0 however wide the feature vector turns out.
    val job = new MatrixJob(dataset, label +: features, $(labelCol) +: names, $(precision),
      target, "StokerLinearRegression")
    val fit = try {
      val moments = job.pass("moments", last = true)
      job.solve("least_squares", List("label" -> JInt(0),
        "intercept" -> JBool($(fitIntercept)), "ridge" -> JDouble($(regParam))),
        Seq("moments" -> moments)).json
    } finally job.close()
    val coefficients = MatrixJob.numbers(fit \ "coefficients")
    val errors = MatrixJob.numbers(fit \ "standard_errors")
    val model = new StokerLinearRegressionModel(uid, Vectors.dense(coefficients).toDense,
      Envelope.number(fit \ "intercept"),
      LeastSquaresSummary(
        rows = Envelope.number(fit \ "rows").toLong,
        rank = Envelope.number(fit \ "rank").toInt,
        rss = Envelope.number(fit \ "rss"),
        r2 = Envelope.number(fit \ "r2"),
        coefficientStandardErrors = errors))
    copyValues(model.setParent(this))
  }

  override def transformSchema(schema: StructType): StructType =
    StokerLinearRegression.outputSchema(schema, $(predictionCol))

  override def copy(extra: ParamMap): StokerLinearRegression = defaultCopy(extra)
}

object StokerLinearRegression extends DefaultParamsReadable[StokerLinearRegression] {
  override def load(path: String): StokerLinearRegression = super.load(path)

  private[spark] def outputSchema(schema: StructType, output: String): StructType = {
    if (schema.fieldNames.contains(output)) {
      throw new InvalidInputException(s"prediction column '$output' already exists")
    }
    StructType(schema.fields :+ StructField(output, DoubleType, nullable = true))
  }
}

/**
 * What a least-squares fit reports besides its coefficients. `coefficientStandardErrors`
 * holds the coefficients' standard errors, then the intercept's (Spark ML's order);
 * it is empty where they are undefined (regParam > 0, rank deficiency, no residual
 * degrees of freedom).
 */
final case class LeastSquaresSummary(rows: Long, rank: Int, rss: Double, r2: Double,
    coefficientStandardErrors: Array[Double]) {
  def meanSquaredError: Double = rss / rows
  def rootMeanSquaredError: Double = math.sqrt(meanSquaredError)
}

/** A fitted [[StokerLinearRegression]]: `prediction = coefficients · x + intercept`. */
class StokerLinearRegressionModel private[spark] (override val uid: String,
    val coefficients: DenseVector, val intercept: Double, val summary: LeastSquaresSummary)
  extends Model[StokerLinearRegressionModel] with LeastSquaresParams with MLWritable {

  def setPredictionCol(value: String): this.type = set(predictionCol, value)

  /** The coefficients' t statistics (then the intercept's), where standard errors exist. */
  def tValues: Array[Double] = {
    val estimates = coefficients.toArray ++ (if ($(fitIntercept)) Array(intercept) else Array())
    summary.coefficientStandardErrors.zip(estimates).map { case (se, b) => b / se }
  }

  override def transform(dataset: Dataset[_]): DataFrame = {
    transformSchema(dataset.schema)
    val (columns, names) = featureColumns(dataset.schema)
    val beta = coefficients.toArray
    val b0 = intercept
    val predict = udf { (row: org.apache.spark.sql.Row) =>
      var sum = b0
      var at = 0
      for (i <- 0 until row.length) row.get(i) match {
        case null => throw new InvalidInputException(
          s"feature column '${names(i)}' has a null; fill or drop nulls before transform")
        case v: Number => sum += beta(at) * v.doubleValue(); at += 1
        case s: scala.collection.Seq[_] =>
          s.foreach { e => sum += beta(at) * e.asInstanceOf[Number].doubleValue(); at += 1 }
        case other => throw new InvalidInputException(
          s"feature column '${names(i)}' holds ${other.getClass.getSimpleName}, not numbers")
      }
      if (at != beta.length) {
        throw new InvalidInputException(s"a row has $at features, the model ${beta.length}")
      }
      sum
    }
    dataset.withColumn($(predictionCol),
      predict(org.apache.spark.sql.functions.struct(columns: _*)))
  }

  override def transformSchema(schema: StructType): StructType =
    StokerLinearRegression.outputSchema(schema, $(predictionCol))

  override def copy(extra: ParamMap): StokerLinearRegressionModel =
    copyValues(new StokerLinearRegressionModel(uid, coefficients, intercept, summary), extra)
      .setParent(parent)

  override def write: MLWriter = new StokerLinearRegressionModel.Writer(this)
}

object StokerLinearRegressionModel extends MLReadable[StokerLinearRegressionModel] {
  private final case class Data(coefficients: Vector, intercept: Double, rows: Long,
      rank: Int, rss: Double, r2: Double, standardErrors: Array[Double])

  private class Writer(model: StokerLinearRegressionModel) extends MLWriter {
    override protected def saveImpl(path: String): Unit = {
      ParamsIO.saveMetadata(model, path, sparkSession)
      val s = model.summary
      val data = Data(model.coefficients, model.intercept, s.rows, s.rank, s.rss, s.r2,
        s.coefficientStandardErrors)
      sparkSession.createDataFrame(Seq(data)).repartition(1)
        .write.parquet(new Path(path, "data").toString)
    }
  }

  override def read: MLReader[StokerLinearRegressionModel] =
    new MLReader[StokerLinearRegressionModel] {
      override def load(path: String): StokerLinearRegressionModel = {
        val spark = SparkSession.active
        val r = spark.read.parquet(new Path(path, "data").toString).select("coefficients",
          "intercept", "rows", "rank", "rss", "r2", "standardErrors").head()
        val name = classOf[StokerLinearRegressionModel].getName
        val model = new StokerLinearRegressionModel(ParamsIO.uid(path, spark, name),
          r.getAs[Vector](0).toDense, r.getDouble(1),
          LeastSquaresSummary(r.getLong(2), r.getInt(3), r.getDouble(4), r.getDouble(5),
            r.getSeq[Double](6).toArray))
        ParamsIO.loadInto(model, path, spark, name)
        model
      }
    }

  override def load(path: String): StokerLinearRegressionModel = super.load(path)
}

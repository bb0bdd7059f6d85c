package dev.stoker.spark

import java.nio.charset.StandardCharsets.UTF_8

import dev.stoker.InvalidInputException
import org.apache.hadoop.fs.Path
import org.apache.spark.ml.{Estimator, Model}
import org.apache.spark.ml.param._
import org.apache.spark.ml.stoker.ParamsIO
import org.apache.spark.ml.util._
import org.apache.spark.sql.{DataFrame, Dataset, Row, SparkSession}
import org.apache.spark.sql.types._

/** The params of [[StokerTuner]] and [[StokerTunerModel]] (docs/tuning.md). */
trait StokerTunerParams extends Params {
  final val space: Param[String] = new Param[String](this, "space",
    "the search space as JSON: {param: {grid|choice: [...]} | {uniform|log_uniform|" +
      "int_range: [low, high]} | value}, model.KEY for a key of a JSON model spec; or an " +
      "array of configurations (setEstimatorParamMaps)")

  final val numTrials: IntParam = new IntParam(this, "numTrials",
    "configurations drawn from a random space (a grid tries every combination)",
    Valid.atLeast("numTrials", 1))

  final val maxRounds: IntParam = new IntParam(this, "maxRounds",
    "rounds of the trials that go furthest (the top rung)", Valid.atLeast("maxRounds", 1))

  final val minRounds: IntParam = new IntParam(this, "minRounds",
    "ASHA: rounds every trial trains before its first comparison (rung 0)",
    Valid.atLeast("minRounds", 1))

  final val reductionFactor: IntParam = new IntParam(this, "reductionFactor",
    "ASHA: eta; rungs are minRounds·eta^k rounds apart and each promotes its top 1/eta",
    Valid.atLeast("reductionFactor", 2))

  final val scheduler: Param[String] = new Param[String](this, "scheduler",
    "asha (stop low performers early) or none (every trial trains maxRounds: plain grid " +
      "or random search)", Valid.oneOf("scheduler", "asha", "none"))

  final val parallelism: IntParam = new IntParam(this, "parallelism",
    "trials training at once (each holds a model per partition on the node servers)",
    Valid.atLeast("parallelism", 1))

  final val timeoutSeconds: DoubleParam = new DoubleParam(this, "timeoutSeconds",
    "wall-time budget: no trial step starts after it (running ones finish); 0: none",
    Valid.atLeast("timeoutSeconds", 0.0))

  final val tunerSeed: LongParam = new LongParam(this, "tunerSeed",
    "seed of the random space's draws (the trials' own seed is the estimator's)",
    Valid.atLeast("tunerSeed", 0L))

  final val tunerMetric: Param[String] = new Param[String](this, "tunerMetric",
    "validation metric the trials are ranked by (as evalMetric); empty: the estimator's " +
      "evalMetric, else loss",
    Valid.oneOf("tunerMetric", "" +: Validation.Metrics: _*))

  setDefault(space -> "", numTrials -> 16, maxRounds -> 9, minRounds -> 1,
    reductionFactor -> 3, scheduler -> "asha", parallelism -> 2, timeoutSeconds -> 0.0,
    tunerSeed -> 0L, tunerMetric -> "")

  def getSpace: String = $(space)
  def getNumTrials: Int = $(numTrials)
  def getMaxRounds: Int = $(maxRounds)
  def getMinRounds: Int = $(minRounds)
  def getReductionFactor: Int = $(reductionFactor)
  def getScheduler: String = $(scheduler)
  def getParallelism: Int = $(parallelism)
  def getTimeoutSeconds: Double = $(timeoutSeconds)
  def getTunerSeed: Long = $(tunerSeed)
  def getTunerMetric: String = $(tunerMetric)
}

/**
 * Hyperparameter search over a [[StokerEstimator]] on the node servers (docs/tuning.md):
 * the data is sent to each server once, and every trial is a job training on that one
 * cached copy, several at once, scored on the validation split each round; ASHA stops
 * the low performers early.
 *
 * {{{
 * val tuned = new StokerTuner().setEstimator(estimator)
 *   .setSpace("""{"learningRate": {"log_uniform": [1e-4, 0.1]},
 *                 "model.hidden": {"choice": [[32], [64, 64]]}}""")
 *   .setNumTrials(16).setMaxRounds(9)
 *   .fit(train)
 * tuned.trials.show()
 * tuned.transform(test)
 * }}}
 */
class StokerTuner(override val uid: String)
  extends Estimator[StokerTunerModel] with StokerTunerParams with MLWritable {

  def this() = this(Identifiable.randomUID("stokerTuner"))

  private var estimator: Option[StokerEstimator] = None

  def setEstimator(value: StokerEstimator): this.type = { estimator = Some(value); this }
  def getEstimator: StokerEstimator = estimator.getOrElse(throw new InvalidInputException(
    "StokerTuner has no estimator: setEstimator(new StokerEstimator()...) first"))

  def setSpace(value: String): this.type = set(space, value)
  /** A `ParamGridBuilder` grid as the space: each map is one configuration. */
  def setEstimatorParamMaps(maps: Array[ParamMap]): this.type = set(space, SearchSpace.of(maps))
  def setNumTrials(value: Int): this.type = set(numTrials, value)
  def setMaxRounds(value: Int): this.type = set(maxRounds, value)
  def setMinRounds(value: Int): this.type = set(minRounds, value)
  def setReductionFactor(value: Int): this.type = set(reductionFactor, value)
  def setScheduler(value: String): this.type = set(scheduler, value)
  def setParallelism(value: Int): this.type = set(parallelism, value)
  def setTimeoutSeconds(value: Double): this.type = set(timeoutSeconds, value)
  def setTunerSeed(value: Long): this.type = set(tunerSeed, value)
  def setTunerMetric(value: String): this.type = set(tunerMetric, value)

  override def fit(dataset: Dataset[_]): StokerTunerModel = {
    val result = new Search(this, getEstimator, dataset).run()
    copyValues(new StokerTunerModel(uid, result.best, result.trials).setParent(this))
  }

  override def transformSchema(schema: StructType): StructType =
    getEstimator.transformSchema(schema)

  override def copy(extra: ParamMap): StokerTuner = {
    val copied = defaultCopy[StokerTuner](extra)
    estimator.foreach(e => copied.setEstimator(e.copy(ParamMap.empty)))
    copied
  }

  override def write: MLWriter = new StokerTuner.Writer(this)
}

object StokerTuner extends MLReadable[StokerTuner] {
  private val EstimatorDir = "estimator"

  override def read: MLReader[StokerTuner] = new MLReader[StokerTuner] {
    override def load(path: String): StokerTuner = {
      val className = classOf[StokerTuner].getName
      val tuner = new StokerTuner(ParamsIO.uid(path, sparkSession, className))
      ParamsIO.loadInto(tuner, path, sparkSession, className)
      val estimatorPath = new Path(path, EstimatorDir)
      if (Files.exists(estimatorPath, sparkSession.sparkContext.hadoopConfiguration)) {
        tuner.setEstimator(StokerEstimator.load(estimatorPath.toString))
      }
      tuner
    }
  }

  override def load(path: String): StokerTuner = super.load(path)

  private class Writer(instance: StokerTuner) extends MLWriter {
    override protected def saveImpl(path: String): Unit = {
      ParamsIO.saveMetadata(instance, path, sparkSession)
      instance.estimator.foreach(_.save(new Path(path, EstimatorDir).toString))
    }
  }
}

/**
 * One trial of a search as the trials table shows it: its configuration (param ->
 * JSON value), how far it got, its metric at each rung, and its rounds' history.
 */
final case class TrialRecord(
    trial: Int,
    params: Seq[(String, String)],
    status: String,
    rung: Int,
    rounds: Int,
    metric: Double,
    rungMetrics: Seq[Double],
    seconds: Double,
    history: Seq[RoundStats],
    best: Boolean = false)

private[spark] object TrialRecord {
  import org.json4s._
  import org.json4s.jackson.JsonMethods

  val Schema: StructType = StructType(Seq(
    StructField("trial", IntegerType, nullable = false),
    StructField("params", MapType(StringType, StringType), nullable = false),
    StructField("status", StringType, nullable = false),
    StructField("rung", IntegerType, nullable = false),
    StructField("rounds", IntegerType, nullable = false),
    StructField("metric", DoubleType, nullable = true),
    StructField("rung_metrics", ArrayType(DoubleType), nullable = false),
    StructField("seconds", DoubleType, nullable = false),
    StructField("best", BooleanType, nullable = false)))

  private def num(v: Double): JValue = if (v.isNaN || v.isInfinite) JNull else JDouble(v)

  def toJson(records: Seq[TrialRecord]): String = JsonMethods.compact(JArray(records.toList.map {
    r => JObject(
      "trial" -> JInt(r.trial),
      "params" -> JObject(r.params.toList.map { case (k, v) => k -> JString(v) }),
      "status" -> JString(r.status),
      "rung" -> JInt(r.rung),
      "rounds" -> JInt(r.rounds),
      "metric" -> num(r.metric),
      "rung_metrics" -> JArray(r.rungMetrics.toList.map(num)),
      "seconds" -> JDouble(r.seconds),
      "history" -> JsonMethods.parse(RoundStats.toJson(r.history)),
      "best" -> JBool(r.best))
  }))

  def fromJson(text: String): Seq[TrialRecord] = JsonMethods.parse(text) match {
    case JArray(items) => items.map { j =>
      TrialRecord(
        Envelope.number(j \ "trial").toInt,
        j \ "params" match {
          case JObject(fields) => fields.collect { case (k, JString(v)) => k -> v }
          case _ => Nil
        },
        j \ "status" match { case JString(s) => s; case _ => "" },
        Envelope.number(j \ "rung").toInt,
        Envelope.number(j \ "rounds").toInt,
        Envelope.number(j \ "metric"),
        j \ "rung_metrics" match { case JArray(ms) => ms.map(Envelope.number); case _ => Nil },
        Envelope.number(j \ "seconds"),
        RoundStats.fromJson(JsonMethods.compact(j \ "history")),
        j \ "best" == JBool(true))
    }
    case other => throw new IllegalStateException(s"trials are not a JSON array: $other")
  }
}

/**
 * What a search found: the best trial's model (transform predicts with it) and every
 * trial's record ([[trials]]: params, rung reached, metric per rung, rounds, seconds,
 * status; [[trialsJson]] adds each trial's round history, for plots).
 */
class StokerTunerModel private[spark] (
    override val uid: String,
    val bestModel: StokerModel,
    private[spark] val records: Seq[TrialRecord])
  extends Model[StokerTunerModel] with StokerTunerParams with MLWritable {

  /** The trials as a DataFrame, one row each, in trial order. */
  def trials: DataFrame = {
    val spark = SparkSession.active
    val rows = records.map { r =>
      Row(r.trial, r.params.toMap, r.status, r.rung, r.rounds,
        if (r.metric.isNaN) null else r.metric, r.rungMetrics, r.seconds, r.best)
    }
    spark.createDataFrame(spark.sparkContext.parallelize(rows, 1), TrialRecord.Schema)
  }

  /** The trials with their round histories, as JSON (data/trials.json of a saved model). */
  def trialsJson: String = TrialRecord.toJson(records)

  /** The best trial's configuration (param -> JSON value). */
  def bestParams: java.util.Map[String, String] = {
    import scala.jdk.CollectionConverters._
    records.find(_.best).map(_.params.toMap).getOrElse(Map.empty).asJava
  }

  override def transform(dataset: Dataset[_]): DataFrame = bestModel.transform(dataset)

  override def transformSchema(schema: StructType): StructType = bestModel.transformSchema(schema)

  override def copy(extra: ParamMap): StokerTunerModel =
    copyValues(new StokerTunerModel(uid, bestModel.copy(ParamMap.empty), records), extra)
      .setParent(parent)

  override def write: MLWriter = new StokerTunerModel.Writer(this)
}

object StokerTunerModel extends MLReadable[StokerTunerModel] {
  private val BestDir = "bestModel"
  private val TrialsFile = "data/trials.json"

  override def read: MLReader[StokerTunerModel] = new MLReader[StokerTunerModel] {
    override def load(path: String): StokerTunerModel = {
      val className = classOf[StokerTunerModel].getName
      val conf = sparkSession.sparkContext.hadoopConfiguration
      val best = StokerModel.load(new Path(path, BestDir).toString)
      val records = TrialRecord.fromJson(new String(Files.read(new Path(path, TrialsFile), conf),
        UTF_8))
      val model = new StokerTunerModel(ParamsIO.uid(path, sparkSession, className), best, records)
      ParamsIO.loadInto(model, path, sparkSession, className)
      model
    }
  }

  override def load(path: String): StokerTunerModel = super.load(path)

  private class Writer(instance: StokerTunerModel) extends MLWriter {
    override protected def saveImpl(path: String): Unit = {
      ParamsIO.saveMetadata(instance, path, sparkSession)
      instance.bestModel.save(new Path(path, BestDir).toString)
      Files.write(new Path(path, TrialsFile), instance.trialsJson.getBytes(UTF_8),
        sparkSession.sparkContext.hadoopConfiguration)
    }
  }
}

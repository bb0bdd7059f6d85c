package dev.stoker.spark

import java.nio.charset.StandardCharsets.UTF_8

import scala.jdk.CollectionConverters._

import org.apache.hadoop.fs.Path
import org.apache.spark.ml.Model
import org.apache.spark.ml.param.ParamMap
import org.apache.spark.ml.stoker.ParamsIO
import org.apache.spark.ml.util.{MLReadable, MLReader, MLWritable, MLWriter}
import org.apache.spark.sql.{DataFrame, Dataset}
import org.apache.spark.sql.types.{StructField, StructType}
import org.json4s.{JInt, JObject, JString}

/**
 * A trained stoker network: its averaged state (safetensors, with optimizer state), the
 * TorchScript archive when it is one, and the training history. `transform` appends
 * `prediction` (and `probability` for classifiers) in Arrow batches through each node's
 * stoker server.
 */
class StokerModel private[spark] (
    override val uid: String,
    private[spark] val state: Array[Byte],
    private[spark] val modelBlob: Option[Array[Byte]],
    private[spark] val history: Seq[RoundStats],
    private[spark] val summary: FitSummary)
  extends Model[StokerModel] with StokerParams[StokerModel] with MLWritable {

  /**
   * The trained state as safetensors bytes: parameters, buffers (BatchNorm statistics)
   * and optimizer state.
   */
  def getState: Array[Byte] = state.clone()

  /**
   * This model (same params, network and history) with another state of the same
   * network: a checkpoint's `round-00004.safetensors`, say, to serve round 4. A state of
   * another model is refused when it is first used.
   */
  def withState(state: Array[Byte]): StokerModel = {
    StateInfo.of(state)
    copyValues(new StokerModel(uid, state.clone(), modelBlob, history, summary)).setParent(parent)
  }

  /**
   * The TorchScript archive this model was trained from, if it is one, with its
   * initial weights. [[toTorchScript]] gives the trained model.
   */
  def getTorchScript: Option[Array[Byte]] = modelBlob.map(_.clone())

  /**
   * The trained model as a TorchScript archive that plain PyTorch loads with
   * `torch.jit.load`, in eval mode, predicting what `transform` predicts: a TorchScript
   * model with its trained parameters and buffers (BatchNorm statistics) written in, a
   * built-in spec as its traced forward (logits; `transform` applies the softmax or
   * sigmoid). Built by the driver's stoker server (the `export_model` action).
   */
  def toTorchScript: Array[Byte] = Servers.withClient(target) { client =>
    val request = Envelope(JObject(modelSpecJson.map("spec" -> _).toList),
      Seq("state" -> state) ++ modelBlob.map("model" -> _).toSeq)
    Envelope.call(client, "export_model", request).blob("torchscript").getOrElse(
      throw new IllegalStateException("the server's export_model reply has no archive"))
  }

  /** Writes [[toTorchScript]] to `path` on any Hadoop file system. */
  def exportTorchScript(path: String): Unit = {
    val conf = org.apache.spark.sql.SparkSession.active.sparkContext.hadoopConfiguration
    Files.write(new Path(path), toTorchScript, conf)
  }

  /** Per-round training history: loss, samples, seconds. */
  def getHistory: java.util.List[RoundStats] = history.asJava

  /** Per-round training history (Scala). */
  def trainingHistory: Seq[RoundStats] = history

  /** The history as a JSON array (what model.save writes to data/history.json). */
  def historyJson: String = RoundStats.toJson(history)

  /**
   * How the fit ended: the validation metric it followed, its best round (with early
   * stopping, the round whose state this model is), and why it stopped.
   */
  def trainingSummary: FitSummary = summary

  /** [[trainingSummary]] as JSON (data/summary.json of a saved model). */
  def summaryJson: String = summary.toJson

  // Read once per model: the state never changes, and native/core reads all of it.
  @transient private lazy val info = StateInfo.of(state)

  /** regression, binary or multiclass:N (from the state's metadata). */
  def task: String = info.task

  def isClassifier: Boolean = info.isClassifier

  override def transformSchema(schema: StructType): StructType = {
    Features.columns(schema, getFeatureCols, getFeaturesCol)
    StokerModel.outputSchema(schema, getPredictionCol, getProbabilityCol, isClassifier)
  }

  override def transform(dataset: Dataset[_]): DataFrame = {
    val out = transformSchema(dataset.schema, logging = true)
    Inference.transform(this, dataset, out)
  }

  /**
   * Registers this model under `name` for SQL and DataFrame calls in this application
   * (`SELECT stoker_predict('churn', f1, f2) FROM t`) and on the driver's server; a
   * second registration of the same name becomes its next version. Returns the version.
   */
  def register(name: String): Int = ModelCatalog.register(name, this)

  /**
   * Registers the model, as `transform` serves it, on every node's running server: the
   * end of `fit` does this, so the first `transform` does not find it missing on each
   * node and register it then (a task's failed call, the upload of the state and the
   * model's build, on every node, inside the first query's time).
   */
  private[spark] def preRegister(): Unit =
    Served.of(this, None, 1).registration.foreach { r =>
      Servers.onEveryServer(org.apache.spark.sql.SparkSession.active.sparkContext, target,
        "register_model", r.body)
    }

  /**
   * Drops this model from every server it was registered on: what `transform` and
   * `stoker_predict` registered on each node's server, and the names given with
   * [[register]] (which leave this application's catalog). A later `transform`
   * registers it again. Returns the number of servers reached.
   */
  def unload(): Int = {
    val sc = org.apache.spark.sql.SparkSession.active.sparkContext
    val names = (Served.of(this, None, 1).name -> None) +:
      ModelCatalog.unregister(this).map { case (n, v) => n -> Some(v) }
    names.map { case (name, version) =>
      val body = JObject(("name" -> JString(name)) :: version.map(v => "version" -> JInt(v)).toList)
      Servers.onEveryServer(sc, target, "unload_model", Envelope(body))
    }.max
  }

  override def copy(extra: ParamMap): StokerModel =
    copyValues(new StokerModel(uid, state, modelBlob, history, summary), extra).setParent(parent)

  override def write: MLWriter = new StokerModel.Writer(this)
}

object StokerModel extends MLReadable[StokerModel] {
  private val StateFile = "data/state.safetensors"
  private val HistoryFile = "data/history.json"
  private val SummaryFile = "data/summary.json"
  private val TorchScriptFile = "data/model.pt"

  private[spark] def outputSchema(
      schema: StructType,
      predictionCol: String,
      probabilityCol: String,
      classifier: Boolean): StructType = {
    val withPrediction = Schemas.addColumn(schema,
      StructField(predictionCol, Schemas.Prediction, nullable = true))
    if (classifier && probabilityCol.nonEmpty) {
      Schemas.addColumn(withPrediction,
        StructField(probabilityCol, Schemas.Probability, nullable = true))
    } else withPrediction
  }

  override def read: MLReader[StokerModel] = new Reader

  override def load(path: String): StokerModel = super.load(path)

  private class Writer(instance: StokerModel) extends MLWriter {
    override protected def saveImpl(path: String): Unit = {
      ParamsIO.saveMetadata(instance, path, sparkSession)
      val conf = sparkSession.sparkContext.hadoopConfiguration
      Files.write(new Path(path, StateFile), instance.state, conf)
      Files.write(new Path(path, HistoryFile),
        RoundStats.toJson(instance.history).getBytes(UTF_8), conf)
      Files.write(new Path(path, SummaryFile), instance.summary.toJson.getBytes(UTF_8), conf)
      instance.modelBlob.foreach(b => Files.write(new Path(path, TorchScriptFile), b, conf))
    }
  }

  private class Reader extends MLReader[StokerModel] {
    override def load(path: String): StokerModel = {
      val className = classOf[StokerModel].getName
      val conf = sparkSession.sparkContext.hadoopConfiguration
      val state = Files.read(new Path(path, StateFile), conf)
      val history = RoundStats.fromJson(new String(Files.read(new Path(path, HistoryFile), conf),
        UTF_8))
      // Models saved before summaries existed ran every round without validation.
      val summaryPath = new Path(path, SummaryFile)
      val summary =
        if (Files.exists(summaryPath, conf)) {
          FitSummary.fromJson(new String(Files.read(summaryPath, conf), UTF_8))
        } else FitSummary.completed(history.size)
      val torchScript = new Path(path, TorchScriptFile)
      val blob = if (Files.exists(torchScript, conf)) Some(Files.read(torchScript, conf)) else None
      val model = new StokerModel(ParamsIO.uid(path, sparkSession, className), state, blob,
        history, summary)
      ParamsIO.loadInto(model, path, sparkSession, className)
      model
    }
  }
}

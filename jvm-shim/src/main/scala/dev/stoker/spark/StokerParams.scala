package dev.stoker.spark

import org.apache.spark.ml.param._

/**
 * The parameters shared by [[StokerEstimator]] and [[StokerModel]], with Spark ML's
 * naming (`featuresCol`, `labelCol`, `predictionCol`, ...) and setters that return the
 * stage's own type (`Self`, so Java sees `StokerEstimator setRounds(int)`), so Java,
 * Scala and PySpark users configure both the same way.
 */
trait StokerParams[Self <: StokerParams[Self]] extends Params { self: Self =>

  final val featuresCol: Param[String] = new Param[String](this, "featuresCol",
    "features column: a Spark ML Vector or an array of numbers (ignored when featureCols is set)")

  final val featureCols: StringArrayParam = new StringArrayParam(this, "featureCols",
    "numeric feature columns, used instead of featuresCol when not empty")

  final val labelCol: Param[String] = new Param[String](this, "labelCol",
    "label column (numeric; whole numbers 0..num_classes-1 for classifiers)")

  final val predictionCol: Param[String] = new Param[String](this, "predictionCol",
    "prediction column (double: class index or regression value)")

  final val probabilityCol: Param[String] = new Param[String](this, "probabilityCol",
    "class probability column (Vector) for classifiers; empty for none")

  final val model: Param[String] = new Param[String](this, "model",
    "the network: a built-in spec as JSON ({\"type\": \"mlp\", \"hidden\": [64, 64], " +
      "\"num_classes\": 2}) or the path of a TorchScript file (any Hadoop file system)",
    (v: String) => v.trim.nonEmpty)

  final val loss: Param[String] = new Param[String](this, "loss",
    "mse, cross_entropy or bce; empty: chosen from the model (docs/engine.md)",
    ParamValidators.inArray(Array("", "mse", "cross_entropy", "bce")))

  final val optimizer: Param[String] = new Param[String](this, "optimizer",
    "sgd, adam or adamw", ParamValidators.inArray(Array("sgd", "adam", "adamw")))

  final val learningRate: DoubleParam = new DoubleParam(this, "learningRate",
    "optimizer learning rate", ParamValidators.gt(0.0))

  final val momentum: DoubleParam = new DoubleParam(this, "momentum",
    "sgd momentum", ParamValidators.inRange(0.0, 1.0, lowerInclusive = true,
      upperInclusive = false))

  final val weightDecay: DoubleParam = new DoubleParam(this, "weightDecay",
    "weight decay (L2 for sgd and adam, decoupled for adamw)", ParamValidators.gtEq(0.0))

  final val batchSize: IntParam = new IntParam(this, "batchSize",
    "training mini-batch size", ParamValidators.gtEq(1))

  final val localEpochs: IntParam = new IntParam(this, "localEpochs",
    "epochs each partition trains per round before the weights are averaged",
    ParamValidators.gtEq(1))

  final val rounds: IntParam = new IntParam(this, "rounds",
    "averaging rounds (synchronous local SGD)", ParamValidators.gtEq(1))

  final val averageOptimizerState: BooleanParam = new BooleanParam(this,
    "averageOptimizerState",
    "average optimizer state (momentum, Adam moments) with the weights each round; " +
      "when false every round starts the optimizer afresh")

  final val seed: LongParam = new LongParam(this, "seed",
    "seed of the initial weights, shuffling and dropout (a rerun gives the same model)",
    ParamValidators.gtEq[Long](0))

  final val checkpointDir: Param[String] = new Param[String](this, "checkpointDir",
    "directory (any Hadoop file system) for per-round checkpoints; fit resumes from the " +
      "last round there; empty for none")

  final val serverAddress: Param[String] = new Param[String](this, "serverAddress",
    "stoker server: empty to start one per node automatically, grpc://host:port, or a " +
      "per-host map 'host1=grpc://h1:7070,host2=grpc://h2:7070,*=grpc://default:7070'; " +
      "its token, if any, is the Spark conf spark.stoker.server.token, and the CA " +
      "certificate of a grpc+tls:// server spark.stoker.server.caCert")

  final val device: Param[String] = new Param[String](this, "device",
    "auto, cpu, cuda or cuda:N (auto: CUDA when the server has it)")

  final val inferenceBatchRows: IntParam = new IntParam(this, "inferenceBatchRows",
    "rows per Arrow batch sent to the server by transform", ParamValidators.gtEq(1))

  setDefault(
    featuresCol -> "features",
    featureCols -> Array.empty[String],
    labelCol -> "label",
    predictionCol -> "prediction",
    probabilityCol -> "probability",
    model -> """{"type": "mlp", "hidden": [64, 64], "num_classes": 2}""",
    loss -> "",
    optimizer -> "adam",
    learningRate -> 0.001,
    momentum -> 0.0,
    weightDecay -> 0.0,
    batchSize -> 256,
    localEpochs -> 1,
    rounds -> 10,
    averageOptimizerState -> true,
    seed -> 42L,
    checkpointDir -> "",
    serverAddress -> "",
    device -> "auto",
    inferenceBatchRows -> 65536)

  def getFeaturesCol: String = $(featuresCol)
  def getFeatureCols: Array[String] = $(featureCols)
  def getLabelCol: String = $(labelCol)
  def getPredictionCol: String = $(predictionCol)
  def getProbabilityCol: String = $(probabilityCol)
  def getModel: String = $(model)
  def getLoss: String = $(loss)
  def getOptimizer: String = $(optimizer)
  def getLearningRate: Double = $(learningRate)
  def getMomentum: Double = $(momentum)
  def getWeightDecay: Double = $(weightDecay)
  def getBatchSize: Int = $(batchSize)
  def getLocalEpochs: Int = $(localEpochs)
  def getRounds: Int = $(rounds)
  def getAverageOptimizerState: Boolean = $(averageOptimizerState)
  def getSeed: Long = $(seed)
  def getCheckpointDir: String = $(checkpointDir)
  def getServerAddress: String = $(serverAddress)
  def getDevice: String = $(device)
  def getInferenceBatchRows: Int = $(inferenceBatchRows)

  def setFeaturesCol(value: String): Self = set(featuresCol, value)
  def setFeatureCols(value: Array[String]): Self = set(featureCols, value)
  def setLabelCol(value: String): Self = set(labelCol, value)
  def setPredictionCol(value: String): Self = set(predictionCol, value)
  def setProbabilityCol(value: String): Self = set(probabilityCol, value)
  def setModel(value: String): Self = set(model, value)
  def setLoss(value: String): Self = set(loss, value)
  def setOptimizer(value: String): Self = set(optimizer, value)
  def setLearningRate(value: Double): Self = set(learningRate, value)
  def setMomentum(value: Double): Self = set(momentum, value)
  def setWeightDecay(value: Double): Self = set(weightDecay, value)
  def setBatchSize(value: Int): Self = set(batchSize, value)
  def setLocalEpochs(value: Int): Self = set(localEpochs, value)
  def setRounds(value: Int): Self = set(rounds, value)
  def setAverageOptimizerState(value: Boolean): Self = set(averageOptimizerState, value)
  def setSeed(value: Long): Self = set(seed, value)
  def setCheckpointDir(value: String): Self = set(checkpointDir, value)
  def setServerAddress(value: String): Self = set(serverAddress, value)
  def setDevice(value: String): Self = set(device, value)
  def setInferenceBatchRows(value: Int): Self = set(inferenceBatchRows, value)

  /** The model param as a built-in spec (a JSON object), or None for a TorchScript path. */
  private[spark] def modelSpecJson: Option[org.json4s.JObject] = {
    val text = $(model).trim
    if (!text.startsWith("{")) None
    else {
      try Some(Envelope.parseObject(text))
      catch {
        case e: Exception => throw new dev.stoker.InvalidInputException(
          s"model spec is not valid JSON (${e.getMessage}): $text")
      }
    }
  }

  /**
   * Where tasks find their server. The token of a server named by serverAddress comes
   * from the Spark conf `spark.stoker.server.token` (which Spark redacts in its UI and
   * logs), never from a Param, so saved models and pipelines carry no credential; the CA
   * certificate of a `grpc+tls://` server from `spark.stoker.server.caCert`, read here on
   * the driver.
   */
  private[spark] def target: ServerTarget = ServerTarget.fromConf($(serverAddress))
}

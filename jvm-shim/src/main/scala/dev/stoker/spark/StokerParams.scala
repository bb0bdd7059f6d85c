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
    Valid.nonEmpty("model"))

  final val loss: Param[String] = new Param[String](this, "loss",
    "mse, cross_entropy or bce; empty: chosen from the model (docs/engine.md)",
    Valid.oneOf("loss", "", "mse", "cross_entropy", "bce"))

  final val objective: Param[String] = new Param[String](this, "objective",
    "regression, classification or auto (auto: from loss, the spec's num_classes, then " +
      "the label's type: an integer label is a class index)",
    Valid.oneOf("objective", "auto", "regression", "classification"))

  final val optimizer: Param[String] = new Param[String](this, "optimizer",
    "sgd, adam or adamw", Valid.oneOf("optimizer", "sgd", "adam", "adamw"))

  final val learningRate: DoubleParam = new DoubleParam(this, "learningRate",
    "optimizer learning rate", Valid.above("learningRate", 0.0))

  final val momentum: DoubleParam = new DoubleParam(this, "momentum",
    "sgd momentum", Valid.fraction("momentum"))

  final val weightDecay: DoubleParam = new DoubleParam(this, "weightDecay",
    "weight decay (L2 for sgd and adam, decoupled for adamw)", Valid.atLeast("weightDecay", 0.0))

  final val batchSize: IntParam = new IntParam(this, "batchSize",
    "training mini-batch size", Valid.atLeast("batchSize", 1))

  final val localEpochs: IntParam = new IntParam(this, "localEpochs",
    "epochs each partition trains per round before the weights are averaged",
    Valid.atLeast("localEpochs", 1))

  final val rounds: IntParam = new IntParam(this, "rounds",
    "averaging rounds (synchronous local SGD); with early stopping, the most",
    Valid.atLeast("rounds", 1))

  final val averageOptimizerState: BooleanParam = new BooleanParam(this,
    "averageOptimizerState",
    "average optimizer state (momentum, Adam moments) with the weights each round; " +
      "when false every round starts the optimizer afresh")

  final val seed: LongParam = new LongParam(this, "seed",
    "seed of the initial weights, shuffling and dropout (a rerun gives the same model)",
    Valid.atLeast("seed", 0L))

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
    "rows per Arrow batch sent to the server by transform", Valid.atLeast("inferenceBatchRows", 1))

  final val validationIndicatorCol: Param[String] = new Param[String](this,
    "validationIndicatorCol",
    "boolean column: true marks a validation row (scored every round, never trained on); " +
      "empty for none")

  final val validationFraction: DoubleParam = new DoubleParam(this, "validationFraction",
    "fraction of the rows held out for validation by a seeded random split; 0 for none",
    Valid.fraction("validationFraction"))

  final val evalMetric: Param[String] = new Param[String](this, "evalMetric",
    "validation metric that early stopping and the best round follow: loss, or " +
      "rmse, mse, mae, r2 (regression), logloss, accuracy, auc (classifiers; auc two-class); " +
      "empty: loss",
    Valid.oneOf("evalMetric", "" +: Validation.Metrics: _*))

  final val earlyStoppingRounds: IntParam = new IntParam(this, "earlyStoppingRounds",
    "stop once this many rounds in a row do not improve evalMetric on the validation " +
      "set, and return the best round's model; unset: train every round",
    Valid.atLeast("earlyStoppingRounds", 1, " (leave it unset for no early stopping)"))

  final val lrSchedule: Param[String] = new Param[String](this, "lrSchedule",
    "learning-rate schedule over the fit's rounds, followed within each round's local " +
      "epochs: constant, step (times lrGamma every lrStepRounds rounds) or cosine (down to " +
      "minLearningRate at the last round)",
    Valid.oneOf("lrSchedule", "constant", "step", "cosine"))

  final val warmupRounds: DoubleParam = new DoubleParam(this, "warmupRounds",
    "rounds (fractions allowed) of linear warmup from a tenth of the rate, before the schedule",
    Valid.atLeast("warmupRounds", 0.0))

  final val lrStepRounds: IntParam = new IntParam(this, "lrStepRounds",
    "step schedule: rounds between decays", Valid.atLeast("lrStepRounds", 1))

  final val lrGamma: DoubleParam = new DoubleParam(this, "lrGamma",
    "step schedule: the factor at each decay, in (0, 1]",
    (v: Double) => (v > 0 && v <= 1) || Valid.failed("lrGamma", v, "in (0, 1]"))

  final val minLearningRate: DoubleParam = new DoubleParam(this, "minLearningRate",
    "cosine schedule: the learning rate at the end (at most learningRate)",
    Valid.atLeast("minLearningRate", 0.0))

  final val classWeights: DoubleArrayParam = new DoubleArrayParam(this, "classWeights",
    "training-loss weight of each class (index = class label; two for a binary model), " +
      "for imbalanced labels; empty: equal. Validation metrics are unweighted",
    (w: Array[Double]) => w.forall(v => v >= 0 && !v.isNaN && !v.isInfinite) ||
      Valid.failed("classWeights", w.mkString("[", ", ", "]"), "non-negative numbers"))

  final val outerOptimizer: Param[String] = new Param[String](this, "outerOptimizer",
    "how a round's partition states become the next state: 'none' (their weighted mean) " +
      "or 'nesterov' (Nesterov momentum on the mean's change, as in DiLoCo)",
    Valid.oneOf("outerOptimizer", "none", "nesterov"))

  final val outerLearningRate: DoubleParam = new DoubleParam(this, "outerLearningRate",
    "outer optimizer step size on the round's change (1 with momentum 0: plain averaging)",
    Valid.above("outerLearningRate", 0.0))

  final val outerMomentum: DoubleParam = new DoubleParam(this, "outerMomentum",
    "outer optimizer momentum", Valid.fraction("outerMomentum"))

  final val earlyStoppingMinDelta: DoubleParam = new DoubleParam(this,
    "earlyStoppingMinDelta",
    "smallest change of evalMetric that counts as an improvement for early stopping",
    Valid.atLeast("earlyStoppingMinDelta", 0.0))

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
    inferenceBatchRows -> 65536,
    objective -> "auto",
    validationIndicatorCol -> "",
    validationFraction -> 0.0,
    evalMetric -> "",
    earlyStoppingMinDelta -> 0.0,
    outerOptimizer -> "none",
    outerLearningRate -> 0.7,
    outerMomentum -> 0.9,
    lrSchedule -> "constant",
    warmupRounds -> 0.0,
    lrStepRounds -> 1,
    lrGamma -> 0.5,
    minLearningRate -> 0.0,
    classWeights -> Array.empty[Double])

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
  def getObjective: String = $(objective)
  def getValidationIndicatorCol: String = $(validationIndicatorCol)
  def getValidationFraction: Double = $(validationFraction)
  def getEvalMetric: String = $(evalMetric)
  /** The patience, or 0 when early stopping is off (the param is unset). */
  def getEarlyStoppingRounds: Int = get(earlyStoppingRounds).getOrElse(0)
  def getEarlyStoppingMinDelta: Double = $(earlyStoppingMinDelta)
  def getOuterOptimizer: String = $(outerOptimizer)
  def getOuterLearningRate: Double = $(outerLearningRate)
  def getOuterMomentum: Double = $(outerMomentum)
  def getLrSchedule: String = $(lrSchedule)
  def getWarmupRounds: Double = $(warmupRounds)
  def getLrStepRounds: Int = $(lrStepRounds)
  def getLrGamma: Double = $(lrGamma)
  def getMinLearningRate: Double = $(minLearningRate)
  def getClassWeights: Array[Double] = $(classWeights)

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
  def setObjective(value: String): Self = set(objective, value)
  def setValidationIndicatorCol(value: String): Self = set(validationIndicatorCol, value)
  def setValidationFraction(value: Double): Self = set(validationFraction, value)
  def setEvalMetric(value: String): Self = set(evalMetric, value)
  def setEarlyStoppingRounds(value: Int): Self = set(earlyStoppingRounds, value)
  def setEarlyStoppingMinDelta(value: Double): Self = set(earlyStoppingMinDelta, value)
  def setOuterOptimizer(value: String): Self = set(outerOptimizer, value)
  def setOuterLearningRate(value: Double): Self = set(outerLearningRate, value)
  def setOuterMomentum(value: Double): Self = set(outerMomentum, value)
  def setLrSchedule(value: String): Self = set(lrSchedule, value)
  def setWarmupRounds(value: Double): Self = set(warmupRounds, value)
  def setLrStepRounds(value: Int): Self = set(lrStepRounds, value)
  def setLrGamma(value: Double): Self = set(lrGamma, value)
  def setMinLearningRate(value: Double): Self = set(minLearningRate, value)
  def setClassWeights(value: Array[Double]): Self = set(classWeights, value)

  /**
   * The model param as a built-in spec (a JSON object), or None for a TorchScript path.
   * With objective 'regression' the default spec (a classifier) loses its num_classes; a spec
   * the user wrote with num_classes is a conflict, named.
   */
  private[spark] def modelSpecJson: Option[org.json4s.JObject] = {
    val text = $(model).trim
    if (!text.startsWith("{")) None
    else {
      val spec =
        try Envelope.parseObject(text)
        catch {
          case e: Exception => throw new dev.stoker.InvalidInputException(
            s"model spec is not valid JSON (${e.getMessage}): $text")
        }
      val classes = spec.obj.collectFirst { case ("num_classes", v) => v }
      ($(objective), classes) match {
        case ("regression", Some(_)) if !isSet(model) =>
          Some(org.json4s.JObject(spec.obj.filterNot(_._1 == "num_classes")))
        case ("regression", Some(n)) => throw new dev.stoker.InvalidInputException(
          s"objective is 'regression' but the model spec sets num_classes ${Envelope.compact(n)}; " +
            "remove num_classes for a regression, or set objective 'classification'")
        case ("classification", None) if effectiveLoss.forall(_ != "bce") =>
          throw new dev.stoker.InvalidInputException(
            "objective is 'classification' but the model spec has no num_classes: add " +
              "\"num_classes\": N (or loss 'bce' for a one-output two-class model)")
        case _ => Some(spec)
      }
    }
  }

  /**
   * The loss the job trains with: the loss param, or mse for objective 'regression'; None leaves
   * it to the engine (docs/engine.md: the spec, then the label's type). A loss that
   * contradicts the task is named.
   */
  private[spark] def effectiveLoss: Option[String] = ($(objective), $(loss)) match {
    case ("regression", l @ ("cross_entropy" | "bce")) => throw new dev.stoker.InvalidInputException(
      s"objective is 'regression' but loss is '$l' (a classifier's loss); set loss 'mse' or leave it empty")
    case ("classification", "mse") => throw new dev.stoker.InvalidInputException(
      "objective is 'classification' but loss is 'mse' (a regression loss); set loss " +
        "'cross_entropy' or 'bce', or leave it empty")
    case ("regression", "") => Some("mse")
    case (_, "") => None
    case (_, l) => Some(l)
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

/**
 * Param validators that say what is valid: Spark's own report only "parameter rounds
 * given invalid value 0". Each throws [[dev.stoker.InvalidInputException]] naming the
 * param, the value and the valid range, when the value is set (in Scala, Java and, as
 * the Python wrapper checks each value with the JVM when set, PySpark), so a bad value
 * fails where it was written, not at `fit`.
 */
private[spark] object Valid {
  def failed(name: String, value: Any, valid: String): Boolean =
    throw new dev.stoker.InvalidInputException(s"$name must be $valid; got $value")

  def atLeast(name: String, min: Int, hint: String = ""): Int => Boolean =
    v => v >= min || failed(name, v, s"at least $min$hint")

  def atLeast(name: String, min: Long): Long => Boolean =
    v => v >= min || failed(name, v, s"at least $min")

  def atLeast(name: String, min: Double): Double => Boolean =
    v => v >= min || failed(name, v, s"at least $min")

  def above(name: String, min: Double): Double => Boolean =
    v => v > min || failed(name, v, s"greater than $min")

  /** In [0, 1). */
  def fraction(name: String): Double => Boolean =
    v => (v >= 0.0 && v < 1.0) || failed(name, v, "in [0, 1)")

  def oneOf(name: String, values: String*): String => Boolean =
    v => values.contains(v) || failed(name, s"'$v'",
      "one of " + values.map(x => if (x.isEmpty) "'' (empty)" else s"'$x'").mkString(", "))

  def nonEmpty(name: String): String => Boolean =
    v => v.trim.nonEmpty || failed(name, "an empty string", "non-empty")
}

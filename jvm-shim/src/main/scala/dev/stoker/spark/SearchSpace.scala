package dev.stoker.spark

import scala.collection.immutable.ListMap

import dev.stoker.InvalidInputException
import org.apache.spark.ml.param.{Param, ParamMap}
import org.json4s._
import org.json4s.jackson.JsonMethods

/**
 * A search space over [[StokerEstimator]] params, as JSON (docs/tuning.md): an object
 * from a param's name to what it takes,
 *
 * {{{
 * {"learningRate": {"log_uniform": [1e-4, 1e-1]},
 *  "model.hidden": {"choice": [[32], [64, 64]]},
 *  "batchSize": {"grid": [64, 256]},
 *  "localEpochs": 2}
 * }}}
 *
 * `grid` and `choice` list values, `uniform` and `log_uniform` are [low, high) ranges,
 * `int_range` is an inclusive [low, high] of whole numbers; anything else is a fixed
 * value. `model.KEY` sets one key of the estimator's JSON model spec (hidden sizes,
 * dropout, activation). A space of grids and fixed values alone is a grid search over
 * every combination; otherwise `numTrials` configurations are drawn with the seed (a
 * grid's values as a choice). A JSON array of objects of fixed values lists the
 * configurations themselves (what a `ParamGridBuilder` grid becomes).
 */
private[spark] final case class SearchSpace(dimensions: Seq[(String, SearchSpace.Dimension)],
    listed: Seq[ListMap[String, JValue]]) {
  import SearchSpace._

  /** Whether every dimension is a grid or fixed (or the configurations are listed). */
  def isGrid: Boolean = listed.nonEmpty || dimensions.forall {
    case (_, _: Grid | _: Fixed) => true
    case _ => false
  }

  /** The searched param names (for the trials table's columns). */
  def names: Seq[String] =
    if (listed.nonEmpty) listed.flatMap(_.keys).distinct else dimensions.map(_._1)

  /**
   * The configurations to try: every grid combination (or listed configuration) in a
   * seeded random order, or `trials` draws. ASHA judges a rung by the trials that
   * reached it so far, so it assumes configurations arrive in no particular order: a
   * grid in order (learning rates ascending, say) makes each new trial the best yet,
   * and each is promoted (8 of 8 configurations to rung 1 in benchmark 9's space,
   * instead of 3 or 4 shuffled).
   */
  def configurations(trials: Int, seed: Long): Seq[ListMap[String, JValue]] =
    if (isGrid) new scala.util.Random(seed).shuffle(ordered)
    else {
      val random = new scala.util.Random(seed)
      Seq.fill(trials)(ListMap(dimensions.map { case (name, d) => name -> d.draw(random) }: _*))
    }

  /** Every grid combination (or listed configuration), in order. */
  private def ordered: Seq[ListMap[String, JValue]] =
    if (listed.nonEmpty) listed
    else {
      dimensions.foldLeft(Seq(ListMap.empty[String, JValue])) { case (configs, (name, d)) =>
        val values = d match {
          case Grid(vs) => vs
          case Fixed(v) => Seq(v)
          case other => throw new IllegalStateException(s"$other in a grid")
        }
        for (c <- configs; v <- values) yield c + (name -> v)
      }
    }
}

private[spark] object SearchSpace {
  sealed trait Dimension { def draw(random: scala.util.Random): JValue }
  final case class Grid(values: Seq[JValue]) extends Dimension {
    def draw(random: scala.util.Random): JValue = values(random.nextInt(values.size))
  }
  final case class Choice(values: Seq[JValue]) extends Dimension {
    def draw(random: scala.util.Random): JValue = values(random.nextInt(values.size))
  }
  final case class Uniform(low: Double, high: Double) extends Dimension {
    def draw(random: scala.util.Random): JValue = JDouble(low + (high - low) * random.nextDouble())
  }
  final case class LogUniform(low: Double, high: Double) extends Dimension {
    def draw(random: scala.util.Random): JValue =
      JDouble(math.exp(math.log(low) + (math.log(high) - math.log(low)) * random.nextDouble()))
  }
  final case class IntRange(low: Long, high: Long) extends Dimension {
    def draw(random: scala.util.Random): JValue =
      JInt(low + (random.nextDouble() * (high - low + 1)).toLong.min(high - low))
  }
  final case class Fixed(value: JValue) extends Dimension {
    def draw(random: scala.util.Random): JValue = value
  }

  /**
   * Params a search cannot vary: every trial trains and is scored on one copy of the
   * data (these fix its columns and split), under the search's own budget and metric.
   */
  val DataParams: Set[String] = Set("featuresCol", "featureCols", "labelCol", "predictionCol",
    "probabilityCol", "validationIndicatorCol", "validationFraction", "loss", "objective",
    "evalMetric", "rounds", "earlyStoppingRounds", "earlyStoppingMinDelta", "checkpointDir",
    "serverAddress", "device", "inferenceBatchRows")

  /** Parses and checks `text` against `estimator`'s params. */
  def parse(text: String, estimator: StokerEstimator): SearchSpace = {
    val json = try JsonMethods.parse(text) catch {
      case e: Exception => throw new InvalidInputException(
        s"the search space is not JSON: ${e.getMessage}")
    }
    val space = json match {
      case JObject(fields) =>
        SearchSpace(fields.map { case (name, spec) => name -> dimension(name, spec) }, Nil)
      case JArray(configs) =>
        SearchSpace(Nil, configs.zipWithIndex.map {
          case (JObject(fields), _) => ListMap(fields: _*)
          case (other, i) => throw new InvalidInputException(s"configuration $i of the search " +
            s"space is not an object of param values: ${JsonMethods.compact(other)}")
        })
      case other => throw new InvalidInputException("the search space must be a JSON object " +
        s"(param -> values) or an array of configurations, not ${JsonMethods.compact(other)}")
    }
    if (space.names.isEmpty || space.listed.exists(_.isEmpty) ||
        (space.listed.isEmpty && json.isInstanceOf[JArray])) {
      throw new InvalidInputException("the search space is empty: name at least one param " +
        """to search, e.g. {"learningRate": {"log_uniform": [1e-4, 0.1]}}""")
    }
    space.names.foreach(checkName(_, estimator))
    space
  }

  /** A `ParamGridBuilder` grid as a listed space. */
  def of(maps: Array[ParamMap]): String = JsonMethods.compact(JArray(maps.toList.map { m =>
    JObject(m.toSeq.toList.map { pair =>
      pair.param.name -> JsonMethods.parse(pair.param.asInstanceOf[Param[Any]].jsonEncode(pair.value))
    })
  }))

  private def dimension(name: String, spec: JValue): Dimension = {
    def numbers(values: List[JValue], kind: String): (Double, Double) = values match {
      case List(a, b) => (Envelope.number(a), Envelope.number(b)) match {
        case (lo, hi) if !lo.isNaN && !hi.isNaN && lo < hi => (lo, hi)
        case _ => throw new InvalidInputException(
          s"search space '$name': $kind needs [low, high] with low < high")
      }
      case _ => throw new InvalidInputException(
        s"search space '$name': $kind needs [low, high], got ${JsonMethods.compact(JArray(values))}")
    }
    spec match {
      case JObject(List(("grid", JArray(values)))) => Grid(nonEmpty(name, "grid", values))
      case JObject(List(("choice", JArray(values)))) => Choice(nonEmpty(name, "choice", values))
      case JObject(List(("uniform", JArray(values)))) =>
        val (lo, hi) = numbers(values, "uniform"); Uniform(lo, hi)
      case JObject(List(("log_uniform", JArray(values)))) =>
        val (lo, hi) = numbers(values, "log_uniform")
        if (lo <= 0) throw new InvalidInputException(
          s"search space '$name': log_uniform needs a low above 0, got $lo")
        LogUniform(lo, hi)
      case JObject(List(("int_range", JArray(values)))) =>
        val (lo, hi) = numbers(values, "int_range")
        if (lo != lo.floor || hi != hi.floor) throw new InvalidInputException(
          s"search space '$name': int_range needs whole numbers, got [$lo, $hi]")
        IntRange(lo.toLong, hi.toLong)
      case JObject(List((kind, _))) if Kinds.contains(kind) => throw new InvalidInputException(
        s"search space '$name': $kind needs a JSON array")
      case other => Fixed(other)
    }
  }

  /** Model spec keys that change what the labels mean (and so the cached data). */
  private val TaskKeys = Set("model.type", "model.num_classes")

  private val Kinds = Set("grid", "choice", "uniform", "log_uniform", "int_range")

  private def nonEmpty(name: String, kind: String, values: List[JValue]): Seq[JValue] = {
    if (values.isEmpty) throw new InvalidInputException(
      s"the search space is empty: '$name' has an empty $kind")
    values
  }

  private def checkName(name: String, estimator: StokerEstimator): Unit = {
    val param = name.takeWhile(_ != '.')
    if (!estimator.hasParam(param)) {
      throw new InvalidInputException(s"search space: '$name' is not a param of " +
        s"StokerEstimator; its params are ${estimator.params.map(_.name).sorted.mkString(", ")}" +
        " (model.KEY sets a key of a JSON model spec)")
    }
    if (DataParams.contains(param)) {
      throw new InvalidInputException(s"search space: '$name' cannot be searched: every " +
        "trial shares one copy of the data and the search's budget and metric; set it on " +
        "the estimator (or the tuner) instead")
    }
    if (TaskKeys.contains(name)) {
      throw new InvalidInputException(s"search space: '$name' cannot be searched: it " +
        "changes the task, and every trial trains on one copy of the data, its labels " +
        "encoded for the estimator's task; set it on the estimator instead")
    }
    if (name.contains('.') && (param != "model" || estimator.modelSpecJson.isEmpty)) {
      throw new InvalidInputException(s"search space: '$name' names a key of a JSON model " +
        "spec; only model.KEY does, and the estimator's model must be a JSON spec")
    }
  }

  /**
   * `estimator` with `config` applied: each param set to its value (checked by the
   * param's validator), `model.KEY` values written into the estimator's model spec.
   */
  def apply(estimator: StokerEstimator, config: ListMap[String, JValue]): StokerEstimator = {
    val (specKeys, plain) = config.partition(_._1.contains('.'))
    val map = ParamMap.empty
    plain.foreach { case (name, value) =>
      val param = estimator.getParam(name).asInstanceOf[Param[Any]]
      // A plain Param here holds a string (typed params are its subclasses): a JSON
      // value for it (a model spec) is its text.
      // JSON has one number type: 1 is a fine learning rate, 64.0 a fine batch size.
      val text = (param: AnyRef, value) match {
        case (_: org.apache.spark.ml.param.DoubleParam, JInt(n)) => JsonMethods.compact(JDouble(n.toDouble))
        case (_: org.apache.spark.ml.param.IntParam | _: org.apache.spark.ml.param.LongParam,
            JDouble(d)) =>
          if (d != d.floor) throw new InvalidInputException(s"search space: '$name' takes " +
            s"whole numbers, not $d (use int_range for it)")
          JsonMethods.compact(JInt(BigInt(d.toLong)))
        case (_, JString(_)) => JsonMethods.compact(value)
        case (_, v) if param.getClass == classOf[Param[_]] =>
          JsonMethods.compact(JString(JsonMethods.compact(v)))
        case (_, v) => JsonMethods.compact(v)
      }
      val decoded = try param.jsonDecode(text) catch {
        case e: Exception => throw new InvalidInputException(
          s"search space: '$name' cannot be ${JsonMethods.compact(value)}: ${e.getMessage}")
      }
      map.put(param, decoded)
    }
    val trial = estimator.copy(map)
    if (specKeys.nonEmpty) {
      val base = Envelope.parseObject(trial.getModel.trim).obj
      val keys = specKeys.map { case (k, v) => k.stripPrefix("model.") -> v }
      val merged = JObject(base.filterNot(f => keys.contains(f._1)) ++ keys.toList)
      trial.set(trial.model, JsonMethods.compact(merged))
    }
    trial
  }
}

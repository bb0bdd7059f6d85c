package dev.stoker.spark

import scala.collection.immutable.ListMap

import dev.stoker.InvalidInputException
import dev.stoker.jni.{IpcBuffer, NativeBridge}
import org.apache.spark.SparkContext
import org.apache.spark.broadcast.Broadcast
import org.json4s._
import org.json4s.jackson.JsonMethods

/**
 * One round's validation as a Spark stage ([[PartitionStage]] over the validation
 * partitions): each task scores the round's averaged state on its node's server, where
 * the partition stays cached like a training partition.
 */
private[spark] final class ValidationRDD(
    data: TrainingData,
    job: Broadcast[TrainJob],
    state: SharedState,
    round: Int,
    last: Boolean,
    hosts: Map[Int, String],
    empty: Set[Int])
  extends PartitionStage(data, job, hosts, empty) {

  override protected def run(job: TrainJob, p: Int, rows: () => (IpcBuffer, Long)): Outcome =
    PartitionTask.evaluate(job, p, round, last, state.input, rows)
}

/**
 * The driver's side of validation: runs each round's [[ValidationRDD]], merges the
 * partitions' evaluations in partition order with native code (so the metrics are
 * those of the whole validation set) and checks them against what was asked.
 */
private[spark] final class Validation(
    sc: SparkContext,
    data: TrainingData,
    job: Broadcast[TrainJob],
    source: String,
    evalMetric: String,
    /** Where the partitions are cached already (a search's feed), and which are empty. */
    private var hosts: Map[Int, String] = Map.empty,
    private var empty: Set[Int] = Set.empty,
    /** Whether an undefined metric fails (a fit) or ranks last (a search's trial). */
    undefinedFails: Boolean = true) {

  /** The validation metrics of `state`, the average after `round`. */
  def run(state: SharedState, round: Int, last: Boolean): ListMap[String, Double] = {
    val rdd = new ValidationRDD(data, job, state, round, last, hosts, empty)
    val outcomes = sc.runJob(rdd, (it: Iterator[Outcome]) => it.next())
    outcomes.collectFirst { case r: Outcome.Refused => r }.foreach(r => throw r.exception)
    val scored = outcomes.collect { case e: Outcome.Evaluated if e.rows > 0 => e }
    hosts = scored.map(e => e.partition -> e.host).toMap
    empty = outcomes.collect { case e: Outcome.Empty => e.partition }.toSet
    if (scored.isEmpty) {
      throw new InvalidInputException(s"the validation set is empty: $source selects no row")
    }
    val merged = JsonMethods.parse(NativeBridge.evaluationMetrics(
      scored.sortBy(_.partition).map(_.evaluation)))
    val metrics = merged \ "metrics" match {
      case JObject(fields) => ListMap(fields.map { case (k, v) => k -> Envelope.number(v) }: _*)
      case other => throw new IllegalStateException(s"evaluation metrics are not an object: $other")
    }
    if (!metrics.contains(evalMetric)) {
      val task = merged \ "task" match { case JString(t) => t; case _ => "?" }
      throw new InvalidInputException(s"evalMetric '$evalMetric' does not apply to this " +
        s"$task model; its metrics are ${metrics.keys.mkString(", ")}")
    }
    if (metrics(evalMetric).isNaN && undefinedFails) {
      throw new InvalidInputException(s"evalMetric '$evalMetric' is undefined on the " +
        s"validation set ($source)" + (if (evalMetric == "auc") ": it holds one class only"
        else "") + "; choose another evalMetric or another validation set")
    }
    metrics
  }
}

private[spark] object Validation {
  /** Metric names by task, and which way is better (native/core evaluation.rs). */
  val RegressionMetrics: Seq[String] = Seq("loss", "rmse", "mse", "mae", "r2")
  val ClassifierMetrics: Seq[String] = Seq("loss", "logloss", "accuracy", "auc")
  val Metrics: Seq[String] = (RegressionMetrics ++ ClassifierMetrics).distinct
  val HigherIsBetter: Set[String] = Set("accuracy", "auc", "r2")
}

/**
 * Early stopping on one validation metric: training stops once `patience` rounds in a
 * row fail to improve on the best round by more than `minDelta`; the best round's
 * state is the model. Rounds are observed in order (a resumed fit replays its
 * history), so the decision depends on the metrics alone.
 */
private[spark] final class EarlyStopping(
    val metric: String,
    patience: Option[Int],
    minDelta: Double) {
  private val higher = Validation.HigherIsBetter.contains(metric)
  private var best: Option[(Int, Double)] = None
  private var stale = 0

  def bestRound: Option[Int] = best.map(_._1)
  def bestValue: Double = best.map(_._2).getOrElse(Double.NaN)

  /** Whether `patience` applies (otherwise the best round is only reported). */
  def stops: Boolean = patience.isDefined

  /** Records round `round`'s metrics; true when it is the new best. */
  def observe(round: Int, metrics: Map[String, Double]): Boolean =
    metrics.get(metric).filterNot(_.isNaN) match {
      case Some(v) if best.forall { case (_, b) => if (higher) v > b + minDelta else v < b - minDelta } =>
        best = Some(round -> v)
        stale = 0
        true
      case _ =>
        stale += 1
        false
    }

  /** Why training stops now, if it does. */
  def stopReason: Option[String] = patience.filter(stale >= _).map { p =>
    val (round, value) = best.getOrElse((-1, Double.NaN))
    val delta = if (minDelta > 0) s" by more than $minDelta" else ""
    f"early stopping: validation $metric did not improve$delta for $p round" +
      (if (p == 1) "" else "s") + f" after round $round (best $value%.6g)"
  }
}

/**
 * How a fit ended: the validation metric it watched, the round that scored best on it
 * (with early stopping: the round whose state is the model), and why training stopped.
 */
final case class FitSummary(
    evalMetric: String,
    bestRound: Int,
    bestValue: Double,
    rounds: Int,
    stoppedEarly: Boolean,
    stopReason: String) {

  def toJson: String = JsonMethods.compact(JsonMethods.render(JObject(
    "eval_metric" -> (if (evalMetric.isEmpty) JNull else JString(evalMetric)),
    "best_round" -> (if (bestRound < 0) JNull else JInt(bestRound)),
    "best_value" -> (if (bestValue.isNaN) JNull else JDouble(bestValue)),
    "rounds" -> JInt(rounds),
    "stopped_early" -> JBool(stoppedEarly),
    "stop_reason" -> JString(stopReason))))
}

object FitSummary {
  /** A fit without validation that ran `rounds` rounds. */
  def completed(rounds: Int): FitSummary =
    FitSummary("", -1, Double.NaN, rounds, stoppedEarly = false, s"completed all $rounds rounds")

  def fromJson(text: String): FitSummary = {
    val j = JsonMethods.parse(text)
    FitSummary(
      j \ "eval_metric" match { case JString(s) => s; case _ => "" },
      j \ "best_round" match { case JInt(n) => n.toInt; case _ => -1 },
      Envelope.number(j \ "best_value"),
      Envelope.number(j \ "rounds").toInt,
      j \ "stopped_early" == JBool(true),
      j \ "stop_reason" match { case JString(s) => s; case _ => "" })
  }
}

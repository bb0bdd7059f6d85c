package dev.stoker.spark

import scala.collection.immutable.ListMap

import dev.stoker.InvalidInputException
import dev.stoker.jni.NativeBridge
import org.apache.spark.SparkContext
import org.apache.spark.broadcast.Broadcast
import org.apache.spark.sql.SparkSession

/**
 * One model's rounds, one at a time (docs/spark.md, How `fit` works): broadcast the
 * input state, one task per partition trains on its node's server, the driver merges
 * the states into their sample-weighted mean with native code as they arrive (or, for
 * many partitions, treeAggregate merges them on executors first), the outer optimizer
 * (if any) steps, and the validation stage scores the average. What `fit` runs for
 * every round and a search's trial runs for each of its rungs: checkpoints, early
 * stopping and the history's keeping are the caller's.
 *
 * Not thread-safe: one thread drives one model's rounds (a search runs several
 * models' rounds on several threads, each with its own [[Rounds]]).
 */
private[spark] final class Rounds(
    params: StokerEstimator,
    spark: SparkSession,
    data: TrainingData,
    job: Broadcast[TrainJob],
    validation: Option[Validation],
    /** How the round's Spark jobs are described. */
    label: String,
    /** Whose progress line a round's phase updates ([[Progress]]), if anyone's. */
    progress: Option[String],
    /** Where the partitions are cached already (a search's feed), and which are empty. */
    private var hosts: Map[Int, String] = Map.empty,
    private var empty: Set[Int] = Set.empty) {
  private val sc: SparkContext = spark.sparkContext
  // The averaged state as tasks receive it, and the state it holds: broadcast once for
  // the round's validation and the next round's training.
  private var shared: Option[(Array[Byte], SharedState)] = None
  private val outer = params.getOuterOptimizer == "nesterov"

  /** The outer optimizer's momentum after the last round (None before its first step). */
  var momentum: Option[Array[Byte]] = None

  /**
   * Runs round `round` from `state` (None: the job's seeded initial weights); `last`
   * releases the partitions on the servers after it (a trial's job: its models), and
   * `validate` scores the average. Returns the round's averaged state (after the outer
   * optimizer's step) and its statistics.
   */
  def run(round: Int, total: Int, state: Option[Array[Byte]], last: Boolean,
      first: Boolean, validate: Boolean = true): (Array[Byte], RoundStats) = {
    val started = System.nanoTime()
    val input = state.map { s =>
      shared match {
        case Some((held, broadcast)) if held eq s => broadcast
        case _ => replaceShared(s)
      }
    }
    val rdd = new RoundRDD(data, job, input, round, last, hosts, empty)
    sc.setJobDescription(s"$label: round ${round + 1} of $total")
    progress.foreach(Progress.phase(_, if (first) {
      s"round ${round + 1}: starting node servers, sending partitions"
    } else s"round ${round + 1}"))
    val depth = Training.forcedDepth(spark).getOrElse(Training.aggregationDepth(
      rdd.getNumPartitions, state.map(_.length.toLong),
      sc.getConf.getSizeAsBytes("spark.driver.maxResultSize", "1g")))
    val sum =
      try {
        if (depth == 1) {
          val merged = new InOrderMerge(RoundSum.zero, RoundSum.merge)
          sc.runJob(rdd, (outcomes: Iterator[Outcome]) =>
            outcomes.foldLeft(RoundSum.zero)(RoundSum.add), merged.offer _)
          merged.result
        } else {
          rdd.treeAggregate(RoundSum.zero)(RoundSum.add, RoundSum.merge, depth)
        }
      } finally close()
    sum.refused.foreach(r => throw r.exception)
    val total_sum = sum.sum.getOrElse(throw new InvalidInputException(
      "the training DataFrame has no rows (every partition is empty)"))
    val mean = NativeBridge.withSamples(total_sum, sum.samples)
    // The outer optimizer steps from the round's input state; round 0's (the servers'
    // seeded initial weights) is not on the driver, so it starts at round 1.
    val averaged = state match {
      case Some(previous) if outer =>
        val stepped = NativeBridge.outerStep(previous, mean, momentum.orNull,
          params.getOuterLearningRate, params.getOuterMomentum)
        momentum = Some(stepped(1))
        stepped(0)
      case _ => mean
    }
    hosts = sum.hosts
    empty = sum.empty
    val metrics = validation.filter(_ => validate).map { v =>
      sc.setJobDescription(s"$label: validation of round ${round + 1} of $total")
      progress.foreach(Progress.phase(_, s"validation of round ${round + 1}"))
      v.run(replaceShared(averaged), round, last)
    }.getOrElse(ListMap.empty[String, Double])
    val seconds = (System.nanoTime() - started) / 1e9
    (averaged, RoundStats(round, sum.loss, sum.lossFirst, sum.samples, sum.trained,
      seconds, sum.slowestSeconds, metrics, sum.learningRate))
  }

  /** Destroys the broadcast state, if one is held. */
  def close(): Unit = {
    shared.foreach(_._2.destroy())
    shared = None
  }

  private def replaceShared(state: Array[Byte]): SharedState = {
    close()
    val broadcast = SharedState.of(sc, broadcastable(state))
    shared = Some(state -> broadcast)
    broadcast
  }

  /** The state as broadcast: without optimizer tensors unless they are averaged. */
  private def broadcastable(state: Array[Byte]): Array[Byte] =
    if (params.getAverageOptimizerState) state else NativeBridge.withoutOptimizer(state)
}

package dev.stoker.spark

import scala.reflect.ClassTag

import dev.stoker.jni.{IpcBuffer, NativeBridge}
import org.apache.spark.{Partition, TaskContext}
import org.apache.spark.broadcast.Broadcast
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.DataFrame
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.stoker.{ArrowBatches, ColumnarBatches}
import org.apache.spark.sql.vectorized.ColumnarBatch

/**
 * A stage of a fit over its cached partitions: one task per data partition, each
 * yielding its [[Outcome]] from this node's server. The data partition is computed
 * only when the server misses it, so stages after the first read no rows from Spark;
 * a partition known to be empty takes no part; tasks prefer the host whose server
 * already holds their partition. Subclasses say what the task asks the server.
 */
private[spark] abstract class PartitionStage(
    data: TrainingData,
    job: Broadcast[TrainJob],
    hosts: Map[Int, String],
    empty: Set[Int])
  extends RDD[Outcome](data.rdd)(ClassTag(classOf[Outcome])) {

  /** The task of partition `p`: `rows` computes the partition's Arrow stream. */
  protected def run(job: TrainJob, p: Int, rows: () => (IpcBuffer, Long)): Outcome

  override protected def getPartitions: Array[Partition] = firstParent[Any].partitions

  override def compute(split: Partition, context: TaskContext): Iterator[Outcome] = {
    val p = split.index
    if (empty.contains(p)) return Iterator(Outcome.Empty(p))
    Iterator(run(job.value, p, () => data.ipc(firstParent[Any].iterator(split, context),
      job.value)))
  }

  override protected def getPreferredLocations(split: Partition): Seq[String] =
    hosts.get(split.index).toSeq
}

/** One round's training as a Spark stage ([[PartitionStage]]). */
private[spark] final class RoundRDD(
    data: TrainingData,
    job: Broadcast[TrainJob],
    state: Option[SharedState],
    round: Int,
    last: Boolean,
    hosts: Map[Int, String],
    empty: Set[Int])
  extends PartitionStage(data, job, hosts, empty) {

  override protected def run(job: TrainJob, p: Int, rows: () => (IpcBuffer, Long)): Outcome =
    PartitionTask.train(job, p, round, last, state.map(_.input), rows)
}

/**
 * Sends each partition to its node's server cache under `job` (training or validation
 * rows) without training: a search's feed, so that its trials, training at once, find
 * every partition cached instead of each sending it.
 */
private[spark] final class FeedRDD(data: TrainingData, job: Broadcast[TrainJob],
    validation: Boolean)
  extends PartitionStage(data, job, Map.empty, Set.empty) {

  override protected def run(job: TrainJob, p: Int, rows: () => (IpcBuffer, Long)): Outcome = {
    val ipc = rows()
    if (ipc._2 == 0) return Outcome.Empty(p)
    try Outcome.Fed(p, PartitionTask.feed(job, p, ipc, validation), PartitionTask.executorHost)
    catch {
      // The same data meets the same refusal: fail the search at once, not after retries.
      case e: dev.stoker.InvalidInputException =>
        Outcome.Refused(p, "invalid_input", e.getMessage, validation)
      case e: dev.stoker.ResourceExhaustedException =>
        Outcome.Refused(p, "resource_exhausted", e.getMessage, validation)
    }
  }
}

private[spark] object FeedRDD {
  /** Sends every partition of `data` under `job`; the partitions fed (with their rows
   *  and hosts) and those that are empty. A refusal fails the call. */
  def run(sc: org.apache.spark.SparkContext, data: TrainingData, job: Broadcast[TrainJob],
      validation: Boolean): (Seq[Outcome.Fed], Set[Int]) = {
    val outcomes = sc.runJob(new FeedRDD(data, job, validation),
      (it: Iterator[Outcome]) => it.next())
    outcomes.collectFirst { case r: Outcome.Refused => r }.foreach(r => throw r.exception)
    (outcomes.collect { case f: Outcome.Fed => f }.toSeq,
      outcomes.collect { case e: Outcome.Empty => e.partition }.toSet)
  }
}

/**
 * An averaged state as tasks receive it: broadcast once, named by an id fixed on the
 * driver, so that a server's later tasks (of the round's validation, then of the next
 * round's training: the same state) send the name instead of the state.
 */
private[spark] final case class SharedState(id: String, bytes: Broadcast[Array[Byte]]) {
  /** The task's view: the broadcast is read only if the task's server asks for it. */
  def input: RoundInput = new RoundInput(id, () => bytes.value)

  def destroy(): Unit = bytes.destroy()
}

private[spark] object SharedState {
  def of(sc: org.apache.spark.SparkContext, state: Array[Byte]): SharedState =
    SharedState(java.util.UUID.randomUUID().toString, sc.broadcast(state))
}

/**
 * A fit's training data, planned once: the DataFrame's batches when its plan is a
 * columnar scan of flat numeric columns (a cached DataFrame, Parquet), copied into Arrow
 * a column at a time; otherwise its rows, through Spark's Arrow writer.
 */
private[spark] final class TrainingData private (val rdd: RDD[_], columnar: Boolean)
  extends Serializable {

  /** One partition's Arrow IPC stream and its row count. */
  def ipc(partition: Iterator[Any], job: TrainJob): (IpcBuffer, Long) =
    if (columnar) {
      ColumnarBatches.toIpcStream(partition.asInstanceOf[Iterator[ColumnarBatch]], job.schema,
        job.timeZone, job.batchRows)
    } else {
      ArrowBatches.toIpcStream(partition.asInstanceOf[Iterator[InternalRow]], job.schema,
        job.timeZone, job.batchRows)
    }
}

private[spark] object TrainingData {
  def of(prepared: DataFrame): TrainingData = ColumnarBatches.of(prepared) match {
    case Some(batches) => new TrainingData(batches, columnar = true)
    case None => new TrainingData(ArrowBatches.internalRows(prepared), columnar = false)
  }
}

/**
 * The aggregate of a round: the sample-weighted mean of the partitions' states so far
 * and the round's statistics. A trained state is its own mean (weight: its samples);
 * merging two means updates the first one's bytes in place with native code
 * (docs/engine.md), so the aggregation copies and allocates nothing the size of a state
 * beyond what Spark moves, and what it moves is one state per merged value.
 */
private[spark] final case class RoundSum(
    sum: Option[Array[Byte]],
    samples: Long,
    steps: Long,
    lossSum: Double,
    lossFirstSum: Double,
    trained: Int,
    hosts: Map[Int, String],
    empty: Set[Int],
    refused: Option[Outcome.Refused],
    slowestSeconds: Double,
    learningRate: Double = Double.NaN) {

  /** Sample-weighted mean of the partitions' last-epoch losses. */
  def loss: Double = if (samples > 0) lossSum / samples else Double.NaN
  def lossFirst: Double = if (samples > 0) lossFirstSum / samples else Double.NaN
}

/**
 * The driver's merge of per-partition results (a round's states, a matrix kernel's
 * moments), in partition order whatever order they arrive in: merging floats is not
 * associative in its last bits, so a fixed order is what makes a rerun reproduce the
 * same bits. A result that arrives ahead of its turn waits (the driver holds it, as
 * Spark already has).
 */
private[spark] final class InOrderMerge[T](zero: T, merge: (T, T) => T) {
  private val pending = scala.collection.mutable.Map.empty[Int, T]
  private var next = 0
  private var merged = zero

  /** Spark's result handler: called once per partition, on the scheduler's thread. */
  def offer(partition: Int, value: T): Unit = synchronized {
    pending(partition) = value
    while (pending.contains(next)) {
      merged = merge(merged, pending.remove(next).get)
      next += 1
    }
  }

  def result: T = synchronized(merged)
}

private[spark] object RoundSum {
  val zero: RoundSum = RoundSum(None, 0, 0, 0.0, 0.0, 0, Map.empty, Set.empty, None, 0.0)

  def add(acc: RoundSum, outcome: Outcome): RoundSum = outcome match {
    case t: Outcome.Trained =>
      val weight = t.samples.toDouble
      merge(acc, RoundSum(
        sum = Some(t.state),
        samples = t.samples,
        steps = t.steps,
        lossSum = t.lossLast * weight,
        lossFirstSum = t.lossFirst * weight,
        trained = 1,
        hosts = Map(t.partition -> t.host),
        empty = Set.empty,
        refused = None,
        slowestSeconds = t.seconds,
        learningRate = t.learningRate))
    case e: Outcome.Empty => acc.copy(empty = acc.empty + e.partition)
    case r: Outcome.Refused => acc.copy(refused = acc.refused.orElse(Some(r)))
    case other @ (_: Outcome.Evaluated | _: Outcome.Fed | _: Outcome.Computed) =>
      throw new IllegalStateException(s"a training round got $other")
  }

  /** Spark's aggregate lets a combine step modify and return its first argument: the
   *  first mean's bytes become the merged mean. */
  def merge(a: RoundSum, b: RoundSum): RoundSum = RoundSum(
    sum = (a.sum, b.sum) match {
      case (Some(x), Some(y)) if a.samples > 0 && b.samples > 0 =>
        NativeBridge.merge(x, a.samples.toDouble, y, b.samples.toDouble)
        Some(x)
      case (Some(x), Some(_)) if a.samples > 0 => Some(x)
      case (x, y) => y.orElse(x)
    },
    samples = a.samples + b.samples,
    steps = a.steps + b.steps,
    lossSum = a.lossSum + b.lossSum,
    lossFirstSum = a.lossFirstSum + b.lossFirstSum,
    trained = a.trained + b.trained,
    hosts = a.hosts ++ b.hosts,
    empty = a.empty ++ b.empty,
    refused = a.refused.orElse(b.refused),
    slowestSeconds = math.max(a.slowestSeconds, b.slowestSeconds),
    // Every partition of a round ends it at the same rate (schedule.rs).
    learningRate = if (a.learningRate.isNaN) b.learningRate else a.learningRate)
}

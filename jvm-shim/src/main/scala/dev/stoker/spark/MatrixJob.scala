package dev.stoker.spark

import java.nio.{ByteBuffer, ByteOrder}
import java.util.UUID

import dev.stoker.InvalidInputException
import dev.stoker.jni.NativeBridge
import org.apache.spark.SparkContext
import org.apache.spark.broadcast.Broadcast
import org.apache.spark.sql.{Column, Dataset}
import org.apache.spark.sql.stoker.ArrowBatches
import org.json4s._

/**
 * A DataFrame's columns as a matrix on the servers (docs/linalg.md): a matrix job whose
 * partitions are cached on their nodes' servers the first time a pass needs them, kernel
 * passes over them (one Spark stage each, results combined on the driver in partition
 * order by native code), and dense solves on the driver node's server. The training
 * path's parts do the work: [[PartitionStage]] and [[PartitionTask]]'s recovery (create
 * the job, send a missed partition), [[InOrderMerge]], the same put path and cache.
 *
 * `columns` are sent in order; `names` are what errors and results call them.
 */
private[spark] final class MatrixJob(
    dataset: Dataset[_],
    columns: Seq[Column],
    names: Seq[String],
    precision: String,
    target: ServerTarget,
    what: String) extends AutoCloseable {
  ArrowBatches.requireClassic(dataset)
  MatrixJob.checkPrecision(precision)
  private val spark = dataset.sparkSession
  private val sc: SparkContext = spark.sparkContext
  private val prepared = dataset.select(columns: _*)
  val name = s"spark-linalg-${UUID.randomUUID().toString.take(8)}"
  private val job = TrainJob(
    name = name,
    createJob = JObject(
      "job" -> JString(name),
      "features" -> JArray(names.map(JString(_)).toList),
      "label" -> JString(""),
      "matrix" -> JObject("precision" -> JString(precision)),
      "keep_existing" -> JBool(true)),
    modelBlob = None,
    schema = prepared.schema,
    timeZone = spark.conf.get("spark.sql.session.timeZone"),
    epochs = 0,
    server = target,
    batchRows = Training.PutBatchRows,
    dataVersion = "1")
  private val data = TrainingData.of(prepared)
  private val jobBroadcast: Broadcast[TrainJob] = sc.broadcast(job)
  private var hosts = Map.empty[Int, String]
  private var empty = Set.empty[Int]
  private var released = false
  Training.startLocalServer(target)

  /** Rows seen by the last pass. */
  var rows: Long = 0L

  /**
   * Runs kernel `op` (with `args` and `blobs`) on every partition and returns the
   * results folded in partition order. `last` releases each partition after it.
   */
  def pass(op: String, args: List[(String, JValue)] = Nil,
      blobs: Seq[(String, Array[Byte])] = Nil, last: Boolean = false): Array[Byte] = {
    val body = JObject(("op" -> JString(op)) :: args)
    val stage = new KernelRDD(data, jobBroadcast, body, blobs, last, hosts, empty)
    val merged = new InOrderMerge[Option[Outcome.Computed]](None, {
      case (None, b) => b
      case (a, None) => a
      case (Some(a), Some(b)) =>
        Some(a.copy(rows = a.rows + b.rows, result = NativeBridge.linalgCombine(a.result,
          b.result)))
    })
    var refused: Option[Outcome.Refused] = None
    var seenEmpty = Set.empty[Int]
    var seenHosts = Map.empty[Int, String]
    val description = sc.getLocalProperty("spark.job.description")
    sc.setJobDescription(s"stoker: $what ($op)")
    try {
      sc.runJob(stage, (it: Iterator[Outcome]) => it.next(), (p: Int, o: Outcome) => o match {
        case c: Outcome.Computed =>
          seenHosts += p -> c.host
          merged.offer(p, Some(c))
        case _: Outcome.Empty =>
          seenEmpty += p
          merged.offer(p, None)
        case r: Outcome.Refused =>
          refused = refused.orElse(Some(r))
          merged.offer(p, None)
        case other => throw new IllegalStateException(s"a matrix pass got $other")
      })
    } finally sc.setJobDescription(description)
    refused.foreach(r => throw r.exception)
    if (last) released = true
    hosts = seenHosts
    empty = seenEmpty
    val result = merged.result.getOrElse(throw new InvalidInputException(
      s"$what: the DataFrame has no rows"))
    rows = result.rows
    result.result
  }

  /** A dense `linalg` op on the driver node's server. */
  def solve(op: String, args: List[(String, JValue)],
      blobs: Seq[(String, Array[Byte])]): Envelope =
    MatrixJob.solve(target, op, args, blobs)

  /** Drops what the servers still hold of this job (nothing after a `last` pass). */
  override def close(): Unit = {
    try if (!released) Servers.dropJob(sc, target, name)
    finally jobBroadcast.destroy()
  }
}

private[spark] object MatrixJob {
  def checkPrecision(precision: String): Unit =
    if (precision != "float32" && precision != "float64") {
      throw new InvalidInputException(
        s"precision '$precision' is not one of float32, float64")
    }

  /** A dense `linalg` op on the driver node's server. */
  def solve(target: ServerTarget, op: String, args: List[(String, JValue)],
      blobs: Seq[(String, Array[Byte])]): Envelope =
    Servers.withClient(target) { client =>
      Envelope.call(client, "linalg", Envelope(JObject(("op" -> JString(op)) :: args), blobs))
    }

  /** Raw little-endian float64 (how dense matrices travel). */
  def doubles(bytes: Array[Byte]): Array[Double] = {
    val out = new Array[Double](bytes.length / 8)
    ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(out)
    out
  }

  def bytes(values: Array[Double]): Array[Byte] = {
    val buffer = ByteBuffer.allocate(values.length * 8).order(ByteOrder.LITTLE_ENDIAN)
    buffer.asDoubleBuffer().put(values)
    buffer.array()
  }

  /** A JSON array of numbers. */
  def numbers(v: JValue): Array[Double] = v match {
    case JArray(items) => items.map(Envelope.number).toArray
    case _ => Array.empty
  }
}

/** One kernel pass of a [[MatrixJob]] as a Spark stage ([[PartitionStage]]). */
private[spark] final class KernelRDD(
    data: TrainingData,
    job: Broadcast[TrainJob],
    body: JObject,
    blobs: Seq[(String, Array[Byte])],
    last: Boolean,
    hosts: Map[Int, String],
    empty: Set[Int])
  extends PartitionStage(data, job, hosts, empty) {

  override protected def run(job: TrainJob, p: Int,
      rows: () => (dev.stoker.jni.IpcBuffer, Long)): Outcome =
    PartitionTask.linalg(job, p, body, blobs, last, rows)
}

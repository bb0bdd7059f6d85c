package dev.stoker.spark

import dev.stoker.{CacheMissException, InvalidInputException, NotFoundException,
  ResourceExhaustedException, StokerException}
import dev.stoker.jni.{IpcBuffer, NativeClient}
import org.apache.spark.{SparkEnv, TaskContext, TaskKilledException}
import org.apache.spark.sql.types.StructType
import org.json4s._

/**
 * What every task of one `fit` (or one trial of a search) shares, broadcast once. A
 * trial's job trains on the partitions of its search's `data` job: they are put under
 * that job's name, and a server that lost it gets it back before the trial's.
 */
private[spark] final case class TrainJob(
    name: String,
    createJob: JObject,
    modelBlob: Option[Array[Byte]],
    schema: StructType,
    timeZone: String,
    epochs: Int,
    server: ServerTarget,
    batchRows: Int,
    dataVersion: String,
    data: Option[TrainJob] = None) {

  /** The job whose partitions the tasks put and train on. */
  def dataName: String = data.map(_.name).getOrElse(name)
}

/**
 * A round's input state as a task sees it: the id every partition of the round sends,
 * and the bytes, fetched only when this task's server does not hold the state yet.
 */
private[spark] final class RoundInput(val id: String, bytes: () => Array[Byte]) {
  lazy val value: Array[Byte] = bytes()
}

/** One partition's part of a round, as the task reports it to the driver. */
private[spark] sealed trait Outcome extends Serializable { def partition: Int }

private[spark] object Outcome {
  final case class Trained(
      partition: Int,
      samples: Long,
      steps: Long,
      lossFirst: Double,
      lossLast: Double,
      seconds: Double,
      host: String,
      state: Array[Byte],
      learningRate: Double = Double.NaN) extends Outcome

  /** The partition has no rows; it takes no part in training. */
  final case class Empty(partition: Int) extends Outcome

  /** A validation partition scored: its rows and the server's `evaluation` sums (JSON). */
  final case class Evaluated(partition: Int, rows: Long, evaluation: String, host: String)
    extends Outcome

  /** A matrix kernel's result on a partition (docs/linalg.md): its rows and bytes. */
  final case class Computed(partition: Int, rows: Long, result: Array[Byte], host: String)
    extends Outcome

  /** A partition sent to its server's cache (a search's feed): its rows. */
  final case class Fed(partition: Int, rows: Long, host: String) extends Outcome

  /**
   * The server refused the partition's data or state (invalid input): returned, not
   * thrown, so the driver fails the fit at once with this message and class instead of
   * Spark retrying a task that can never succeed.
   */
  final case class Refused(partition: Int, kind: String, message: String,
      validation: Boolean = false) extends Outcome {
    /**
     * The exception the driver throws: the class the task caught, the partition named
     * once (the server's own messages name it already: "partition 3 of job ...").
     */
    def exception: StokerException = {
      val name = s"${if (validation) "validation " else ""}partition $partition"
      val text = if (message.contains(s"$name of job")) message else s"$name: $message"
      if (kind == "resource_exhausted") new ResourceExhaustedException(text)
      else new InvalidInputException(text)
    }
  }
}

/**
 * A task's side of a round: train the partition on this node's server, sending the
 * partition only when the server does not hold it (first round, eviction, or a task
 * that moved to another node), and creating the job there only when it is missing.
 * Each recovery happens at most once per task, so a failure cannot loop.
 */
private[spark] object PartitionTask {

  def train(
      job: TrainJob,
      partition: Int,
      round: Int,
      last: Boolean,
      state: Option[RoundInput],
      data: () => (IpcBuffer, Long)): Outcome =
    recovering(job, partition, validation = false, data) { (client, withBytes) =>
      trainOnce(client, job, partition, round, last, state, withBytes)
    }

  /**
   * A task's side of a round's validation: score the round's averaged state on this
   * validation partition on this node's server, sending the partition (and creating
   * the job) only when the server lacks them, as [[train]] does.
   */
  def evaluate(
      job: TrainJob,
      partition: Int,
      round: Int,
      last: Boolean,
      state: RoundInput,
      data: () => (IpcBuffer, Long)): Outcome =
    recovering(job, partition, validation = true, data) { (client, withBytes) =>
      val body = JObject(
        "job" -> JString(job.name),
        "split" -> JString("validation"),
        "partition" -> JInt(partition),
        "version" -> JString(job.dataVersion),
        "round" -> JInt(round),
        "release" -> JBool(last),
        "state_id" -> JString(state.id))
      val blobs = if (withBytes) Seq("state" -> state.value) else Nil
      val result = Envelope.call(client, "evaluate", Envelope(body, blobs))
      if (result.json \ "needs_state" == JBool(true)) None
      else {
        val rows = Envelope.number(result.json \ "rows")
        Some(Outcome.Evaluated(partition, if (rows.isNaN) 0L else rows.toLong, Envelope.compact(result.json \ "evaluation"),
          executorHost))
      }
    }

  /**
   * A task's side of a matrix pass: run the `linalg` kernel `body` (its `op` and
   * arguments) on this partition of a matrix job, sending the partition (and creating
   * the job) only when the server lacks them, as [[train]] does.
   */
  def linalg(
      job: TrainJob,
      partition: Int,
      body: JObject,
      blobs: Seq[(String, Array[Byte])],
      release: Boolean,
      data: () => (IpcBuffer, Long)): Outcome =
    recovering(job, partition, validation = false, data) { (client, _) =>
      val request = JObject(body.obj ++ List(
        "job" -> JString(job.name),
        "partition" -> JInt(partition),
        "version" -> JString(job.dataVersion),
        "release" -> JBool(release)))
      val result = Envelope.call(client, "linalg", Envelope(request, blobs))
      Some(Outcome.Computed(partition, Envelope.number(result.json \ "rows").toLong,
        result.blob("result").getOrElse(throw new StokerException(
          s"linalg of partition $partition returned no result")), executorHost))
    }

  /**
   * Runs `attempt` on this node's server until it gives an outcome, recovering at most
   * once each from a missing job (create it), a missing partition (send it: the data
   * is computed only then) and a state the server does not hold (`attempt` returns
   * None; it is called again with the state's bytes), so a failure cannot loop.
   * Refusals come back as [[Outcome.Refused]]: retrying cannot help them.
   */
  private def recovering(
      job: TrainJob,
      partition: Int,
      validation: Boolean,
      data: () => (IpcBuffer, Long))(
      attempt: (NativeClient, Boolean) => Option[Outcome]): Outcome = {
    try {
      Servers.withClient(job.server) { client =>
        var created = false
        var sent = false
        // The state goes by its id first: most tasks of a round find it on their
        // server, sent there by an earlier task of the same round.
        var withBytes = false
        var outcome: Option[Outcome] = None
        while (outcome.isEmpty) {
          try {
            outcome = attempt(client, withBytes)
            if (outcome.isEmpty) {
              if (withBytes) {
                throw new StokerException(
                  s"the server asked for a state it was sent (partition $partition)")
              }
              withBytes = true
            }
          } catch {
            // A task of a cancelled fit must not bring back the job the driver drops.
            case _: NotFoundException if !created =>
              stopIfKilled()
              createJob(client, job)
              created = true
            case _: CacheMissException if !sent =>
              stopIfKilled()
              sent = true
              val rows = data()
              val put1 = try put(client, job, partition, validation, rows)
              catch {
                // Another partition's last request on this server released the job's
                // last cached partition, and the job with it, between this task's
                // create and its put (a single-pass job, or a fit of one round): the
                // job comes back once, here, instead of Spark retrying the task.
                case _: NotFoundException =>
                  stopIfKilled()
                  createJob(client, job)
                  put(client, job, partition, validation, rows)
              }
              if (!put1) outcome = Some(Outcome.Empty(partition))
          }
        }
        outcome.get
      }
    } catch {
      // Retrying cannot help these: the same data or state meets the same refusal.
      case e: InvalidInputException =>
        Outcome.Refused(partition, "invalid_input", e.getMessage, validation)
      case e: ResourceExhaustedException =>
        Outcome.Refused(partition, "resource_exhausted", e.getMessage, validation)
    }
  }

  /** Ends a task that Spark killed (its job cancelled or failed) before it does more. */
  private def stopIfKilled(): Unit =
    if (Option(TaskContext.get()).exists(_.isInterrupted())) {
      throw new TaskKilledException("stoker: the task was killed")
    }

  /** Sends one partition (creating the job if needed); returns its rows. */
  def feed(job: TrainJob, partition: Int, data: (IpcBuffer, Long),
      validation: Boolean = false): Long =
    Servers.withClient(job.server) { client =>
      createJob(client, job)
      if (put(client, job, partition, validation, data)) data._2 else 0L
    }

  private def trainOnce(
      client: NativeClient,
      job: TrainJob,
      partition: Int,
      round: Int,
      last: Boolean,
      state: Option[RoundInput],
      withBytes: Boolean): Option[Outcome.Trained] = {
    val body = JObject(
      List(
        "job" -> JString(job.name),
        "partition" -> JInt(partition),
        "version" -> JString(job.dataVersion),
        "round" -> JInt(round),
        "epochs" -> JInt(job.epochs),
        "release" -> JBool(last)) ++
        state.map(s => "state_id" -> JString(s.id)))
    val blobs = if (withBytes) state.map(s => "state" -> s.value).toSeq else Nil
    val result = Envelope.call(client, "train_round", Envelope(body, blobs))
    if (result.json \ "needs_state" == JBool(true)) return None
    def num(field: String): Double = Envelope.number(result.json \ field)
    Some(Outcome.Trained(
      partition = partition,
      samples = num("samples").toLong,
      steps = num("steps").toLong,
      lossFirst = num("loss_first"),
      lossLast = num("loss_last"),
      seconds = num("seconds"),
      host = executorHost,
      learningRate = num("learning_rate"),
      state = result.blob("state").getOrElse(
        throw new StokerException(s"train_round of partition $partition returned no state"))))
  }

  private def createJob(client: NativeClient, job: TrainJob): Unit = {
    job.data.foreach(createJob(client, _))
    Envelope.call(client, "create_job",
      Envelope(job.createJob, job.modelBlob.map("model" -> _).toSeq))
  }

  /** Sends the partition's Arrow stream to the server; false when it has no rows. */
  private def put(
      client: NativeClient,
      job: TrainJob,
      partition: Int,
      validation: Boolean,
      data: (IpcBuffer, Long)): Boolean = {
    if (data._2 == 0) return false
    if (validation) client.putValidationPartition(job.dataName, partition, job.dataVersion, data._1)
    else client.putPartition(job.dataName, partition, job.dataVersion, data._1)
    true
  }

  /** The host Spark knows this executor by (what preferred locations name). */
  def executorHost: String =
    Option(SparkEnv.get).map(_.blockManager.blockManagerId.host).getOrElse(Servers.hostName)
}

package dev.stoker.spark

import java.util.UUID
import java.util.concurrent.ConcurrentHashMap

import dev.stoker.{InvalidInputException, StokerException}
import org.apache.hadoop.fs.Path
import org.apache.spark.sql.{DataFrame, Dataset, SparkSession}
import org.apache.spark.sql.stoker.ArrowBatches
import org.json4s._
import org.slf4j.LoggerFactory

/** What `fit` produced: the averaged state (the best round's, with early stopping) and
 *  how it got there. */
private[spark] final case class Trained(
    state: Array[Byte],
    modelBlob: Option[Array[Byte]],
    history: Seq[RoundStats],
    summary: FitSummary)

/**
 * A fit: plans the data and the job, runs [[Rounds]] round after round, checkpoints and
 * records each, stops early when validation says so, and cleans up after a failure.
 */
private[spark] final class Training(params: StokerEstimator, dataset: Dataset[_]) {
  private val log = LoggerFactory.getLogger(classOf[StokerEstimator])
  ArrowBatches.requireClassic(dataset)
  private val spark: SparkSession = dataset.sparkSession
  private val sc = spark.sparkContext

  /** The columns sent to the server (training rows, then validation rows if any) and
   *  the job every task shares. */
  private[spark] def plan(): (DataFrame, Option[DataFrame], TrainJob) = {
    val (featureColumns, featureNames) = Features.columns(dataset.schema,
      params.getFeatureCols, params.getFeaturesCol)
    val label = Features.label(dataset.schema, params.getLabelCol)
    if (featureNames.contains(params.getLabelCol)) {
      throw new InvalidInputException(
        s"column '${params.getLabelCol}' is both a feature and the label")
    }
    val columns = featureColumns :+ label
    val (prepared, validation) = Training.split(params, dataset, featureNames, columns)
    val modelBlob = readModel()
    val name = s"spark-${params.uid}-${UUID.randomUUID().toString.take(8)}"
    val job = TrainJob(
      name = name,
      createJob = createJobBody(name, featureNames, modelBlob.isEmpty),
      modelBlob = modelBlob,
      schema = prepared.schema,
      timeZone = spark.conf.get("spark.sql.session.timeZone"),
      epochs = params.getLocalEpochs,
      server = params.target,
      batchRows = Training.PutBatchRows,
      dataVersion = "1")
    (prepared, validation, job)
  }

  /**
   * A trial's job in a search: these params' model, optimizer and local epochs, trained
   * on the partitions the search put once for `data` (the search's [[plan]]).
   */
  private[spark] def trialJob(name: String, data: TrainJob): TrainJob = {
    val features = (data.createJob \ "features") match {
      case JArray(values) => values.collect { case JString(f) => f }
      case _ => Nil
    }
    val blob = readModel()
    val body = JObject(createJobBody(name, features, blob.isEmpty).obj :+
      ("data" -> JString(data.name)))
    data.copy(name = name, createJob = body, modelBlob = blob, epochs = params.getLocalEpochs,
      data = Some(data))
  }

  def run(): Trained = {
    val (prepared, validation, job) = plan()
    Training.startLocalServer(job.server)
    // The fit's jobs run in a group (the caller's, or one of its own), so that a failed
    // fit can wait for the tasks its jobs left running before cleaning up after them.
    val callerGroup = Option(sc.getLocalProperty(Training.JobGroup))
    val group = callerGroup.getOrElse(s"stoker-fit-${job.name}")
    if (callerGroup.isEmpty) sc.setLocalProperty(Training.JobGroup, group)
    try train(prepared, validation, job)
    catch {
      case e: Exception =>
        // A fit that fails or is cancelled leaves its job (cached partitions, the
        // round's state) on every server it reached; a finished one leaves nothing
        // (its last round releases each partition). Tasks of a cancelled job can
        // still be running and would create the job again (PartitionTask stops
        // short of that once Spark has killed them), so they end first.
        try {
          Training.awaitTasks(sc, group, Training.CleanupWaitMs)
          Servers.dropJob(sc, job.server, job.name)
        } catch { case cleanup: Exception => e.addSuppressed(cleanup) }
        throw e
    } finally if (callerGroup.isEmpty) sc.setLocalProperty(Training.JobGroup, null)
  }

  private def train(prepared: DataFrame, validationRows: Option[DataFrame],
      job: TrainJob): Trained = {
    // Planned once: every round reuses this RDD, so joins and shuffles upstream run
    // once and later rounds (which read no rows unless a server missed) reuse them.
    val data = TrainingData.of(prepared)
    val jobBroadcast = sc.broadcast(job)
    val metric = Option(params.getEvalMetric).filter(_.nonEmpty).getOrElse("loss")
    val validation = validationRows.map(v => new Validation(sc, TrainingData.of(v), jobBroadcast,
      Training.validationSource(params), metric))
    val checkpoints = Option(params.getCheckpointDir).filter(_.nonEmpty)
      .map(dir => new Checkpoints(dir, sc.hadoopConfiguration))
    val resumed = checkpoints.flatMap(_.latest())
    var state: Option[Array[Byte]] = resumed.map(_._2)
    var history: Vector[RoundStats] = resumed.map(_._3.toVector).getOrElse(Vector.empty)
    val first = resumed.map(_._1 + 1).getOrElse(0)
    resumed.foreach { case (r, _, _) =>
      log.info(s"stoker: resuming from the checkpoint of round $r in ${params.getCheckpointDir}")
    }
    // Early stopping replays a resumed history, so a resumed fit stops where the
    // uninterrupted one would, and returns the same best round.
    val stopping = validation.map(_ => new EarlyStopping(metric,
      Some(params.getEarlyStoppingRounds).filter(_ > 0), params.getEarlyStoppingMinDelta))
    stopping.foreach(s => history.foreach(h => s.observe(h.round, h.validation)))
    var best: Option[Array[Byte]] = for {
      s <- stopping; r <- s.bestRound; c <- checkpoints; bytes <- c.state(r)
    } yield bytes
    var stopReason: Option[String] = stopping.flatMap(_.stopReason)
    val rounds = new Rounds(params, spark, data, jobBroadcast, validation, "stoker fit",
      Some(params.uid))
    if (params.getOuterOptimizer == "nesterov") rounds.momentum = checkpoints.flatMap(_.momentum())
    val total = params.getRounds
    Progress.start(params.uid, total, first)
    val description = sc.getLocalProperty("spark.job.description")
    try {
      var round = first
      while (round < total && stopReason.isEmpty) {
        val (averaged, stats) = rounds.run(round, total, state, last = round == total - 1,
          first = round == first)
        state = Some(averaged)
        history :+= stats
        checkpoints.foreach { c =>
          rounds.momentum.foreach(c.saveMomentum)
          c.save(round, averaged, history)
        }
        stopping.foreach { s =>
          if (s.observe(round, stats.validation)) best = Some(averaged)
          stopReason = s.stopReason
        }
        Progress.update(params.uid, stats)
        log.info(s"stoker fit ${round + 1}/$total: $stats")
        round += 1
      }
    } finally {
      rounds.close()
      sc.setJobDescription(description)
      Progress.finish(params.uid)
      jobBroadcast.destroy()
    }
    val finalState = state.getOrElse(throw new StokerException(
      s"checkpoint directory ${params.getCheckpointDir} already holds all $total rounds " +
        "but no state"))
    // A fit that stopped early left its partitions on the servers (only a last round
    // releases them).
    if (stopReason.isDefined && history.lastOption.exists(_.round >= first)) {
      Servers.dropJob(sc, job.server, job.name)
    }
    val returned = stopping.filter(_.stops).flatMap(_ => best).getOrElse(finalState)
    val summary = stopping match {
      case Some(s) => FitSummary(metric, s.bestRound.getOrElse(-1), s.bestValue, history.size,
        stopReason.isDefined, stopReason.getOrElse(s"completed all $total rounds"))
      case None => FitSummary.completed(history.size)
    }
    stopReason.foreach(r => log.info(s"stoker fit: $r"))
    Trained(returned, job.modelBlob, history, summary)
  }

  /**
   * Streams every partition to its node's server (create the job, convert to Arrow,
   * DoPut; the server converts to tensors and caches) without training. The partitions
   * stay cached until evicted. Returns the rows sent: the data path of a first round.
   */
  def feed(): Long = {
    val (prepared, _, job) = plan()
    val jobBroadcast = sc.broadcast(job)
    try FeedRDD.run(sc, TrainingData.of(prepared), jobBroadcast, validation = false)._1
      .map(_.rows).sum
    finally jobBroadcast.destroy()
  }

  /** One partition state per non-empty partition after one round from `state` (no
   *  averaging): for inspecting what averaging combines. */
  def partitionStates(round: Int, state: Option[Array[Byte]]): Seq[Outcome.Trained] = {
    val (prepared, _, job) = plan()
    val jobBroadcast = sc.broadcast(job)
    val stateBroadcast = state.map(SharedState.of(sc, _))
    val rdd = new RoundRDD(TrainingData.of(prepared), jobBroadcast, stateBroadcast,
      round, true, Map.empty, Set.empty)
    val outcomes =
      try rdd.collect().toSeq
      finally {
        stateBroadcast.foreach(_.destroy())
        jobBroadcast.destroy()
      }
    outcomes.collectFirst { case r: Outcome.Refused => r }.foreach(r => throw r.exception)
    outcomes.collect { case t: Outcome.Trained => t }.sortBy(_.partition)
  }

  /** The TorchScript archive's bytes, read on the driver (any Hadoop file system). */
  private def readModel(): Option[Array[Byte]] = {
    if (params.modelSpecJson.isDefined) return None
    val path = new Path(params.getModel.trim)
    if (!Files.exists(path, sc.hadoopConfiguration)) {
      throw new InvalidInputException(
        s"model '${params.getModel}' is neither a JSON model spec nor an existing TorchScript file")
    }
    Some(Files.read(path, sc.hadoopConfiguration))
  }

  /** The engine's schedule (native/engine/src/schedule.rs) for the params; None: a
   *  constant rate. */
  private def schedule: Option[JObject] = {
    if (params.getLrSchedule == "constant" && params.getWarmupRounds == 0) return None
    if (params.getMinLearningRate > params.getLearningRate) {
      throw new InvalidInputException(s"minLearningRate (${params.getMinLearningRate}) is " +
        s"above learningRate (${params.getLearningRate})")
    }
    Some(JObject(
      "kind" -> JString(params.getLrSchedule),
      "total_rounds" -> JDouble(params.getRounds.toDouble),
      "warmup_rounds" -> JDouble(params.getWarmupRounds),
      "step_rounds" -> JDouble(params.getLrStepRounds.toDouble),
      "gamma" -> JDouble(params.getLrGamma),
      "min_factor" -> JDouble(params.getMinLearningRate / params.getLearningRate)))
  }

  private def createJobBody(name: String, features: Seq[String], withSpec: Boolean): JObject = {
    val optimizer = JObject(List(
      "name" -> JString(params.getOptimizer),
      "lr" -> JDouble(params.getLearningRate),
      "momentum" -> JDouble(params.getMomentum),
      "weight_decay" -> JDouble(params.getWeightDecay)) ++ schedule.map("schedule" -> _))
    val fields = List[Option[(String, JValue)]](
      Some("job" -> JString(name)),
      if (withSpec) params.modelSpecJson.map("spec" -> _) else None,
      Some("features" -> JArray(features.map(JString(_)).toList)),
      Some("label" -> JString(params.getLabelCol)),
      params.effectiveLoss.map(l => "loss" -> JString(l)),
      Some("optimizer" -> optimizer),
      // "auto" leaves the choice to the server (its --device, for auto-started servers
      // spark.stoker.server.device).
      Option(params.getDevice).filter(d => d.nonEmpty && d != "auto")
        .map(d => "device" -> JString(d)),
      Some("seed" -> JInt(BigInt(params.getSeed))),
      Some("batch_size" -> JInt(params.getBatchSize)),
      Some(params.getClassWeights).filter(_.nonEmpty)
        .map(w => "class_weights" -> JArray(w.map(JDouble(_)).toList)),
      Some("keep_existing" -> JBool(true)))
    JObject(fields.flatten)
  }
}

private[spark] object Training {
  /**
   * Starts this node's auto-started server (when `target` names none) on a thread of its
   * own, so its start (3-4 s: a process and libtorch loading) overlaps the first
   * round's query instead of following it. Tasks on this host (local and
   * local-cluster masters, executors beside the driver) find it running; one that
   * asks first waits for the same start (LocalServer's lock), none starts a second.
   * A failed start is the task's to report: it tries again and says why.
   */
  def startLocalServer(target: ServerTarget): Unit = if (target.address.trim.isEmpty) {
    val t = new Thread(() => {
      try {
        Servers.configureLocal()
        dev.stoker.server.LocalServer.ensure()
      } catch {
        case e: Exception => LoggerFactory.getLogger(classOf[StokerEstimator])
          .debug(s"stoker: early start of the node's server failed: $e")
      }
    }, "stoker-server-start")
    t.setDaemon(true)
    t.start()
  }

  /**
   * The training rows and the validation rows (if the params ask for them), each as
   * `columns`: by `validationIndicatorCol` (true: validation; null counts as false) or a
   * seeded random split of `validationFraction`. Checks what the params combine.
   */
  def split(params: StokerEstimator, dataset: Dataset[_], features: Seq[String],
      columns: Seq[org.apache.spark.sql.Column]): (DataFrame, Option[DataFrame]) = {
    import org.apache.spark.sql.functions.{coalesce, col, lit, not}
    val indicator = Option(params.getValidationIndicatorCol).filter(_.nonEmpty)
    val fraction = params.getValidationFraction
    if (indicator.isDefined && fraction > 0) {
      throw new InvalidInputException(
        s"both validationIndicatorCol ('${indicator.get}') and validationFraction ($fraction) " +
          "are set; set one of them")
    }
    if (indicator.isEmpty && fraction == 0) {
      val asked = Seq(
        params.isSet(params.earlyStoppingRounds) -> "earlyStoppingRounds",
        params.getEvalMetric.nonEmpty -> "evalMetric").collect { case (true, name) => name }
      if (asked.nonEmpty) {
        throw new InvalidInputException(s"${asked.mkString(" and ")} need a validation set: " +
          "set validationIndicatorCol (a boolean column) or validationFraction")
      }
    }
    checkMetricFitsTask(params, dataset.schema)
    indicator match {
      case Some(name) =>
        val field = dataset.schema.find(_.name == name).getOrElse(throw new InvalidInputException(
          s"validationIndicatorCol '$name' is not a column; the columns are " +
            dataset.schema.fieldNames.mkString(", ")))
        if (field.dataType != org.apache.spark.sql.types.BooleanType) {
          throw new InvalidInputException(s"validationIndicatorCol '$name' is of type " +
            s"${field.dataType.simpleString}; it must be boolean (true marks a validation row)")
        }
        if (features.contains(name) || name == params.getLabelCol) {
          throw new InvalidInputException(
            s"validationIndicatorCol '$name' is also a feature or the label")
        }
        val isValidation = coalesce(col(name), lit(false))
        (dataset.filter(not(isValidation)).select(columns: _*),
          Some(dataset.filter(isValidation).select(columns: _*)))
      case None if fraction > 0 =>
        val parts = dataset.select(columns: _*)
          .randomSplit(Array(1 - fraction, fraction), params.getSeed)
        (parts(0), Some(parts(1)))
      case None => (dataset.select(columns: _*), None)
    }
  }

  /** What the validation rows are, for messages. */
  def validationSource(params: StokerEstimator): String =
    Option(params.getValidationIndicatorCol).filter(_.nonEmpty)
      .map(c => s"validationIndicatorCol '$c' is true on no row")
      .getOrElse(s"validationFraction ${params.getValidationFraction} of the rows")

  /** A regression metric on a classifier or a classifier's on a regressor, caught before
   *  training where the params tell the task (TorchScript models: after round 0). */
  private def checkMetricFitsTask(params: StokerEstimator,
      schema: org.apache.spark.sql.types.StructType): Unit = {
    val metric = params.getEvalMetric
    if (metric.isEmpty || metric == "loss") return
    val classifier = params.classifier(schema)
    val fits = if (classifier) Validation.ClassifierMetrics else Validation.RegressionMetrics
    if (!fits.contains(metric)) {
      val kind = if (classifier) "classifier" else "regression"
      throw new InvalidInputException(s"evalMetric '$metric' does not apply to a $kind " +
        s"model; its metrics are ${fits.mkString(", ")}")
    }
  }

  /** Rows per Arrow record batch when a partition is streamed to its server. */
  val PutBatchRows = 65536

  /** SparkContext's job group property (`setJobGroup` sets it, and the description). */
  val JobGroup = "spark.jobGroup.id"

  /** The longest a failed fit waits for its jobs' running tasks before cleaning up. */
  val CleanupWaitMs = 30000L

  /** Waits (at most `timeoutMs`) until no task of the group's jobs is running. */
  def awaitTasks(sc: org.apache.spark.SparkContext, group: String, timeoutMs: Long): Unit = {
    val tracker = sc.statusTracker
    def running: Boolean = tracker.getJobIdsForGroup(group).iterator
      .flatMap(j => tracker.getJobInfo(j).iterator)
      .flatMap(_.stageIds.iterator)
      .flatMap(s => tracker.getStageInfo(s).iterator)
      .exists(_.numActiveTasks > 0)
    val deadline = System.nanoTime() + timeoutMs * 1000000L
    while (running && System.nanoTime() < deadline) Thread.sleep(100)
  }

  /**
   * A test and tuning knob, not a Param: `spark.stoker.train.aggregationDepth` (session
   * or Spark conf) set to 1 merges every round's states on the driver, 2 or more through
   * treeAggregate at that depth, whatever [[aggregationDepth]] would pick; unset or
   * `auto` leaves it to [[aggregationDepth]].
   */
  val AggregationDepthConf = "spark.stoker.train.aggregationDepth"

  def forcedDepth(spark: SparkSession): Option[Int] =
    spark.conf.getOption(AggregationDepthConf).map(_.trim).filter(_ != "auto").map { v =>
      scala.util.Try(v.toInt).toOption.filter(_ >= 1).getOrElse(throw new InvalidInputException(
        s"$AggregationDepthConf is '$v'; it must be 'auto' or a depth of 1 or more"))
    }

  /**
   * treeAggregate's depth for a round over `partitions` tasks whose states are about
   * `stateBytes` (unknown before the first round). Each value is a whole state (up to
   * hundreds of MB), so an intermediate level costs a shuffle that writes every state to
   * disk and reads it back, while merging on the driver costs one in-place pass per state
   * as results arrive. The driver merges (depth 1) unless there are many partitions or
   * their states together would come within 10% of `spark.driver.maxResultSize` (which
   * fails the job); then a second level merges on the executors first. Depth 1 merges in
   * partition order, so a rerun gives the same bits; the executors' merge order at depth
   * 2 varies with task timing, and so do the last float32 bits of the mean.
   */
  def aggregationDepth(partitions: Int, stateBytes: Option[Long], maxResultBytes: Long): Int =
    stateBytes match {
      case _ if partitions <= 2 => 1
      case Some(bytes) if partitions <= 64 &&
          (maxResultBytes <= 0 || partitions * bytes <= maxResultBytes / 10 * 9) => 1
      case None if partitions <= 8 => 1
      case _ => 2
    }
}

/**
 * Live progress of running fits, by estimator uid: what PySpark's progress bar (and
 * anyone else on the driver) polls while `fit` blocks.
 */
object Progress {
  /** Rounds done of the total, and the last round's statistics. */
  final case class Snapshot(total: Int, done: Int, last: Option[RoundStats], running: Boolean,
      phase: String = "")

  private val fits = new ConcurrentHashMap[String, Snapshot]()

  def get(uid: String): Option[Snapshot] = Option(fits.get(uid))

  /**
   * The snapshot as JSON (`{"total", "done", "running", "last": {round stats} | null}`),
   * or null when no fit of that uid ran: for py4j and other non-Scala callers.
   */
  def json(uid: String): String = get(uid).map { s =>
    val last = s.last.map(r => RoundStats.toJson(Seq(r)).stripPrefix("[").stripSuffix("]"))
      .getOrElse("null")
    s"""{"total": ${s.total}, "done": ${s.done}, "running": ${s.running}, "last": $last, """ +
      s""""phase": ${Envelope.compact(JString(s.phase))}}"""
  }.orNull

  private[spark] def start(uid: String, total: Int, done: Int): Unit =
    fits.put(uid, Snapshot(total, done, None, running = true))

  /** What the fit is doing now ("round 1: starting node servers, sending partitions"). */
  private[spark] def phase(uid: String, text: String): Unit =
    fits.computeIfPresent(uid, (_, s) => s.copy(phase = text))

  /** A search's progress: `done` trials of the total, `stats` the latest trial round. */
  private[spark] def searched(uid: String, done: Int, stats: RoundStats, text: String): Unit =
    fits.computeIfPresent(uid, (_, s) => s.copy(done = done, last = Some(stats), phase = text))

  private[spark] def update(uid: String, stats: RoundStats): Unit =
    fits.computeIfPresent(uid, (_, s) => s.copy(done = stats.round + 1, last = Some(stats)))

  private[spark] def finish(uid: String): Unit =
    fits.computeIfPresent(uid, (_, s) => s.copy(running = false))
}

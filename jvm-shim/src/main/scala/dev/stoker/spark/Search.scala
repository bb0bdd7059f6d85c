package dev.stoker.spark

import java.util.concurrent.{Executors, TimeUnit}

import scala.collection.immutable.ListMap

import dev.stoker.{InvalidInputException, ResourceExhaustedException}
import org.apache.spark.broadcast.Broadcast
import org.apache.spark.ml.param.ParamMap
import org.apache.spark.sql.{Dataset, SparkSession}
import org.json4s._
import org.json4s.jackson.JsonMethods
import org.slf4j.LoggerFactory

/** What a search found: the best trial's model and every trial's record. */
private[spark] final case class Searched(best: StokerModel, trials: Seq[TrialRecord])

/**
 * A search (docs/tuning.md): the data is planned once with the estimator's columns and
 * validation split and put once on each partition's server under one data job; each
 * trial is a job of its own on the servers, training on that cached copy (create_job's
 * `data`), with its rounds run by [[Rounds]] exactly as `fit` runs them. `parallelism`
 * driver threads take steps from the [[Asha]] scheduler, so that many trials train at
 * once. A trial is scored at the end of each step (a rung), where its job also frees
 * its models and input state on the servers; its averaged state waits on the driver in
 * case ASHA promotes it. The data job, and with it every trial's job, is dropped at
 * the end.
 */
private[spark] final class Search(tuner: StokerTuner, estimator: StokerEstimator,
    dataset: Dataset[_]) {
  private val log = LoggerFactory.getLogger(classOf[StokerTuner])
  private val spark: SparkSession = dataset.sparkSession
  private val sc = spark.sparkContext

  /** One trial as the search drives it; guarded by the thread running its step. */
  private final class Trial(val index: Int, val config: ListMap[String, JValue],
      val estimator: StokerEstimator, val job: TrainJob) {
    // Read and written by the thread running the trial's step; once the trial can take
    // no further step, another thread may release them (`forget`).
    @volatile var state: Option[Array[Byte]] = None
    @volatile var momentum: Option[Array[Byte]] = None
    var history: Vector[RoundStats] = Vector.empty
    var seconds = 0.0
    @volatile var failure: Option[String] = None
    def rounds: Int = history.size
  }

  def run(): Searched = {
    val metric = Seq(tuner.getTunerMetric, estimator.getEvalMetric).find(_.nonEmpty)
      .getOrElse("loss")
    if (tuner.getMinRounds > tuner.getMaxRounds) {
      throw new InvalidInputException(s"minRounds (${tuner.getMinRounds}) is above " +
        s"maxRounds (${tuner.getMaxRounds})")
    }
    if (tuner.getSpace.trim.isEmpty) {
      throw new InvalidInputException("the search space is empty: setSpace with a JSON " +
        """space such as {"learningRate": {"log_uniform": [1e-4, 0.1]}}, or """ +
        "setEstimatorParamMaps with a ParamGridBuilder grid")
    }
    // Every trial trains maxRounds at most, is scored on one validation split by one
    // metric, and stops only when the scheduler says so.
    val base = estimator.copy(ParamMap.empty).setRounds(tuner.getMaxRounds)
      .setEvalMetric(metric)
    base.clear(base.earlyStoppingRounds)
    if (base.getValidationIndicatorCol.isEmpty && base.getValidationFraction == 0) {
      log.info(s"stoker tuner: the estimator holds out no validation rows; the trials are " +
        s"scored on a random ${Search.DefaultValidationFraction} of them")
      base.setValidationFraction(Search.DefaultValidationFraction)
    }
    Features.columns(dataset.schema, base.getFeatureCols, base.getFeaturesCol)
    Features.label(dataset.schema, base.getLabelCol)
    val space = SearchSpace.parse(tuner.getSpace, base)
    val configs = space.configurations(tuner.getNumTrials, tuner.getTunerSeed)
    // Each configuration is checked by the params' validators (and a model spec's
    // JSON) before anything trains.
    val estimators = configs.map(SearchSpace.apply(base, _))
    val (prepared, validationRows, dataJob) = new Training(base, dataset).plan()
    val trials = configs.indices.map { i =>
      new Trial(i, configs(i), estimators(i),
        new Training(estimators(i), dataset).trialJob(s"${dataJob.name}-t$i", dataJob))
    }
    Training.startLocalServer(dataJob.server)
    val callerGroup = Option(sc.getLocalProperty(Training.JobGroup))
    val group = callerGroup.getOrElse(s"stoker-search-${dataJob.name}")
    if (callerGroup.isEmpty) sc.setLocalProperty(Training.JobGroup, group)
    // The data job goes with its trials' jobs (drop_job drops the jobs training on it).
    def cleanUp(): Unit = {
      Training.awaitTasks(sc, group, Training.CleanupWaitMs)
      Servers.dropJob(sc, dataJob.server, dataJob.name)
    }
    try {
      val found = search(trials, prepared, validationRows.getOrElse(throw new
        IllegalStateException("a search without validation rows")), dataJob, metric,
        Training.validationSource(base))
      cleanUp()
      found
    } catch {
      case e: Exception =>
        try cleanUp() catch { case cleanup: Exception => e.addSuppressed(cleanup) }
        throw e
    } finally if (callerGroup.isEmpty) sc.setLocalProperty(Training.JobGroup, null)
  }

  private def search(trials: IndexedSeq[Trial], prepared: org.apache.spark.sql.DataFrame,
      validationRows: org.apache.spark.sql.DataFrame, dataJob: TrainJob, metric: String,
      source: String): Searched = {
    val started = System.nanoTime()
    val data = TrainingData.of(prepared)
    val validationData = TrainingData.of(validationRows)
    val dataBroadcast = sc.broadcast(dataJob)
    val description = sc.getLocalProperty("spark.job.description")
    Progress.start(tuner.uid, trials.size, 0)
    val ((hosts, empty), (validationHosts, validationEmpty)) =
      try {
        (feed(data, dataBroadcast, validation = false, "training"),
          feed(validationData, dataBroadcast, validation = true, "validation"))
      } catch {
        case e: Throwable =>
          Progress.finish(tuner.uid)
          sc.setJobDescription(description)
          throw e
      } finally dataBroadcast.destroy()
    if (validationHosts.isEmpty) {
      throw new InvalidInputException(s"the validation set is empty: $source selects no row")
    }
    val eta = tuner.getReductionFactor
    val asha = new Asha(Asha.rungs(tuner.getMinRounds, tuner.getMaxRounds, eta,
      tuner.getScheduler == "asha"), eta, trials.size, Validation.HigherIsBetter(metric))
    val lock = new Object
    @volatile var failure: Option[Throwable] = None
    var steps = 0
    val deadline = if (tuner.getTimeoutSeconds > 0) {
      Some(started + (tuner.getTimeoutSeconds * 1e9).toLong)
    } else None

    // A trial that finished the top rung takes no further step, and only the best of
    // them becomes the model: the others' states leave the driver's memory at once.
    // (One below the top may still be promoted, so its state stays.)
    val top = asha.rungs.size - 1
    def forgetBeaten(): Unit = asha.best.foreach {
      case (best, rung, _) if rung == top =>
        trials.filter(t => t.index != best && asha.metrics(t.index).size - 1 == top)
          .foreach { t => t.state = None; t.momentum = None }
      case _ => ()
    }

    def step(s: Asha.Step): Unit = {
      val trial = trials(s.trial)
      val target = asha.rungs(s.rung)
      val label = s"stoker tuner: trial ${trial.index + 1} of ${trials.size}"
      try {
        val job = sc.broadcast(trial.job)
        val validation = new Validation(sc, validationData, job, source, metric,
          validationHosts, validationEmpty, undefinedFails = false)
        val rounds = new Rounds(trial.estimator, spark, data, job, Some(validation), label,
          None, hosts, empty)
        rounds.momentum = trial.momentum
        try {
          while (trial.rounds < target) {
            // A search that failed elsewhere stops its other trials at the next round.
            failure.foreach(e => throw new Search.Aborted(e))
            // Scored where the scheduler compares (the rung's last round), which also
            // frees the trial's models on the servers until a promotion (its job's
            // release; the shared partitions stay).
            val end = trial.rounds == target - 1
            val (state, stats) = rounds.run(trial.rounds, tuner.getMaxRounds, trial.state,
              last = end, first = false, validate = end)
            trial.state = Some(state)
            trial.history :+= stats
            trial.seconds += stats.seconds
            log.info(s"$label, round ${stats.round + 1}: $stats")
          }
          trial.momentum = rounds.momentum
        } finally {
          rounds.close()
          job.destroy()
        }
        val value = trial.history.last.validation.getOrElse(metric, Double.NaN)
        lock.synchronized {
          asha.report(trial.index, s.rung, value)
          forgetBeaten()
          steps += 1
          Progress.searched(tuner.uid, asha.counts.head, trial.history.last,
            f"trial ${trial.index + 1} reached rung ${s.rung} ($target rounds): $metric " +
              f"$value%.5g; ${asha.counts.mkString("/")} trials per rung")
          lock.notifyAll()
        }
      } catch {
        // A configuration the servers refuse (a model that does not build, one that does
        // not fit the device) fails its trial, not the search.
        case e @ (_: InvalidInputException | _: ResourceExhaustedException) =>
          log.warn(s"$label failed: ${e.getMessage}")
          trial.failure = Some(e.getMessage)
          trial.state = None
          trial.momentum = None
          lock.synchronized { asha.fail(trial.index); lock.notifyAll() }
          // A round that failed kept its input state on the servers (only a step's
          // end frees it): the failed trial's job goes now, not with the search.
          Servers.dropJob(sc, trial.job.server, trial.job.name)
        case _: Search.Aborted =>
          lock.synchronized { asha.fail(trial.index); lock.notifyAll() }
        case e: Throwable =>
          if (e.isInstanceOf[InterruptedException]) Thread.currentThread().interrupt()
          lock.synchronized {
            failure = failure.orElse(Some(e))
            asha.fail(trial.index)
            asha.close()
            lock.notifyAll()
          }
      }
    }

    def work(): Unit = {
      var more = true
      while (more) {
        val next = lock.synchronized {
          var s: Option[Asha.Step] = None
          while (s.isEmpty && !asha.finished) {
            if (deadline.exists(System.nanoTime() > _)) asha.close()
            s = asha.next()
            if (s.isEmpty && !asha.finished) lock.wait(1000)
          }
          s
        }
        next match {
          case Some(s) => step(s)
          case None => more = false
        }
      }
    }

    val pool = Executors.newFixedThreadPool(tuner.getParallelism, (r: Runnable) => {
      val t = new Thread(r, "stoker-tuner")
      t.setDaemon(true)
      t
    })
    try {
      // Worker threads inherit this thread's Spark local properties (the job group).
      val workers = (0 until tuner.getParallelism).map(_ => pool.submit(new Runnable {
        override def run(): Unit = work()
      }))
      workers.foreach(_.get())
    } finally {
      pool.shutdownNow()
      pool.awaitTermination(Training.CleanupWaitMs, TimeUnit.MILLISECONDS)
      sc.setJobDescription(description)
      Progress.finish(tuner.uid)
    }
    failure.foreach(e => throw e)
    val (bestIndex, bestRung, bestValue) = asha.best.getOrElse(throw new InvalidInputException(
      s"every trial of the search failed; the first: " +
        trials.flatMap(_.failure).headOption.getOrElse("none ran (timeoutSeconds)")))
    val records = trials.map { t =>
      val reached = asha.metrics(t.index)
      val status = t.failure.map(m => s"failed: $m").getOrElse {
        if (t.rounds == 0) "not started (time budget)"
        else if (reached.size - 1 == top) "completed"
        else s"stopped at rung ${reached.size - 1}"
      }
      TrialRecord(t.index, t.config.toSeq.map { case (k, v) =>
        k -> (v match { case JString(text) => text; case other => JsonMethods.compact(other) })
      }, status, reached.size - 1, t.rounds, reached.lastOption.getOrElse(Double.NaN), reached,
        t.seconds, t.history, best = t.index == bestIndex)
    }
    val winner = trials(bestIndex)
    val summary = FitSummary(metric, winner.history.last.round, bestValue, winner.rounds,
      stoppedEarly = false, s"best of ${trials.size} trials: trial $bestIndex at rung " +
        s"$bestRung (${winner.rounds} rounds)")
    val model = winner.estimator.model(winner.state.getOrElse(throw new IllegalStateException(
      s"the best trial $bestIndex holds no state")), winner.job.modelBlob, winner.history,
      summary)
    log.info(s"stoker tuner: ${summary.stopReason}; $metric $bestValue; trials per rung " +
      s"${asha.counts.mkString(", ")}; ${(System.nanoTime() - started) / 1e9} s")
    Searched(model, records)
  }

  /**
   * Puts every partition on its server under the data job; returns where each is
   * cached and which are empty.
   */
  private def feed(data: TrainingData, job: Broadcast[TrainJob], validation: Boolean,
      what: String): (Map[Int, String], Set[Int]) = {
    sc.setJobDescription(s"stoker tuner: sending the $what partitions to the servers")
    Progress.phase(tuner.uid, s"sending the $what partitions to the servers")
    val (fed, empty) = FeedRDD.run(sc, data, job, validation)
    (fed.map(f => f.partition -> f.host).toMap, empty)
  }
}

private[spark] object Search {
  /** Ends a trial's step because another trial failed the search. */
  final class Aborted(cause: Throwable) extends RuntimeException(cause)

  /** Rows held out for scoring when the estimator sets no validation split. */
  val DefaultValidationFraction = 0.2
}

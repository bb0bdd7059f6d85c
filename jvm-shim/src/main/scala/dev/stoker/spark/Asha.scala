package dev.stoker.spark

import scala.collection.mutable

/**
 * Asynchronous successive halving (ASHA; Li et al., "A System for Massively Parallel
 * Hyperparameter Tuning", arXiv 1810.05934), the search's scheduler as pure logic: no
 * Spark, no clock, so its decisions are tested on their own (AshaTest).
 *
 * Rung `k` is reached after `rungs(k)` rounds. Whenever a worker is free it gets a
 * step: the best trial of the highest rung that is among the top 1/eta of the trials
 * finished there and not yet promoted trains on to the next rung; otherwise a new trial
 * starts at rung 0; otherwise nothing, until a running step reports. A trial is never
 * waited for: a rung promotes as soon as enough trials have finished it, which is what
 * keeps every worker busy where synchronous halving waits for the slowest trial. A
 * search always ends with a trial at the top rung ([[toTheTop]]).
 * With one rung it is plain grid or random search: every trial trains all rounds.
 */
private[spark] final class Asha(val rungs: Seq[Int], eta: Int, trials: Int,
    higherIsBetter: Boolean) {
  require(rungs.nonEmpty && eta >= 2 && trials >= 1, s"rungs $rungs, eta $eta, trials $trials")

  private val results = Array.fill(rungs.size)(mutable.LinkedHashMap.empty[Int, Double])
  private val promoted = Array.fill(rungs.size)(mutable.Set.empty[Int])
  private val running = mutable.Set.empty[Int]
  private val failed = mutable.Set.empty[Int]
  private var started = 0
  private var closed = false

  /** Whether `a` is a better metric than `b` (NaN is the worst). */
  private def better(a: Double, b: Double): Boolean =
    if (a.isNaN) false else if (b.isNaN) true else if (higherIsBetter) a > b else a < b

  /** Trials that finished rung `k`, best first (ties: the earlier trial). */
  private def ranked(k: Int): Seq[Int] =
    results(k).toSeq.filterNot { case (t, _) => failed.contains(t) }.sortWith { case ((ta, a), (tb, b)) =>
      better(a, b) || (!better(b, a) && ta < tb)
    }.map(_._1)

  private def candidate: Option[Asha.Step] = {
    if (closed) return None
    (rungs.size - 2 to 0 by -1).iterator.flatMap { k =>
      ranked(k).take(results(k).size / eta).find(t => !promoted(k).contains(t))
        .map(t => Asha.Step(t, k + 1))
    }.nextOption()
      .orElse(if (started < trials) Some(Asha.Step(started, 0)) else None)
      .orElse(if (running.isEmpty) toTheTop else None)
  }

  /**
   * With nothing left to run and no trial at the top rung, the best unpromoted trial of
   * the highest rung reached goes on: a rung of fewer than eta trials promotes none by
   * the rule above, and a search over few configurations would otherwise end without
   * any trial trained for maxRounds (8 trials, eta 3: 2 reach rung 1, none rung 2).
   */
  private def toTheTop: Option[Asha.Step] = {
    val top = rungs.size - 1
    if (results(top).nonEmpty) return None
    (top - 1 to 0 by -1).find(results(_).nonEmpty).flatMap { k =>
      ranked(k).find(t => !promoted(k).contains(t)).map(t => Asha.Step(t, k + 1))
    }
  }

  /** The next step to run, now marked running; None: nothing to do until one reports. */
  def next(): Option[Asha.Step] = candidate.map { step =>
    if (step.rung == 0) started += 1 else promoted(step.rung - 1) += step.trial
    running += step.trial
    step
  }

  /** Trial `trial` reached rung `rung` with `metric`. */
  def report(trial: Int, rung: Int, metric: Double): Unit = {
    results(rung)(trial) = metric
    running -= trial
  }

  /** Trial `trial` failed its step: it takes no further part (its results still count
   *  in the rungs' 1/eta, but it is never promoted again nor the best). */
  def fail(trial: Int): Unit = {
    running -= trial
    failed += trial
  }

  /** No step starts from now on (the time budget ran out, or the search failed). */
  def close(): Unit = closed = true

  /** Whether the search is over: nothing running and nothing left to start. */
  def finished: Boolean = running.isEmpty && candidate.isEmpty

  def isRunning: Boolean = running.nonEmpty

  /** Trials that finished each rung. */
  def counts: Seq[Int] = results.map(_.size).toSeq

  /** The metric of `trial` at each rung it finished. */
  def metrics(trial: Int): Seq[Double] = results.iterator.takeWhile(_.contains(trial))
    .map(_(trial)).toSeq

  /** The best trial of the highest rung any trial finished, with its metric. */
  def best: Option[(Int, Int, Double)] =
    results.indices.reverse.find(ranked(_).nonEmpty).map { k =>
      val t = ranked(k).head
      (t, k, results(k)(t))
    }
}

private[spark] object Asha {
  /** Train `trial` up to rung `rung` (from the rounds of the rung before; 0: from scratch). */
  final case class Step(trial: Int, rung: Int)

  /**
   * Rungs at minRounds·eta^k rounds below maxRounds, then maxRounds: 1, 3, 9 for
   * (1, 9, 3); 1, 2, 4, 8 for (1, 8, 2). With `halving` off, maxRounds alone.
   */
  def rungs(minRounds: Int, maxRounds: Int, eta: Int, halving: Boolean): Seq[Int] =
    if (!halving) Seq(maxRounds)
    else Iterator.iterate(minRounds.toLong)(_ * eta).takeWhile(_ < maxRounds).map(_.toInt)
      .toSeq :+ maxRounds
}

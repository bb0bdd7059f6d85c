package dev.stoker.spark

import dev.stoker.jni.NativeBridge
import org.json4s._

/** The metadata of a stoker state (docs/engine.md), as native/core reads it. */
final case class StateInfo(metadata: Map[String, String]) {
  def task: String = metadata.getOrElse("task", "regression")
  def isClassifier: Boolean = task != "regression"
  def round: Long = metadata.get("round").map(_.toLong).getOrElse(0L)
  def samples: Long = metadata.get("samples").map(_.toLong).getOrElse(0L)
}

object StateInfo {
  /** @throws dev.stoker.InvalidInputException if `state` is not a stoker state */
  def of(state: Array[Byte]): StateInfo =
    StateInfo(Envelope.parseObject(NativeBridge.meta(state)).obj
      .collect { case (k, JString(v)) => k -> v }.toMap)
}

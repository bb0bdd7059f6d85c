package dev.stoker.spark

import java.nio.{ByteBuffer, ByteOrder}
import java.nio.charset.StandardCharsets.UTF_8

import org.json4s._

/** The metadata in a stoker state's safetensors header (docs/engine.md). */
final case class StateInfo(metadata: Map[String, String]) {
  def task: String = metadata.getOrElse("task", "regression")
  def isClassifier: Boolean = task != "regression"
  def round: Long = metadata.get("round").map(_.toLong).getOrElse(0L)
  def samples: Long = metadata.get("samples").map(_.toLong).getOrElse(0L)
}

object StateInfo {
  def of(state: Array[Byte]): StateInfo = {
    val length = ByteBuffer.wrap(state, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong
    val header = Envelope.parseObject(new String(state, 8, length.toInt, UTF_8))
    val meta = (header \ "__metadata__") match {
      case JObject(fields) => fields.collect { case (k, JString(v)) => k -> v }.toMap
      case _ => Map.empty[String, String]
    }
    StateInfo(meta)
  }
}

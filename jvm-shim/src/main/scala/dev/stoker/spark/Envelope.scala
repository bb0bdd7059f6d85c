package dev.stoker.spark

import java.nio.charset.StandardCharsets.UTF_8

import org.json4s._
import org.json4s.jackson.JsonMethods

/**
 * An action's body or result (docs/protocol.md): its JSON and named blobs. The native
 * client frames and unframes them ([[Envelope.call]]); nothing in the JVM does.
 */
final case class Envelope(json: JObject, blobs: Seq[(String, Array[Byte])] = Nil) {

  def blob(name: String): Option[Array[Byte]] = blobs.collectFirst { case (`name`, b) => b }
}

object Envelope {

  /**
   * Runs an action with this body and returns its result, the blobs crossing JNI once
   * each way instead of being packed and unpacked in JVM arrays (NativeClient.actionParts).
   */
  def call(client: dev.stoker.jni.NativeClient, action: String, request: Envelope): Envelope = {
    val parts = client.actionParts(action, compact(request.json),
      request.blobs.map(_._1).toArray, request.blobs.map(_._2).toArray)
    val json = parseObject(new String(parts(0), UTF_8))
    val names = (json \ "blobs") match {
      case JArray(items) => items.map(item => (item \ "name") match {
        case JString(n) => n
        case other => throw new IllegalStateException(s"blob name $other")
      })
      case _ => Nil
    }
    Envelope(json, names.zip(parts.toSeq.drop(1)))
  }

  /** `json` as compact text. */
  def compact(json: JValue): String = JsonMethods.compact(JsonMethods.render(json))

  /** A JSON number as a double (a server's `null` for NaN, or a missing field: NaN). */
  def number(v: JValue): Double = v match {
    case JDouble(d) => d
    case JInt(n) => n.toDouble
    case JLong(n) => n.toDouble
    case JDecimal(d) => d.toDouble
    case _ => Double.NaN
  }

  def parseObject(text: String): JObject = JsonMethods.parse(text) match {
    case o: JObject => o
    case other => throw new IllegalStateException(s"expected a JSON object, got $other")
  }
}

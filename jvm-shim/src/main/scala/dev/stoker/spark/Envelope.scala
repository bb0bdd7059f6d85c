package dev.stoker.spark

import java.nio.{ByteBuffer, ByteOrder}
import java.nio.charset.StandardCharsets.UTF_8

import org.json4s._
import org.json4s.jackson.JsonMethods

/**
 * An action body or result (docs/protocol.md): plain JSON, or `STK1`, a little-endian
 * u32 header length, a JSON header listing `blobs: [{name, size}]`, then the blobs.
 */
final case class Envelope(json: JObject, blobs: Seq[(String, Array[Byte])] = Nil) {

  def blob(name: String): Option[Array[Byte]] = blobs.collectFirst { case (`name`, b) => b }

  def encode(): Array[Byte] = {
    if (blobs.isEmpty) return JsonMethods.compact(JsonMethods.render(json)).getBytes(UTF_8)
    val listing = JArray(blobs.map { case (n, b) =>
      JObject("name" -> JString(n), "size" -> JInt(b.length))
    }.toList)
    val header = JsonMethods.compact(JsonMethods.render(json ~ ("blobs" -> listing)))
      .getBytes(UTF_8)
    val out = ByteBuffer.allocate(8 + header.length + blobs.map(_._2.length).sum)
      .order(ByteOrder.LITTLE_ENDIAN)
    out.put(Envelope.Magic).putInt(header.length).put(header)
    blobs.foreach { case (_, b) => out.put(b) }
    out.array()
  }

  private implicit class Merge(o: JObject) {
    def ~(field: (String, JValue)): JObject = JObject(o.obj :+ field)
  }
}

object Envelope {
  private val Magic = "STK1".getBytes(UTF_8)

  /**
   * Runs an action with this body and returns its result, the blobs crossing JNI once
   * each way instead of being packed and unpacked in JVM arrays (NativeClient.actionParts).
   */
  def call(client: dev.stoker.jni.NativeClient, action: String, request: Envelope): Envelope = {
    val body = JsonMethods.compact(JsonMethods.render(request.json))
    val parts = client.actionParts(action, body, request.blobs.map(_._1).toArray,
      request.blobs.map(_._2).toArray)
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

  def decode(bytes: Array[Byte]): Envelope = {
    if (bytes.length < 8 || !bytes.take(4).sameElements(Magic)) {
      return Envelope(parseObject(new String(bytes, UTF_8)))
    }
    val buf = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
    val length = buf.getInt(4)
    val json = parseObject(new String(bytes, 8, length, UTF_8))
    var offset = 8 + length
    val blobs = (json \ "blobs") match {
      case JArray(items) => items.map { item =>
        val JString(name) = (item \ "name"): @unchecked
        val size = (item \ "size") match {
          case JInt(n) => n.toInt
          case other => throw new IllegalStateException(s"blob size $other")
        }
        val blob = java.util.Arrays.copyOfRange(bytes, offset, offset + size)
        offset += size
        name -> blob
      }
      case _ => Nil
    }
    Envelope(json, blobs)
  }

  def parseObject(text: String): JObject = JsonMethods.parse(text) match {
    case o: JObject => o
    case other => throw new IllegalStateException(s"expected a JSON object, got $other")
  }
}

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

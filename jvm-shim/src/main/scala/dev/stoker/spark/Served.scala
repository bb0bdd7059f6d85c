package dev.stoker.spark

import java.nio.charset.StandardCharsets.UTF_8
import java.security.MessageDigest

import dev.stoker.NotFoundException
import dev.stoker.jni.{IpcBuffer, NativeClient}
import org.apache.spark.sql.stoker.ArrowBatches
import org.json4s._

/**
 * A model as tasks reach it on their node's server: its registry name and version,
 * and, when the driver holds it (a StokerModel), what registers it on a server that
 * does not have it yet. Broadcast once per query or transform.
 */
private[spark] final case class Served(
    name: String,
    version: Option[Int],
    features: Seq[String],
    registration: Option[Served.Registration],
    server: ServerTarget) {

  /**
   * Predictions for one Arrow IPC stream of features. A server that does not know the
   * model gets it registered once, then the batch is sent again.
   */
  def predict(client: NativeClient, ipc: IpcBuffer): ArrowBatches.Predictions = {
    def call() = ArrowBatches.readPredictions(
      client.predict(name, version.getOrElse(-1), java.util.List.of(), ipc))
    try call()
    catch {
      case e: NotFoundException if registration.isEmpty => throw e
      case _: NotFoundException =>
        registration.foreach(r => Envelope.call(client, "register_model", r.body))
        call()
    }
  }
}

private[spark] object Served {
  /** The register_model body and blobs (state, and the TorchScript archive if any). */
  final case class Registration(json: JObject, state: Array[Byte], torchScript: Option[Array[Byte]]) {
    def body: Envelope =
      Envelope(json, Seq("state" -> state) ++ torchScript.map("model" -> _).toSeq)
  }

  /**
   * How a StokerModel is served under `name` (or, without one, under a name derived
   * from everything registered: state, archive, features and loss, so a model whose
   * params changed is registered anew instead of meeting a stale registration).
   */
  def of(model: StokerModel, name: Option[String], version: Int): Served = {
    val features = model.getFeatureCols.toSeq match {
      case Seq() => Seq(model.getFeaturesCol)
      case cols => cols
    }
    val fields = List[Option[(String, JValue)]](
      Some("version" -> JInt(version)),
      model.modelSpecJson.map("spec" -> _),
      Some("features" -> JArray(features.map(JString(_)).toList)),
      model.effectiveLoss.map(l => "loss" -> JString(l))).flatten
    val resolved = name.getOrElse {
      val digest = MessageDigest.getInstance("SHA-256")
      digest.update(model.state)
      model.modelBlob.foreach(digest.update)
      digest.update(Envelope.compact(JObject(fields)).getBytes(UTF_8))
      s"spark-${model.uid}-${digest.digest().take(8).map(b => f"$b%02x").mkString}"
    }
    val registration = Registration(JObject(("name" -> JString(resolved)) :: fields),
      model.state, model.modelBlob)
    Served(resolved, Some(version), features, Some(registration), model.target)
  }
}

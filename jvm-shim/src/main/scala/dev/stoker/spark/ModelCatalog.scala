package dev.stoker.spark

import java.util.concurrent.ConcurrentHashMap

import scala.jdk.CollectionConverters._

import org.slf4j.LoggerFactory

/**
 * Models registered by name in this Spark application (`StokerModel.register`), so SQL
 * (`stoker_predict('churn', ...)`) can call what a Python or Scala user trained. Each
 * registration is also sent to the driver's server at once; executors' servers get it
 * from the query plan the first time a task finds it missing.
 */
object ModelCatalog {
  private val log = LoggerFactory.getLogger(getClass)
  private val models = new ConcurrentHashMap[String, Map[Int, Served]]()

  /**
   * Registers `model` under `name` on the driver's server, which picks the next version
   * (so a long-lived server never has a version replaced), then records that version
   * here for queries. Nothing is recorded when the server refuses the model.
   */
  private[spark] def register(name: String, model: StokerModel): Int = synchronized {
    val draft = Served.of(model, Some(name), 0)
    val version = Servers.withClient(draft.server) { client =>
      val registration = draft.registration.getOrElse(
        throw new IllegalStateException("a StokerModel always carries its registration"))
      val body = Envelope(org.json4s.JObject(registration.json.obj.filterNot(_._1 == "version")),
        registration.body.blobs)
      Envelope.call(client, "register_model", body).json \ "version" match {
        case org.json4s.JInt(v) => v.toInt
        case other => throw new IllegalStateException(s"register_model answered version $other")
      }
    }
    val served = Served.of(model, Some(name), version)
    models.merge(name, Map(version -> served), (a, b) => a ++ b)
    log.info(s"stoker: registered model '$name' version $version")
    version
  }

  /** The registered model `name` at `version`, or its latest version. */
  private[spark] def get(name: String, version: Option[Int]): Option[Served] =
    Option(models.get(name)).flatMap { versions =>
      version match {
        case Some(v) => versions.get(v)
        case None => versions.keys.maxOption.flatMap(versions.get)
      }
    }

  /**
   * Forgets every version registered from `model` (the same state); returns them as
   * (name, version) for the servers to unload.
   */
  private[spark] def unregister(model: StokerModel): Seq[(String, Int)] = synchronized {
    val removed = Seq.newBuilder[(String, Int)]
    models.keySet().asScala.toSeq.foreach { name =>
      models.computeIfPresent(name, (_, versions) => {
        val (mine, others) = versions.partition { case (_, served) =>
          served.registration.exists(r => java.util.Arrays.equals(r.state, model.state))
        }
        removed ++= mine.keys.map(name -> _)
        if (others.isEmpty) null else others
      })
    }
    removed.result()
  }

  /** Names registered in this application. */
  def names: java.util.Set[String] = java.util.Set.copyOf(models.keySet())
}

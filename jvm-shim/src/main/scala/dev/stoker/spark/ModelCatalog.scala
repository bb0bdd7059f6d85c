package dev.stoker.spark

import java.util.concurrent.ConcurrentHashMap

import org.slf4j.LoggerFactory

/**
 * Models registered by name in this Spark application (`StokerModel.register`), so SQL
 * (`stoker_predict('churn', ...)`) can call what a Python or Scala user trained. Each
 * registration is also sent to the driver's server at once; executors' servers get it
 * from the query plan the first time a task finds it missing.
 */
object ModelCatalog {
  private val log = LoggerFactory.getLogger(getClass)
  private val models = new ConcurrentHashMap[String, Served]()

  /** Registers `model` as the next version of `name`; returns that version. */
  private[spark] def register(name: String, model: StokerModel): Int = {
    val served = models.compute(name, (_, previous) => {
      val version = Option(previous).flatMap(_.version).getOrElse(0) + 1
      Served.of(model, Some(name), version)
    })
    Servers.withClient(served.server) { client =>
      served.registration.foreach(r => client.action("register_model", r.body.encode()))
    }
    log.info(s"stoker: registered model '$name' version ${served.version.getOrElse(1)}")
    served.version.getOrElse(1)
  }

  /** The registered model `name` (at `version`, or its latest). */
  private[spark] def get(name: String, version: Option[Int]): Option[Served] =
    Option(models.get(name)).filter(s => version.forall(v => s.version.contains(v)))

  /** Names registered in this application. */
  def names: java.util.Set[String] = java.util.Set.copyOf(models.keySet())
}

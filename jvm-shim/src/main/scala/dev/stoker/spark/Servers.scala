package dev.stoker.spark

import java.net.InetAddress

import dev.stoker.InvalidInputException
import dev.stoker.jni.NativeClient
import dev.stoker.server.LocalServer
import org.apache.spark.SparkEnv

/**
 * Which stoker server a JVM talks to. An empty address means the node's own server,
 * started on first use (LocalServer: loopback, random token, shared by the node's JVMs);
 * otherwise one address for every node, or a per-host map with an optional `*` entry.
 */
final case class ServerTarget(address: String, token: String) {

  // Never print the token (tasks, broadcasts and errors show this object).
  override def toString: String =
    s"ServerTarget(${if (address.isEmpty) "auto-started" else address}, token ${
      if (token.isEmpty) "none" else "set"})"

  /** Connects to this node's server. The caller closes the client. */
  def connect(): NativeClient = {
    val trimmed = address.trim
    if (trimmed.isEmpty) {
      Servers.configureLocal()
      LocalServer.ensure().connect()
    } else {
      NativeClient.connect(ServerTarget.forHost(trimmed, Servers.hostName),
        if (token.isEmpty) null else token)
    }
  }
}

object ServerTarget {
  /** The address in `spec` for `host`: the spec itself, or its map's entry for the host. */
  def forHost(spec: String, host: String): String = {
    if (!spec.contains("=")) return spec
    val entries = spec.split(",").map(_.trim).filter(_.nonEmpty).map { entry =>
      entry.split("=", 2) match {
        case Array(h, a) if h.trim.nonEmpty && a.trim.nonEmpty => h.trim -> a.trim
        case _ => throw new InvalidInputException(
          s"serverAddress entry '$entry' is not host=grpc://address:port")
      }
    }.toMap
    entries.get(host)
      .orElse(entries.get(host.takeWhile(_ != '.')))
      .orElse(entries.get("*"))
      .getOrElse(throw new InvalidInputException(
        s"serverAddress has no entry for host '$host' and no '*' entry"))
  }
}

private[spark] object Servers {
  lazy val hostName: String = InetAddress.getLocalHost.getHostName

  /** Passes Spark's `spark.stoker.server.*` settings to the local server launcher. */
  def configureLocal(): Unit = {
    val conf = Option(SparkEnv.get).map(_.conf)
    def pass(key: String, property: String): Unit =
      conf.flatMap(_.getOption(key)).foreach(v => LocalServer.configure(property, v))
    pass("spark.stoker.server.bin", "stoker.bin")
    pass("spark.stoker.server.device", "stoker.device")
    pass("spark.stoker.server.runDir", "stoker.run.dir")
    pass("spark.stoker.server.args", "stoker.server.args")
  }

  /** Runs `f` with a fresh client to this node's server, closed afterwards. */
  def withClient[T](target: ServerTarget)(f: NativeClient => T): T = {
    val client = target.connect()
    try f(client) finally client.close()
  }
}

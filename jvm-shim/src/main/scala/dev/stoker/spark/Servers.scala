package dev.stoker.spark

import java.net.InetAddress
import java.nio.charset.StandardCharsets

import dev.stoker.{InvalidInputException, NotFoundException, StokerException}
import dev.stoker.jni.NativeClient
import dev.stoker.server.LocalServer
import org.apache.hadoop.conf.Configuration
import org.apache.hadoop.fs.Path
import org.apache.spark.{SparkConf, SparkContext, SparkEnv}
import org.apache.spark.sql.SparkSession
import org.apache.spark.stoker.LocalDirs
import org.slf4j.LoggerFactory

/**
 * Which stoker server a JVM talks to. An empty address means the node's own server,
 * started on first use (LocalServer: loopback, random token, shared by the node's JVMs);
 * otherwise one address for every node, or a per-host map with an optional `*` entry.
 * `caPem` is, for `grpc+tls://` addresses, the PEM text of the CA certificate trusted
 * (empty: the operating system's roots), read on the driver from
 * `spark.stoker.server.caCert` ([[ServerTarget.fromConf]]) and carried to tasks here.
 */
final case class ServerTarget(address: String, token: String, caPem: String = "") {

  // Never print the token (tasks, broadcasts and errors show this object); the CA is
  // not secret, but long.
  override def toString: String =
    s"ServerTarget(${if (address.isEmpty) "auto-started" else address}, token ${
      if (token.isEmpty) "none" else "set"}${if (caPem.isEmpty) "" else ", CA certificate set"})"

  /** Connects to this node's server. The caller closes the client. */
  def connect(): NativeClient = {
    val trimmed = address.trim
    Servers.configureClient()
    if (trimmed.isEmpty) {
      Servers.configureLocal()
      LocalServer.ensure().connect()
    } else {
      NativeClient.connect(ServerTarget.forHost(trimmed, Servers.hostName),
        if (token.isEmpty) null else token, if (caPem.isEmpty) null else caPem)
    }
  }
}

object ServerTarget {
  val TokenKey = "spark.stoker.server.token"
  val CaCertKey = "spark.stoker.server.caCert"
  /** Seconds a server may stay silent before its calls fail (NativeClient.setLivenessSeconds). */
  val TimeoutKey = "spark.stoker.server.timeoutSeconds"

  /** The largest CA certificate file read (a bundle of a few certificates is ~10 KiB). */
  private val MaxCaBytes = 1 << 20

  /**
   * The target for `address` with the token and CA certificate of the Spark conf (the
   * driver's, by default): `spark.stoker.server.token`, and for an address with a
   * `grpc+tls://` server `spark.stoker.server.caCert` ([[caPem]]). Call on the driver: the
   * CA file is read here, once, and travels to tasks inside the target.
   */
  def fromConf(address: String,
      conf: Option[SparkConf] = Option(SparkEnv.get).map(_.conf)): ServerTarget = {
    val token = conf.flatMap(_.getOption(TokenKey)).getOrElse("")
    val tls = address.contains("+tls://") || address.contains("https://")
    val ca = if (tls) conf.flatMap(_.getOption(CaCertKey)).map(caPem).getOrElse("") else ""
    ServerTarget(address, token, ca)
  }

  /**
   * The PEM text of `spark.stoker.server.caCert`: the value itself when it is PEM
   * (starts with `-----BEGIN`), else the file it names on any Hadoop file system
   * (`hdfs://`, `s3a://`, `file:`; a path without a scheme is on `fs.defaultFS`), read
   * with the active session's Hadoop configuration.
   */
  def caPem(setting: String): String = {
    val value = setting.trim
    if (value.isEmpty) return ""
    val (text, what) =
      if (value.startsWith("-----BEGIN")) (value, s"$CaCertKey (PEM text)")
      else (readCaFile(value), s"$CaCertKey ('$value')")
    if (!text.contains("-----BEGIN CERTIFICATE-----")) {
      throw new InvalidInputException(
        s"$what holds no PEM certificate (a -----BEGIN CERTIFICATE----- block)")
    }
    text
  }

  private def readCaFile(location: String): String = {
    val hadoopConf = SparkSession.getActiveSession.orElse(SparkSession.getDefaultSession)
      .map(_.sparkContext.hadoopConfiguration).getOrElse(new Configuration())
    try {
      val path = new Path(location)
      val fs = path.getFileSystem(hadoopConf)
      val length = fs.getFileStatus(path).getLen
      if (length > MaxCaBytes) {
        throw new InvalidInputException(s"$CaCertKey ('$location') is $length bytes, more " +
          s"than a CA certificate ($MaxCaBytes at most)")
      }
      val in = fs.open(path)
      try new String(in.readAllBytes(), StandardCharsets.UTF_8) finally in.close()
    } catch {
      case e: InvalidInputException => throw e
      case e: java.io.FileNotFoundException => throw new NotFoundException(
        s"$CaCertKey names '$location', which does not exist (${e.getMessage})")
      case e: Exception => throw new InvalidInputException(
        s"$CaCertKey: cannot read the CA certificate '$location': $e")
    }
  }

  /** The address in `spec` for `host`: the spec itself, or its map's entry for the host. */
  def forHost(spec: String, host: String): String = {
    if (!spec.contains("=")) return spec
    val entries = hostMap(spec).toMap
    entries.get(host)
      .orElse(entries.get(host.takeWhile(_ != '.')))
      .orElse(entries.get("*"))
      .getOrElse(throw new InvalidInputException(
        s"serverAddress has no entry for host '$host' and no '*' entry"))
  }

  /** Every address `spec` names: itself, or each entry of its per-host map. */
  def addresses(spec: String): Seq[String] =
    if (!spec.contains("=")) Seq(spec) else hostMap(spec).map(_._2).distinct

  /** The (host, address) entries of a per-host map `h1=grpc://...,*=grpc://...`. */
  private def hostMap(spec: String): Seq[(String, String)] =
    spec.split(",").map(_.trim).filter(_.nonEmpty).toSeq.map { entry =>
      entry.split("=", 2) match {
        case Array(h, a) if h.trim.nonEmpty && a.trim.nonEmpty => h.trim -> a.trim
        case _ => throw new InvalidInputException(
          s"serverAddress entry '$entry' is not host=grpc://address:port")
      }
    }
}

private[spark] object Servers {
  private val log = LoggerFactory.getLogger(getClass)
  lazy val hostName: String = InetAddress.getLocalHost.getHostName

  /** Passes `spark.stoker.server.timeoutSeconds` to the clients this JVM connects. */
  def configureClient(): Unit =
    Option(SparkEnv.get).flatMap(_.conf.getOption(ServerTarget.TimeoutKey)).foreach(v =>
      NativeClient.setLivenessSeconds(scala.util.Try(v.trim.toInt).filter(_ > 0)
        .getOrElse(throw new InvalidInputException(
          s"${ServerTarget.TimeoutKey} is '$v'; it must be a whole number of seconds above 0"))))

  /** Passes Spark's `spark.stoker.server.*` settings to the local server launcher. */
  def configureLocal(): Unit = {
    val conf = Option(SparkEnv.get).map(_.conf)
    def pass(key: String, property: String): Unit =
      conf.flatMap(_.getOption(key)).foreach(v => LocalServer.configure(property, v))
    pass("spark.stoker.server.bin", "stoker.bin")
    pass("spark.stoker.server.device", "stoker.device")
    pass("spark.stoker.server.runDir", "stoker.run.dir")
    pass("spark.stoker.server.args", "stoker.server.args")
    // A model directory among this JVM's Spark local directories (removed when the JVM
    // exits, as the server it starts is stopped then): models evicted from host memory
    // go to disk instead of being registered again by the next task.
    LocalDirs.first().foreach(dir =>
      LocalServer.configure("stoker.model.dir", new java.io.File(dir, "stoker-models").getPath))
  }

  /**
   * Runs `action` with `body` (`unload_model`, `drop_job`, `register_model`) on every
   * server this application's tasks use: the fixed address, or each address of a
   * per-host map, from the driver; with auto-started servers, the driver's node server
   * and, through one small Spark job, every executor host's (a host whose server is not
   * running is skipped, none is started: it holds nothing to drop, and a task that needs
   * a model there registers it). A server that does not hold what the body names counts
   * as done. Returns the servers reached; one that cannot be reached or refuses is
   * logged, not thrown: this is housekeeping, and a server that is gone holds nothing.
   */
  def onEveryServer(sc: SparkContext, target: ServerTarget, action: String,
      body: Envelope): Int = {
    val what = s"$action ${Envelope.compact(body.json)}"
    val trimmed = target.address.trim
    if (trimmed.nonEmpty) {
      ServerTarget.addresses(trimmed)
        .count(a => visit(Some(target.copy(address = a)), action, body, what))
    } else {
      val driver = if (visit(None, action, body, what)) 1 else 0
      if (sc.isLocal) return driver
      // Executors on the driver's host usually share its server; visiting it again
      // is harmless and covers a run directory of their own.
      val hosts = sc.statusTracker.getExecutorInfos.map(_.host).distinct.toSeq
      var missing = hosts.toSet
      var attempts = 0
      var reached = 0
      // Preferred locations are a hint: a host a task did not land on gets another try.
      val description = sc.getLocalProperty("spark.job.description")
      sc.setJobDescription(s"stoker: $action on every node's server")
      try {
        while (missing.nonEmpty && attempts < 3) {
          attempts += 1
          val visiting = missing.toSeq
          val results = sc.makeRDD(visiting.map(h => (h, Seq(h))))
            .map(_ => (PartitionTask.executorHost, visit(None, action, body, what)))
            .collect()
          missing --= results.map(_._1)
          reached += results.filter(_._2).map(_._1).distinct.count(visiting.contains)
        }
      } finally sc.setJobDescription(description)
      if (missing.nonEmpty) {
        log.warn(s"stoker: $what did not reach the servers of ${missing.mkString(", ")}")
      }
      driver + reached
    }
  }

  /** Drops job `name` (its partitions, and the jobs that train on them) on every server. */
  def dropJob(sc: SparkContext, target: ServerTarget, name: String): Int =
    onEveryServer(sc, target, "drop_job",
      Envelope(org.json4s.JObject("name" -> org.json4s.JString(name))))

  /**
   * One server's part of [[onEveryServer]]: `target`, or this node's auto-started server
   * if it is running. True when the server was reached.
   */
  private def visit(target: Option[ServerTarget], action: String, body: Envelope,
      what: String): Boolean = {
    try {
      val client = target match {
        case Some(t) => Some(t.connect())
        case None =>
          configureLocal()
          LocalServer.running().map[Option[NativeClient]](a => Some(a.connect())).orElse(None)
      }
      client.foreach { c =>
        try Envelope.call(c, action, body)
        catch { case _: NotFoundException => () }
        finally c.close()
      }
      client.isDefined
    } catch {
      case e: StokerException =>
        log.warn(s"stoker: $what on ${target.getOrElse("this node's server")}: " +
          e.getMessage)
        false
    }
  }

  /** Runs `f` with a fresh client to this node's server, closed afterwards. */
  def withClient[T](target: ServerTarget)(f: NativeClient => T): T = {
    val client = target.connect()
    try f(client) finally client.close()
  }
}

package dev.stoker.spark

import java.io.ByteArrayOutputStream

import scala.collection.immutable.ListMap
import scala.jdk.CollectionConverters._

import org.apache.hadoop.conf.Configuration
import org.apache.hadoop.fs.Path
import org.json4s._
import org.json4s.jackson.JsonMethods

/**
 * One averaging round as `fit` saw it.
 *
 * @param round        0-based round index
 * @param loss         sample-weighted mean loss of the round's last local epoch
 * @param lossFirst    the same for the round's first local epoch
 * @param samples      rows of the partitions that trained (their averaging weights)
 * @param partitions   partitions that trained
 * @param seconds      wall time of the round on the driver (training and averaging)
 * @param trainSeconds the slowest partition's training time
 * @param learningRate the learning rate at the round's end (where its schedule left it)
 * @param validation   the averaged state's metrics on the validation set (empty without
 *                     one): loss and, by task, rmse/mse/mae/r2 or logloss/accuracy/auc
 */
final case class RoundStats(
    round: Int,
    loss: Double,
    lossFirst: Double,
    samples: Long,
    partitions: Int,
    seconds: Double,
    trainSeconds: Double,
    validation: ListMap[String, Double] = ListMap.empty,
    learningRate: Double = Double.NaN) {

  /** The validation metrics (Java). */
  def getValidation: java.util.Map[String, java.lang.Double] =
    validation.map { case (k, v) => k -> java.lang.Double.valueOf(v) }.asJava

  /** Rows trained per second of round wall time. */
  def rowsPerSecond: Double = if (seconds > 0) samples / seconds else 0.0

  /** Time spent outside training: broadcast, scheduling, aggregation, checkpoint. */
  def overheadSeconds: Double = math.max(0.0, seconds - trainSeconds)

  override def toString: String =
    f"round $round: loss $loss%.5f, $samples samples on $partitions partitions, " +
      f"$seconds%.2f s ($rowsPerSecond%.0f rows/s)" +
      (if (validation.isEmpty) ""
      else validation.map { case (k, v) => f"val_$k $v%.5f" }.mkString(", ", ", ", ""))
}

object RoundStats {
  def toJson(history: Seq[RoundStats]): String = JsonMethods.compact(JsonMethods.render(
    JArray(history.map { r =>
      JObject(
        "round" -> JInt(r.round),
        "loss" -> JDouble(r.loss),
        "loss_first" -> JDouble(r.lossFirst),
        "samples" -> JInt(r.samples),
        "partitions" -> JInt(r.partitions),
        "seconds" -> JDouble(r.seconds),
        "train_seconds" -> JDouble(r.trainSeconds),
        "learning_rate" -> (if (r.learningRate.isNaN) JNothing else JDouble(r.learningRate)),
        "validation" -> (if (r.validation.isEmpty) JNothing else JObject(r.validation.toList
          .map { case (k, v) => k -> (if (v.isNaN) JNull else JDouble(v)) })))
    }.toList)))

  def fromJson(text: String): Seq[RoundStats] = {
    def num(v: JValue): Double = Envelope.number(v)
    JsonMethods.parse(text) match {
      case JArray(items) => items.map { o =>
        val validation = o \ "validation" match {
          case JObject(fields) => ListMap(fields.map { case (k, v) => k -> num(v) }: _*)
          case _ => ListMap.empty[String, Double]
        }
        RoundStats(num(o \ "round").toInt, num(o \ "loss"), num(o \ "loss_first"),
          num(o \ "samples").toLong, num(o \ "partitions").toInt, num(o \ "seconds"),
          num(o \ "train_seconds"), validation, num(o \ "learning_rate"))
      }
      case other => throw new IllegalStateException(s"history is not a JSON array: $other")
    }
  }
}

/** Whole small files on any Hadoop file system, written atomically (temp then rename). */
private[spark] object Files {
  def write(path: Path, bytes: Array[Byte], conf: Configuration): Unit = {
    val fs = path.getFileSystem(conf)
    val tmp = new Path(path.getParent, s".${path.getName}.tmp")
    val out = fs.create(tmp, true)
    try out.write(bytes) finally out.close()
    fs.delete(path, false)
    if (!fs.rename(tmp, path)) throw new java.io.IOException(s"could not rename $tmp to $path")
  }

  def read(path: Path, conf: Configuration): Array[Byte] = {
    val fs = path.getFileSystem(conf)
    val in = fs.open(path)
    try {
      val out = new ByteArrayOutputStream()
      in.transferTo(out)
      out.toByteArray
    } finally in.close()
  }

  def exists(path: Path, conf: Configuration): Boolean = path.getFileSystem(conf).exists(path)
}

/**
 * Per-round checkpoints: `round-00004.safetensors` holds the averaged state after round
 * 4, and `history.json` the history up to it. `fit` with the same directory resumes
 * after the last complete round.
 */
private[spark] final class Checkpoints(dir: String, conf: Configuration) {
  private val root = new Path(dir)
  private val Name = """round-(\d{5,})\.safetensors""".r

  /** The last complete round, its state and the history up to it. */
  def latest(): Option[(Int, Array[Byte], Seq[RoundStats])] = {
    val fs = root.getFileSystem(conf)
    if (!fs.exists(root)) return None
    val rounds = fs.listStatus(root).map(_.getPath.getName).collect {
      case Name(n) => n.toInt
    }
    if (rounds.isEmpty) return None
    val last = rounds.max
    val historyPath = new Path(root, "history.json")
    val history =
      if (Files.exists(historyPath, conf)) {
        RoundStats.fromJson(new String(Files.read(historyPath, conf), "UTF-8"))
          .filter(_.round <= last)
      } else Nil
    Some((last, Files.read(stateFile(last), conf), history))
  }

  /** The outer optimizer's momentum as of the last saved round, if any. */
  def momentum(): Option[Array[Byte]] =
    Some(new Path(root, "outer-momentum.safetensors")).filter(Files.exists(_, conf))
      .map(Files.read(_, conf))

  /** Saves the outer optimizer's momentum; written before the round's state, so a
   *  checkpointed round always has the momentum it produced. */
  def saveMomentum(momentum: Array[Byte]): Unit =
    Files.write(new Path(root, "outer-momentum.safetensors"), momentum, conf)

  /** The state saved after `round`, if it is there. */
  def state(round: Int): Option[Array[Byte]] =
    Some(stateFile(round)).filter(Files.exists(_, conf)).map(Files.read(_, conf))

  def save(round: Int, state: Array[Byte], history: Seq[RoundStats]): Unit = {
    Files.write(stateFile(round), state, conf)
    Files.write(new Path(root, "history.json"), RoundStats.toJson(history).getBytes("UTF-8"), conf)
  }

  private def stateFile(round: Int): Path = new Path(root, f"round-$round%05d.safetensors")
}

package dev.stoker.spark.sql

import scala.collection.mutable.ArrayBuffer

import dev.stoker.InvalidInputException
import dev.stoker.jni.NativeClient
import dev.stoker.spark.ServerTarget
import org.apache.spark.TaskContext
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{Attribute, BoundReference, GenericInternalRow, JoinedRow, UnsafeProjection}
import org.apache.spark.sql.catalyst.util.ArrayData
import org.apache.spark.sql.execution.{SparkPlan, UnaryExecNode}
import org.apache.spark.sql.execution.metric.{SQLMetric, SQLMetrics}
import org.apache.spark.sql.stoker.ArrowBatches
import org.apache.spark.sql.types.{StructField, StructType}

/**
 * Evaluates stoker_predict calls in Arrow batches: per partition, rows are buffered into
 * batches of `spark.stoker.sql.batchRows`, each call's features go to the node's server
 * as one Arrow stream per batch (DoExchange), and the results are zipped back onto the
 * rows in order, as the last columns of the output. Null features give a null result
 * (or fail, with `spark.stoker.sql.nullFeatures=error`) and are not sent.
 */
case class StokerEvalExec(calls: Seq[EvalCall], resultAttrs: Seq[Attribute], child: SparkPlan)
  extends UnaryExecNode {

  override def output: Seq[Attribute] = child.output ++ resultAttrs

  override def producedAttributes: org.apache.spark.sql.catalyst.expressions.AttributeSet =
    org.apache.spark.sql.catalyst.expressions.AttributeSet(resultAttrs)

  override lazy val metrics: Map[String, SQLMetric] = Map(
    "numOutputRows" -> SQLMetrics.createMetric(sparkContext, "number of output rows"),
    "numBatches" -> SQLMetrics.createMetric(sparkContext, "batches sent to stoker"),
    "nullRows" -> SQLMetrics.createMetric(sparkContext, "rows with null features"),
    "serverTime" -> SQLMetrics.createTimingMetric(sparkContext, "time in stoker server"))

  override def outputPartitioning: org.apache.spark.sql.catalyst.plans.physical.Partitioning =
    child.outputPartitioning

  override def outputOrdering: Seq[org.apache.spark.sql.catalyst.expressions.SortOrder] =
    child.outputOrdering

  override def simpleString(maxFields: Int): String =
    s"StokerEval [${calls.map(_.display).mkString(", ")}], " +
      s"[${resultAttrs.map(_.toString).mkString(", ")}]"

  override protected def doExecute(): RDD[InternalRow] = {
    // Session settings are read here, on the driver, and travel with the closure.
    val batchRows = scala.util.Try(conf.getConfString("spark.stoker.sql.batchRows", "65536")
      .toInt).toOption.filter(_ > 0).getOrElse(throw new InvalidInputException(
        "spark.stoker.sql.batchRows must be a positive number of rows"))
    val nulls = conf.getConfString("spark.stoker.sql.nullFeatures", "null")
    if (nulls != "null" && nulls != "error") {
      throw new InvalidInputException(
        s"spark.stoker.sql.nullFeatures is '$nulls'; it must be 'null' or 'error'")
    }
    val evaluator = new BatchEvaluator(calls, child.output, batchRows, nulls == "error",
      conf.sessionLocalTimeZone, longMetric("numOutputRows"), longMetric("numBatches"),
      longMetric("nullRows"), longMetric("serverTime"))
    child.execute().mapPartitions(rows => evaluator.run(rows), preservesPartitioning = true)
  }

  override protected def withNewChildInternal(newChild: SparkPlan): StokerEvalExec =
    copy(child = newChild)
}

private[sql] final class BatchEvaluator(
    calls: Seq[EvalCall],
    input: Seq[Attribute],
    batchRows: Int,
    nullsAreErrors: Boolean,
    timeZone: String,
    numOutputRows: SQLMetric,
    numBatches: SQLMetric,
    nullRows: SQLMetric,
    serverTime: SQLMetric) extends Serializable {

  def run(rows: Iterator[InternalRow]): Iterator[InternalRow] = {
    if (!rows.hasNext) return Iterator.empty
    val clients = scala.collection.mutable.Map.empty[ServerTarget, NativeClient]
    Option(TaskContext.get()).foreach(_.addTaskCompletionListener[Unit] { _ =>
      clients.values.foreach(_.close())
    })
    def client(target: ServerTarget) = clients.getOrElseUpdate(target, target.connect())
    val features = calls.map(c => UnsafeProjection.create(c.features, input))
    val schemas = calls.map { c =>
      val names = c.served.value.features
      StructType(c.features.zipWithIndex.map { case (f, i) =>
        // Named as the model's features (by position), typed as the call's expressions.
        StructField(names(i), f.dataType, nullable = true)
      })
    }
    val width = input.size
    val output = UnsafeProjection.create(
      (input ++ calls.indices.map(i => null)).indices.map { i =>
        if (i < width) BoundReference(i, input(i).dataType, input(i).nullable)
        else BoundReference(i, resultType(calls(i - width)), nullable = true)
      })
    val joined = new JoinedRow()
    // Rows are copied because the child may reuse one row object.
    rows.map(_.copy()).grouped(batchRows).flatMap { chunk =>
      val results = calls.indices.map { j =>
        evaluate(calls(j), features(j), schemas(j), chunk, client(calls(j).served.value.server))
      }
      numOutputRows += chunk.size
      chunk.iterator.zipWithIndex.map { case (row, i) =>
        output(joined(row, new GenericInternalRow(results.map(_(i)).toArray)))
      }
    }
  }

  private def resultType(call: EvalCall) =
    if (call.probability) org.apache.spark.sql.types.ArrayType(
      org.apache.spark.sql.types.FloatType, containsNull = false)
    else org.apache.spark.sql.types.DoubleType

  /** One call's results for a chunk of rows (null where a feature is null). */
  private def evaluate(
      call: EvalCall,
      features: UnsafeProjection,
      schema: StructType,
      chunk: Seq[InternalRow],
      client: NativeClient): Array[Any] = {
    val out = new Array[Any](chunk.size)
    val sent = ArrayBuffer.empty[Int]
    val toSend = chunk.iterator.zipWithIndex.flatMap { case (row, i) =>
      val f = features(row)
      if (f.anyNull) {
        if (nullsAreErrors) {
          val column = schema.fields.indices.find(f.isNullAt).map(k => schema(k).name)
          throw new InvalidInputException(s"${call.display}: feature '${column.getOrElse("?")}'" +
            " is null; set spark.stoker.sql.nullFeatures=null to get a null result instead")
        }
        nullRows += 1
        None
      } else {
        sent += i
        Some(f)
      }
    }
    val (ipc, n) = ArrowBatches.toIpcStream(toSend, schema, timeZone, batchRows)
    if (n == 0) return out
    val started = System.nanoTime()
    val predictions = call.served.value.predict(client, ipc)
    serverTime += (System.nanoTime() - started) / 1000000
    numBatches += 1
    if (predictions.prediction.length != sent.size) {
      throw new IllegalStateException(
        s"the server returned ${predictions.prediction.length} results for ${sent.size} rows")
    }
    if (call.probability) {
      val probs = predictions.probability.getOrElse(throw new InvalidInputException(
        s"${call.display}: model '${call.served.value.name}' is not a classifier; " +
          "use stoker_predict"))
      sent.indices.foreach(k => out(sent(k)) = ArrayData.toArrayData(probs(k).map(_.toFloat)))
    } else {
      sent.indices.foreach(k => out(sent(k)) = predictions.prediction(k))
    }
    out
  }
}

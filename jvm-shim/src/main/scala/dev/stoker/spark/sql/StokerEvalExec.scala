package dev.stoker.spark.sql

import scala.collection.mutable.ArrayBuffer

import dev.stoker.InvalidInputException
import dev.stoker.jni.{IpcBuffer, NativeClient}
import dev.stoker.spark.ServerTarget
import org.apache.spark.TaskContext
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{Attribute, AttributeSet, BoundReference, Expression, JoinedRow, SortOrder, SpecificInternalRow, UnsafeProjection}
import org.apache.spark.sql.catalyst.plans.physical.{Partitioning, UnknownPartitioning}
import org.apache.spark.sql.catalyst.util.ArrayData
import org.apache.spark.sql.execution.{SparkPlan, UnaryExecNode}
import org.apache.spark.sql.execution.metric.{SQLMetric, SQLMetrics}
import org.apache.spark.sql.stoker.{ArrowBatches, ColumnarBatches}
import org.apache.spark.sql.vectorized.ColumnarBatch
import org.apache.spark.sql.types.{StructField, StructType}

/**
 * Evaluates stoker_predict calls in Arrow batches: per partition, rows are buffered into
 * batches of `spark.stoker.sql.batchRows`, each call's features go to the node's server
 * as one Arrow stream per batch (DoExchange), and the results are zipped back onto the
 * rows in order, as the last columns of the output. Null features give a null result
 * (or fail, with `spark.stoker.sql.nullFeatures=error`) and are not sent.
 *
 * When the child is a columnar scan (a cached table, Parquet, ORC), its batches are read
 * directly: a call whose features are plain columns of flat numeric types, without
 * nulls in the batch, gets them copied into Arrow a column at a time, and the output
 * rows are read off the batch in place, as `StokerModel.transform` does.
 */
case class StokerEvalExec(
    calls: Seq[EvalCall],
    resultAttrs: Seq[Attribute],
    child: SparkPlan,
    keep: Option[Seq[Attribute]] = None)
  extends UnaryExecNode {

  private def passed: Seq[Attribute] = StokerEval.passed(child.output, keep)

  override def output: Seq[Attribute] = passed ++ resultAttrs

  override def producedAttributes: AttributeSet = AttributeSet(resultAttrs)

  override lazy val metrics: Map[String, SQLMetric] = Map(
    "numOutputRows" -> SQLMetrics.createMetric(sparkContext, "number of output rows"),
    "numBatches" -> SQLMetrics.createMetric(sparkContext, "batches sent to stoker"),
    "nullRows" -> SQLMetrics.createMetric(sparkContext, "rows with null features"),
    "serverTime" -> SQLMetrics.createTimingMetric(sparkContext, "time in stoker server"))

  // The child's partitioning and ordering hold while the columns they name are passed on.
  override def outputPartitioning: Partitioning = child.outputPartitioning match {
    case e: Expression with Partitioning if !e.references.subsetOf(outputSet) =>
      UnknownPartitioning(e.numPartitions)
    case p => p
  }

  override def outputOrdering: Seq[SortOrder] =
    child.outputOrdering.takeWhile(_.references.subsetOf(outputSet))

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
    val evaluator = new BatchEvaluator(calls, child.output, passed.map(child.output.indexOf),
      batchRows, nulls == "error",
      conf.sessionLocalTimeZone, longMetric("numOutputRows"), longMetric("numBatches"),
      longMetric("nullRows"), longMetric("serverTime"))
    // Each call's feature columns as ordinals of the child's output, when they are plain
    // columns that copy column-wise.
    val ordinals = calls.map { c =>
      val found = c.features.map {
        case a: Attribute if ColumnarBatches.copyable(a.dataType) =>
          Some(child.output.indexWhere(_.exprId == a.exprId)).filter(_ >= 0)
        case _ => None
      }
      if (found.forall(_.isDefined)) Some(found.map(_.get).toArray) else None
    }
    ColumnarBatches.columnarScan(child).filter(_ => ordinals.exists(_.isDefined)) match {
      case Some(scan) =>
        scan.executeColumnar().mapPartitions(b => evaluator.runColumnar(b, ordinals),
          preservesPartitioning = true)
      case None =>
        child.execute().mapPartitions(rows => evaluator.run(rows), preservesPartitioning = true)
    }
  }

  override protected def withNewChildInternal(newChild: SparkPlan): StokerEvalExec =
    copy(child = newChild)
}

private[sql] final class BatchEvaluator(
    calls: Seq[EvalCall],
    input: Seq[Attribute],
    passed: Seq[Int],
    batchRows: Int,
    nullsAreErrors: Boolean,
    timeZone: String,
    numOutputRows: SQLMetric,
    numBatches: SQLMetric,
    nullRows: SQLMetric,
    serverTime: SQLMetric) extends Serializable {

  /** The results for rows, buffered `batchRows` at a time. */
  def run(rows: Iterator[InternalRow]): Iterator[InternalRow] = {
    if (!rows.hasNext) return Iterator.empty
    val task = new Task()
    // Rows are copied because the child may reuse one row object.
    rows.map(_.copy()).grouped(batchRows).flatMap { chunk =>
      task.emit(chunk.toIndexedSeq, calls.indices.map(j => task.fromRows(j, chunk)))
    }
  }

  /**
   * The results for a columnar scan's batches, in slices of at most `batchRows` rows.
   * A call with `ordinals` gets its features copied column-wise from the batch unless
   * they hold a null there; the others read the batch's rows. A batch is finished before
   * the next is asked for, so scans that reuse their batch are safe.
   */
  def runColumnar(batches: Iterator[ColumnarBatch], ordinals: Seq[Option[Array[Int]]])
      : Iterator[InternalRow] = {
    if (!batches.hasNext) return Iterator.empty
    val task = new Task()
    batches.flatMap { batch =>
      Iterator.range(0, batch.numRows(), batchRows).flatMap { from =>
        val n = math.min(batchRows, batch.numRows() - from)
        // The batch's own row object, moved to each row as it is read: nothing is copied.
        val rows = new IndexedSeq[InternalRow] {
          def length: Int = n
          def apply(i: Int): InternalRow = batch.getRow(from + i)
        }
        val results = calls.indices.map { j =>
          ordinals(j).filterNot(_.exists(c => batch.column(c).hasNull)) match {
            case Some(columns) => task.fromColumns(j, batch, columns, from, n)
            case None => task.fromRows(j, rows)
          }
        }
        task.emit(rows, results)
      }
    }
  }

  /** One task's clients, projections and output row. */
  private final class Task {
    private val clients = scala.collection.mutable.Map.empty[ServerTarget, NativeClient]
    Option(TaskContext.get()).foreach(_.addTaskCompletionListener[Unit] { _ =>
      clients.values.foreach(_.close())
    })
    private def client(j: Int): NativeClient = {
      val target = calls(j).served.value.server
      clients.getOrElseUpdate(target, target.connect())
    }
    private val features = calls.map(c => UnsafeProjection.create(c.features, input))
    private val schemas = calls.map { c =>
      val names = c.served.value.features
      StructType(c.features.zipWithIndex.map { case (f, i) =>
        // Named as the model's features (by position), typed as the call's expressions.
        StructField(names(i), f.dataType, nullable = true)
      })
    }
    private val width = input.size
    private val output = UnsafeProjection.create(
      passed.map(i => BoundReference(i, input(i).dataType, input(i).nullable)) ++
        calls.indices.map(j => BoundReference(width + j, resultType(calls(j)), nullable = true)))
    // The appended results, set for each row and projected at once (the projection
    // copies them), so no row object is allocated per row.
    private val extra = new SpecificInternalRow(calls.map(resultType))
    private val joined = new JoinedRow()

    /** The rows with each call's results appended (the output row is reused). */
    def emit(rows: IndexedSeq[InternalRow], results: Seq[Results]): Iterator[InternalRow] = {
      numOutputRows += rows.length
      Iterator.range(0, rows.length).map { i =>
        var j = 0
        while (j < results.length) {
          results(j).write(extra, j, i)
          j += 1
        }
        output(joined(rows(i), extra))
      }
    }

    /** Call `j`'s results for rows, null where a feature is null. */
    def fromRows(j: Int, rows: Seq[InternalRow]): Results =
      evaluate(calls(j), features(j), schemas(j), rows, client(j))

    /** Call `j`'s results for `n` rows of a batch whose feature columns hold no null. */
    def fromColumns(j: Int, batch: ColumnarBatch, columns: Array[Int], from: Int, n: Int)
        : Results = {
      val call = calls(j)
      val ipc = ColumnarBatches.sliceToIpcStream(batch, columns, schemas(j), from, n, timeZone)
      val predictions = predict(call, ipc, client(j), n)
      if (call.probability) Results.Boxed(probabilities(call, predictions).map(toArrayData))
      else Results.Dense(predictions.prediction)
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
      client: NativeClient): Results = {
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
    if (n == 0) return Results.Boxed(out)
    val predictions = predict(call, ipc, client, sent.size)
    if (call.probability) {
      val probs = probabilities(call, predictions)
      sent.indices.foreach(k => out(sent(k)) = toArrayData(probs(k)))
    } else {
      sent.indices.foreach(k => out(sent(k)) = predictions.prediction(k))
    }
    Results.Boxed(out)
  }

  /** The server's answer for `rows` rows of one call, timed and counted. */
  private def predict(call: EvalCall, ipc: IpcBuffer, client: NativeClient, rows: Int)
      : ArrowBatches.Predictions = {
    val started = System.nanoTime()
    val predictions = call.served.value.predict(client, ipc)
    serverTime += (System.nanoTime() - started) / 1000000
    numBatches += 1
    if (predictions.prediction.length != rows) {
      throw new IllegalStateException(
        s"the server returned ${predictions.prediction.length} results for $rows rows")
    }
    predictions
  }

  private def probabilities(call: EvalCall, predictions: ArrowBatches.Predictions)
      : Array[Array[Double]] =
    predictions.probability.getOrElse(throw new InvalidInputException(
      s"${call.display}: model '${call.served.value.name}' is not a classifier; " +
        "use stoker_predict"))

  private def toArrayData(p: Array[Double]): ArrayData = ArrayData.toArrayData(p.map(_.toFloat))
}

/** One call's results for a slice of rows, written into the output row one at a time. */
private[sql] sealed trait Results {
  def write(into: InternalRow, ordinal: Int, i: Int): Unit
}

private[sql] object Results {
  /** One double per row, none null (features copied column-wise). */
  final case class Dense(values: Array[Double]) extends Results {
    def write(into: InternalRow, ordinal: Int, i: Int): Unit = into.setDouble(ordinal, values(i))
  }

  /** Any value per row, null where the row's features were. */
  final case class Boxed(values: Array[Any]) extends Results {
    def write(into: InternalRow, ordinal: Int, i: Int): Unit = into.update(ordinal, values(i))
  }
}

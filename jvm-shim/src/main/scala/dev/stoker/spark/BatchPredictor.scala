package dev.stoker.spark

import scala.collection.mutable

import dev.stoker.InvalidInputException
import dev.stoker.jni.{IpcBuffer, NativeClient}
import org.apache.spark.TaskContext
import org.apache.spark.broadcast.Broadcast
import org.apache.spark.ml.linalg.{Vector, Vectors}
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{Attribute, BoundReference, Expression, JoinedRow, SpecificInternalRow, UnsafeProjection}
import org.apache.spark.sql.catalyst.util.ArrayData
import org.apache.spark.sql.execution.metric.SQLMetric
import org.apache.spark.sql.stoker.{ArrowBatches, ColumnarBatches}
import org.apache.spark.sql.types.{ArrayType, DataType, DoubleType, FloatType, StructType, UserDefinedType}
import org.apache.spark.sql.vectorized.ColumnarBatch

/**
 * Predictions appended to rows in Arrow batches, for `StokerModel.transform` and for
 * `stoker_predict` alike: per partition, rows are buffered `batchRows` at a time, each
 * call's features go to its model's server as one Arrow stream per batch (DoExchange),
 * and the results are appended to the rows in order, checked to be one per row. No
 * per-row native or network call; a model is registered on a server the first time a
 * task finds it missing there.
 *
 * From a columnar scan (a cached DataFrame, Parquet, ORC), a batch's rows are read in
 * place, in slices of at most `batchRows`: a call whose features are plain columns of
 * flat numeric types (`PredictCall.columns`) gets them copied into Arrow a column at a
 * time; the others read the rows. A batch is finished before the next is asked for, so
 * scans that reuse their batch (Parquet's vectorized reader) are safe.
 *
 * @param input  the columns of the rows (or batches) read
 * @param kept   the input columns the output starts with, when not all of them; with all
 *               of them the output row is a view over the input row and the appended
 *               values, not a projection (`transform`'s DataFrame scan, `RDDScanExec`,
 *               turns every row into an `UnsafeRow` itself, reading only the columns the
 *               query uses)
 * @param nulls  what a row with a null feature gets
 * @param metrics counted when given (the SQL node's)
 */
private[spark] final class BatchPredictor(
    calls: Seq[PredictCall],
    input: Seq[Attribute],
    kept: Option[Seq[Int]],
    batchRows: Int,
    timeZone: String,
    nulls: NullFeatures,
    metrics: Option[PredictMetrics]) extends Serializable {

  /** The output for rows, buffered `batchRows` at a time. */
  def run(rows: Iterator[InternalRow]): Iterator[InternalRow] = {
    if (!rows.hasNext) return Iterator.empty
    val task = new Task()
    // Rows are copied because the input may reuse one row object.
    rows.map(_.copy()).grouped(batchRows).flatMap { chunk =>
      val slice = chunk.toIndexedSeq
      task.emit(slice, calls.indices.map(j => task.fromRows(j, slice)))
    }
  }

  /**
   * The output for a columnar scan's batches. A call with `columns` gets its features
   * copied column-wise unless, when nulls are not sent, they hold a null in the batch.
   */
  def runColumnar(batches: Iterator[ColumnarBatch]): Iterator[InternalRow] = {
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
        val answers = calls.indices.map { j =>
          calls(j).columns.filter(c =>
            nulls == NullFeatures.Send || !c.exists(batch.column(_).hasNull)) match {
            case Some(columns) => task.fromColumns(j, batch, columns, from, n)
            case None => task.fromRows(j, rows)
          }
        }
        task.emit(rows, answers)
      }
    }
  }

  /** One task's clients, projections and output row. */
  private final class Task {
    private val clients = mutable.Map.empty[ServerTarget, NativeClient]
    Option(TaskContext.get()).foreach(_.addTaskCompletionListener[Unit] { _ =>
      clients.values.foreach(_.close())
    })
    private def client(call: PredictCall): NativeClient = {
      val target = call.served.value.server
      clients.getOrElseUpdate(target, target.connect())
    }
    private val features = calls.map(c => UnsafeProjection.create(c.features, input))
    private val appended = calls.map(_.appended).toArray
    private val offsets = appended.scanLeft(0)(_ + _.types.length)
    private val types = appended.toSeq.flatMap(_.types)
    // The appended values, set for each row; the output joins them to the input row.
    private val extra = new SpecificInternalRow(types)
    private val joined = new JoinedRow()
    private val output: Option[UnsafeProjection] = kept.map { ordinals =>
      UnsafeProjection.create(
        ordinals.map(i => BoundReference(i, input(i).dataType, input(i).nullable)) ++
          types.zipWithIndex.map { case (t, k) => BoundReference(input.size + k, t, true) })
    }

    /** The rows with each call's results appended (the output row is reused). */
    def emit(rows: IndexedSeq[InternalRow], answers: Seq[Answer]): Iterator[InternalRow] = {
      metrics.foreach(_.outputRows += rows.length)
      val byCall = answers.toArray
      Iterator.range(0, rows.length).map { i =>
        var j = 0
        while (j < byCall.length) {
          byCall(j).write(appended(j), extra, offsets(j), i)
          j += 1
        }
        val out = joined(rows(i), extra)
        output.fold[InternalRow](out)(_(out))
      }
    }

    /** Call `j`'s answer for rows, with the null policy applied to their features. */
    def fromRows(j: Int, rows: Seq[InternalRow]): Answer = {
      val call = calls(j)
      val connection = client(call)
      val project = features(j)
      if (nulls == NullFeatures.Send) {
        val (ipc, _) = ArrowBatches.toIpcStream(rows.iterator.map(project), call.schema,
          timeZone, batchRows)
        return new Answer(predict(call, connection, ipc, rows.size), null)
      }
      // Where each row's result is among those sent; -1 for a row not sent.
      val index = new Array[Int](rows.size)
      var sent = 0
      val toSend = rows.iterator.zipWithIndex.flatMap { case (row, i) =>
        val f = project(row)
        if (f.anyNull) {
          nulls match {
            case NullFeatures.Fail(advice) =>
              val column = call.schema.fields.indices.find(f.isNullAt).map(call.schema(_).name)
              throw new InvalidInputException(
                s"${call.display}: feature '${column.getOrElse("?")}' is null; $advice")
            case _ =>
          }
          metrics.foreach(_.nullRows += 1)
          index(i) = -1
          None
        } else {
          index(i) = sent
          sent += 1
          Some(f)
        }
      }
      val (ipc, n) = ArrowBatches.toIpcStream(toSend, call.schema, timeZone, batchRows)
      if (n == 0) return new Answer(null, index)
      new Answer(predict(call, connection, ipc, sent), index)
    }

    /** Call `j`'s answer for `n` rows of a batch, its feature columns copied column-wise. */
    def fromColumns(j: Int, batch: ColumnarBatch, columns: Array[Int], from: Int, n: Int)
        : Answer = {
      val call = calls(j)
      val connection = client(call)
      val ipc = ColumnarBatches.sliceToIpcStream(batch, columns, call.schema, from, n, timeZone)
      new Answer(predict(call, connection, ipc, n), null)
    }
  }

  /** The server's answer for `rows` rows of one call, timed, counted and checked. */
  private def predict(call: PredictCall, client: NativeClient, ipc: IpcBuffer, rows: Int)
      : ArrowBatches.Predictions = {
    val started = System.nanoTime()
    val predictions = call.served.value.predict(client, ipc)
    metrics.foreach { m =>
      m.serverTime += (System.nanoTime() - started) / 1000000
      m.batches += 1
    }
    if (predictions.prediction.length != rows ||
        predictions.probability.exists(_.length != rows)) {
      throw new IllegalStateException(s"the server returned ${predictions.prediction.length} " +
        s"predictions for $rows rows")
    }
    call.appended.check(call, predictions)
    predictions
  }
}

/**
 * One call of a [[BatchPredictor]]: a model, its features and what it appends.
 *
 * @param features expressions over the predictor's input
 * @param schema   the Arrow stream's columns: the features as the model names them
 * @param columns  the features' ordinals in a columnar batch, when they are plain columns
 *                 that copy column-wise
 * @param display  how errors name the call
 */
private[spark] final case class PredictCall(
    served: Broadcast[Served],
    features: Seq[Expression],
    schema: StructType,
    columns: Option[Array[Int]],
    appended: Appended,
    display: String)

/** What a row whose features hold a null gets. */
private[spark] sealed trait NullFeatures extends Serializable

private[spark] object NullFeatures {
  /** It is sent as it is; the server refuses the batch, naming the feature (`transform`). */
  case object Send extends NullFeatures

  /** It is not sent, and its results are null (`stoker_predict`). */
  case object Skip extends NullFeatures

  /** The task fails, naming the call and the feature, then `advice`. */
  final case class Fail(advice: String) extends NullFeatures
}

/** The SQL node's metrics. */
private[spark] final case class PredictMetrics(
    outputRows: SQLMetric,
    batches: SQLMetric,
    nullRows: SQLMetric,
    serverTime: SQLMetric)

/** The columns a call appends to each row, from the server's predictions. */
private[spark] sealed trait Appended extends Serializable {
  def types: Seq[DataType]

  /** Writes the `k`th prediction into `into` from ordinal `at`. */
  def write(into: InternalRow, at: Int, predictions: ArrowBatches.Predictions, k: Int): Unit

  /** Fails for predictions this call cannot append. */
  def check(call: PredictCall, predictions: ArrowBatches.Predictions): Unit = ()
}

private[spark] object Appended {
  private val VectorUdt = Schemas.Probability.asInstanceOf[UserDefinedType[Vector]]

  /** `transform`'s: `prediction` and, for classifiers, `probability` (an ML vector). */
  final case class PredictionColumns(withProbability: Boolean) extends Appended {
    def types: Seq[DataType] =
      Seq(Schemas.Prediction) ++ (if (withProbability) Seq(Schemas.Probability) else Nil)

    def write(into: InternalRow, at: Int, predictions: ArrowBatches.Predictions, k: Int): Unit = {
      into.setDouble(at, predictions.prediction(k))
      if (withProbability) {
        predictions.probability.foreach(p =>
          into.update(at + 1, VectorUdt.serialize(Vectors.dense(p(k)))))
      }
    }
  }

  /** `stoker_predict`'s: the prediction (double). */
  case object Prediction extends Appended {
    def types: Seq[DataType] = Seq(DoubleType)

    def write(into: InternalRow, at: Int, predictions: ArrowBatches.Predictions, k: Int): Unit =
      into.setDouble(at, predictions.prediction(k))
  }

  /** `stoker_predict_proba`'s: the class probabilities (array<float>) of a classifier. */
  case object Probabilities extends Appended {
    def types: Seq[DataType] = Seq(ArrayType(FloatType, containsNull = false))

    def write(into: InternalRow, at: Int, predictions: ArrowBatches.Predictions, k: Int): Unit =
      predictions.probability.foreach(p =>
        into.update(at, ArrayData.toArrayData(p(k).map(_.toFloat))))

    override def check(call: PredictCall, predictions: ArrowBatches.Predictions): Unit =
      if (predictions.probability.isEmpty) {
        throw new InvalidInputException(
          s"${call.display}: model '${call.served.value.name}' is not a classifier; " +
            "use stoker_predict")
      }
  }
}

/**
 * One call's answer for a slice of rows: row `i`'s result is prediction `index(i)`, or
 * null where that is negative (its features were null, so it was not sent); without
 * `index`, prediction `i`.
 */
private final class Answer(predictions: ArrowBatches.Predictions, index: Array[Int]) {
  def write(appended: Appended, into: InternalRow, at: Int, i: Int): Unit = {
    val k = if (index == null) i else index(i)
    if (k >= 0) appended.write(into, at, predictions, k)
    else appended.types.indices.foreach(t => into.setNullAt(at + t))
  }
}

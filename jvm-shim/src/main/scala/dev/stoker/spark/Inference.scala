package dev.stoker.spark

import org.apache.spark.TaskContext
import org.apache.spark.broadcast.Broadcast
import org.apache.spark.ml.linalg.{Vector, Vectors}
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.{DataFrame, Dataset}
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{BoundReference, JoinedRow, SpecificInternalRow, UnsafeProjection}
import org.apache.spark.sql.stoker.{ArrowBatches, ColumnarBatches}
import org.apache.spark.sql.types.{StructType, UserDefinedType}
import org.apache.spark.sql.vectorized.ColumnarBatch

import dev.stoker.jni.{IpcBuffer, NativeClient}

/**
 * `StokerModel.transform`: per partition, the feature columns go to the node's server in
 * Arrow batches, one DoExchange each, and the predictions are zipped back onto the rows
 * in order. No per-row native or network call; the model is registered on a server the
 * first time a task finds it missing there.
 *
 * Two ways in. When the DataFrame is a columnar scan (a cached DataFrame, Parquet, ORC)
 * and the features are flat numeric columns, each scan batch's feature columns are
 * copied into Arrow a column at a time and the output rows are read off the same batch:
 * no row is copied or buffered. Otherwise rows are buffered into batches and written
 * with Spark's Arrow writer, which converts every Spark type the way PySpark does.
 */
private[spark] object Inference {

  def transform(model: StokerModel, dataset: Dataset[_], outSchema: StructType): DataFrame = {
    ArrowBatches.requireClassic(dataset)
    val spark = dataset.sparkSession
    val schema = dataset.schema
    val (featureColumns, featureNames) =
      Features.columns(schema, model.getFeatureCols, model.getFeaturesCol)
    val served = spark.sparkContext.broadcast(Served.of(model, None, 1))
    val task = PredictTask(served, schema, outSchema.length == schema.length + 2,
      model.getInferenceBatchRows, spark.conf.get("spark.sql.session.timeZone"))
    val rows: RDD[InternalRow] = if (model.getFeatureCols.nonEmpty) {
      // Plain columns of the input: read where they are.
      val ordinals = featureNames.map(schema.fieldIndex).toArray
      val featureSchema = StructType(ordinals.map(schema(_)))
      val columnar =
        if (featureSchema.forall(f => ColumnarBatches.copyable(f.dataType))) {
          ColumnarBatches.scan(dataset)
        } else None
      columnar match {
        case Some(batches) =>
          batches.mapPartitions(b => new ColumnarPredictor(task, featureSchema, ordinals).run(b))
        case None =>
          ArrowBatches.internalRows(dataset).mapPartitions { input =>
            new RowPredictor(task, featureSchema, ordinals, schema.length).run(input)
          }
      }
    } else {
      // A vector column becomes array<float> by an expression: computed as a hidden last
      // column, sent, and left out of the output.
      val prepared = dataset.select(
        org.apache.spark.sql.functions.col("*") +: featureColumns.map(_.as("__stoker_features")): _*)
      val featureSchema = StructType(Seq(prepared.schema(schema.length).copy(name = featureNames.head)))
      ArrowBatches.internalRows(prepared).mapPartitions { input =>
        new RowPredictor(task, featureSchema, Array(schema.length), schema.length + 1).run(input)
      }
    }
    ArrowBatches.createDataFrame(spark, rows, outSchema)
  }
}

/** What every task of one transform shares. */
private[spark] final case class PredictTask(
    served: Broadcast[Served],
    inputSchema: StructType,
    withProbability: Boolean,
    batchRows: Int,
    timeZone: String) {

  /** The model and a client of this node's server, closed when the task completes. */
  def open(): (Served, NativeClient) = {
    val model = served.value
    val client = model.server.connect()
    Option(TaskContext.get()).foreach(_.addTaskCompletionListener[Unit](_ => client.close()))
    (model, client)
  }

  /** The predictions for `rows` rows of features, checked to be one per row. */
  def predict(model: Served, client: NativeClient, ipc: IpcBuffer, rows: Int)
      : ArrowBatches.Predictions = {
    val predictions = model.predict(client, ipc)
    if (predictions.prediction.length != rows ||
        predictions.probability.exists(_.length != rows)) {
      throw new IllegalStateException(s"the server returned ${predictions.prediction.length} " +
        s"predictions for $rows rows")
    }
    predictions
  }
}

/**
 * Output rows: the input's columns (the first `inputSchema.length` of a row `leftWidth`
 * wide), then `prediction` and, for classifiers, `probability`, as a view over the input
 * row and one reused row of appended values. No projection here: the DataFrame's scan
 * (`RDDScanExec`) turns every row into an `UnsafeRow` itself, and in generated code it
 * reads only the columns the query uses.
 */
private final class PredictionColumns(task: PredictTask, leftWidth: Int) {
  private val extraTypes = Seq(Schemas.Prediction) ++
    (if (task.withProbability) Seq(Schemas.Probability) else Nil)
  private val extra = new SpecificInternalRow(extraTypes)
  private val joined = new JoinedRow()
  // A hidden feature column between the input's columns and the appended ones is
  // projected away (the vector case); otherwise the view is the row itself.
  private val kept: Option[UnsafeProjection] =
    if (leftWidth == task.inputSchema.length) None
    else Some(UnsafeProjection.create(
      task.inputSchema.fields.toSeq.zipWithIndex.map { case (f, i) =>
        BoundReference(i, f.dataType, f.nullable)
      } ++ extraTypes.zipWithIndex.map { case (t, i) => BoundReference(leftWidth + i, t, true) }))
  private val udt = Schemas.Probability.asInstanceOf[UserDefinedType[Vector]]

  /** Row `row` with the `i`th prediction appended. The result is reused by the next call. */
  def apply(row: InternalRow, predictions: ArrowBatches.Predictions, i: Int): InternalRow = {
    extra.setDouble(0, predictions.prediction(i))
    if (task.withProbability) {
      predictions.probability.foreach(p => extra.update(1, udt.serialize(Vectors.dense(p(i)))))
    }
    val out = joined(row, extra)
    kept.fold[InternalRow](out)(_(out))
  }
}

/** Predictions for rows: buffered `batchRows` at a time, written with Spark's Arrow writer. */
private final class RowPredictor(
    task: PredictTask,
    featureSchema: StructType,
    ordinals: Array[Int],
    rowWidth: Int) {

  def run(input: Iterator[InternalRow]): Iterator[InternalRow] = {
    if (!input.hasNext) return Iterator.empty
    val (model, client) = task.open()
    val features = UnsafeProjection.create(featureSchema.fields.toSeq.zip(ordinals).map {
      case (f, i) => BoundReference(i, f.dataType, f.nullable)
    })
    val append = new PredictionColumns(task, rowWidth)
    // Rows are copied because the input iterator may reuse one row object.
    input.map(_.copy()).grouped(task.batchRows).flatMap { chunk =>
      val (ipc, _) = ArrowBatches.toIpcStream(chunk.iterator.map(features), featureSchema,
        task.timeZone, task.batchRows)
      val predictions = task.predict(model, client, ipc, chunk.length)
      chunk.iterator.zipWithIndex.map { case (row, i) => append(row, predictions, i) }
    }
  }
}

/**
 * Predictions for a columnar scan's batches: each batch's feature columns are copied
 * into Arrow (in slices of at most `batchRows`), and its rows are read in place for the
 * output. A batch is finished before the next is asked for, so scans that reuse their
 * batch (Parquet's vectorized reader) are safe.
 */
private final class ColumnarPredictor(
    task: PredictTask,
    featureSchema: StructType,
    ordinals: Array[Int]) {

  def run(batches: Iterator[ColumnarBatch]): Iterator[InternalRow] = {
    if (!batches.hasNext) return Iterator.empty
    val (model, client) = task.open()
    val append = new PredictionColumns(task, task.inputSchema.length)
    batches.flatMap { batch =>
      val rows = batch.numRows()
      Iterator.range(0, rows, task.batchRows).flatMap { from =>
        val n = math.min(task.batchRows, rows - from)
        val ipc = ColumnarBatches.sliceToIpcStream(batch, ordinals, featureSchema, from, n,
          task.timeZone)
        val predictions = task.predict(model, client, ipc, n)
        Iterator.range(0, n).map(i => append(batch.getRow(from + i), predictions, i))
      }
    }
  }
}

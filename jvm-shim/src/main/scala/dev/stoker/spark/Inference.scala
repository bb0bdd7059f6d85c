package dev.stoker.spark

import org.apache.spark.TaskContext
import org.apache.spark.broadcast.Broadcast
import org.apache.spark.ml.linalg.{Vector, Vectors}
import org.apache.spark.sql.{DataFrame, Dataset}
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{BoundReference, GenericInternalRow, JoinedRow, UnsafeProjection}
import org.apache.spark.sql.functions.col
import org.apache.spark.sql.stoker.ArrowBatches
import org.apache.spark.sql.types.{StructType, UserDefinedType}

/**
 * `StokerModel.transform`: per partition, rows are buffered into Arrow batches of the
 * feature columns, each batch goes to the node's server in one DoExchange, and the
 * predictions are zipped back onto the buffered rows in order. No per-row native or
 * network call; the model is registered on a server the first time a task finds it
 * missing there.
 */
private[spark] object Inference {

  def transform(model: StokerModel, dataset: Dataset[_], outSchema: StructType): DataFrame = {
    ArrowBatches.requireClassic(dataset)
    val spark = dataset.sparkSession
    val schema = dataset.schema
    val (featureColumns, featureNames) =
      Features.columns(schema, model.getFeatureCols, model.getFeaturesCol)
    val hidden = featureColumns.indices.map(i => s"__stoker_feature_$i")
    val prepared = dataset.select(col("*") +: featureColumns.zip(hidden).map {
      case (c, h) => c.as(h)
    }: _*)
    val width = schema.length
    val featureSchema = StructType(featureNames.zipWithIndex.map { case (name, i) =>
      prepared.schema(width + i).copy(name = name)
    })
    val served = spark.sparkContext.broadcast(Served.of(model, None, 1))
    val withProbability = outSchema.length == width + 2
    val batchRows = model.getInferenceBatchRows
    val timeZone = spark.conf.get("spark.sql.session.timeZone")
    val rows = ArrowBatches.internalRows(prepared).mapPartitions { input =>
      new PartitionPredictor(served, schema, featureSchema, withProbability, batchRows,
        timeZone).run(input)
    }
    ArrowBatches.createDataFrame(spark, rows, outSchema)
  }

}

private[spark] final class PartitionPredictor(
    served: Broadcast[Served],
    inputSchema: StructType,
    featureSchema: StructType,
    withProbability: Boolean,
    batchRows: Int,
    timeZone: String) {

  private val width = inputSchema.length
  private val k = featureSchema.length

  def run(input: Iterator[InternalRow]): Iterator[InternalRow] = {
    if (!input.hasNext) return Iterator.empty
    val model = served.value
    val client = model.server.connect()
    Option(TaskContext.get()).foreach(_.addTaskCompletionListener[Unit](_ => client.close()))
    val features = UnsafeProjection.create(featureSchema.fields.toSeq.zipWithIndex.map {
      case (f, i) => BoundReference(width + i, f.dataType, f.nullable)
    })
    val outputs = inputSchema.fields.toSeq.zipWithIndex.map {
      case (f, i) => BoundReference(i, f.dataType, f.nullable)
    } ++ Seq(BoundReference(width + k, Schemas.Prediction, nullable = true)) ++
      (if (withProbability) Seq(BoundReference(width + k + 1, Schemas.Probability, true))
       else Nil)
    val output = UnsafeProjection.create(outputs)
    val joined = new JoinedRow()
    val udt = Schemas.Probability.asInstanceOf[UserDefinedType[Vector]]
    // Rows are copied because the input iterator may reuse one row object.
    input.map(_.copy()).grouped(batchRows).flatMap { chunk =>
      val (ipc, _) = ArrowBatches.toIpcStream(chunk.iterator.map(features), featureSchema,
        timeZone, batchRows)
      val predictions = model.predict(client, ipc)
      if (predictions.prediction.length != chunk.length ||
          predictions.probability.exists(_.length != chunk.length)) {
        throw new IllegalStateException(s"the server returned ${predictions.prediction.length} " +
          s"predictions for ${chunk.length} rows")
      }
      chunk.iterator.zipWithIndex.map { case (row, i) =>
        val extra = new GenericInternalRow(if (withProbability) 2 else 1)
        extra.update(0, predictions.prediction(i))
        if (withProbability) {
          predictions.probability.foreach(p => extra.update(1, udt.serialize(Vectors.dense(p(i)))))
        }
        output(joined(row, extra))
      }
    }
  }
}

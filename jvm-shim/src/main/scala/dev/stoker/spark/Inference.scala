package dev.stoker.spark

import org.apache.spark.rdd.RDD
import org.apache.spark.sql.{DataFrame, Dataset}
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.types.DataTypeUtils
import org.apache.spark.sql.stoker.{ArrowBatches, ColumnarBatches}
import org.apache.spark.sql.types.StructType

/**
 * `StokerModel.transform`: per partition, the feature columns go to the node's server in
 * Arrow batches and the predictions are appended to the rows in order, by a
 * [[BatchPredictor]] whose one call is the model. Null features are sent as they are:
 * the server refuses them, naming the column.
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
    val appended = Appended.PredictionColumns(outSchema.length == schema.length + 2)
    val timeZone = spark.conf.get("spark.sql.session.timeZone")
    def predictor(input: StructType, features: Seq[Int], featureSchema: StructType,
        columnar: Boolean): BatchPredictor = {
      val attributes = DataTypeUtils.toAttributes(input)
      val call = PredictCall(served, features.map(attributes), featureSchema,
        if (columnar) Some(features.toArray) else None, appended, "transform")
      // A hidden feature column after the input's columns is left out of the output.
      val kept = if (input.length == schema.length) None else Some(schema.indices)
      new BatchPredictor(Seq(call), attributes, kept, model.getInferenceBatchRows, timeZone,
        NullFeatures.Send, None)
    }
    val rows: RDD[InternalRow] = if (model.getFeatureCols.nonEmpty) {
      // Plain columns of the input: read where they are.
      val ordinals = featureNames.map(schema.fieldIndex)
      val featureSchema = StructType(ordinals.map(schema(_)))
      val columnar =
        if (featureSchema.forall(f => ColumnarBatches.copyable(f.dataType))) {
          ColumnarBatches.scan(dataset)
        } else None
      columnar match {
        case Some(batches) =>
          val run = predictor(schema, ordinals, featureSchema, columnar = true)
          batches.mapPartitions(b => run.runColumnar(b))
        case None =>
          val run = predictor(schema, ordinals, featureSchema, columnar = false)
          ArrowBatches.internalRows(dataset).mapPartitions(rows => run.run(rows))
      }
    } else {
      // A vector column becomes array<float> by an expression: computed as a hidden last
      // column, sent, and left out of the output.
      val prepared = dataset.select(
        org.apache.spark.sql.functions.col("*") +: featureColumns.map(_.as("__stoker_features")): _*)
      val featureSchema =
        StructType(Seq(prepared.schema(schema.length).copy(name = featureNames.head)))
      val run = predictor(prepared.schema, Seq(schema.length), featureSchema, columnar = false)
      ArrowBatches.internalRows(prepared).mapPartitions(rows => run.run(rows))
    }
    ArrowBatches.createDataFrame(spark, rows, outSchema)
  }
}

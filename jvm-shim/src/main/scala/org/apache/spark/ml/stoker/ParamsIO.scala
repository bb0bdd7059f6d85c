package org.apache.spark.ml.stoker

import org.apache.spark.ml.param.Params
import org.apache.spark.ml.util.{DefaultParamsReader, DefaultParamsWriter}
import org.apache.spark.sql.SparkSession

/**
 * Spark ML's own metadata format for saved stages (`metadata/part-00000`: class, uid,
 * Spark version, params), so a saved StokerModel loads inside a saved PipelineModel.
 * The reader and writer are `private[ml]`, hence this object in Spark's package.
 */
object ParamsIO {
  def saveMetadata(instance: Params, path: String, spark: SparkSession): Unit =
    DefaultParamsWriter.saveMetadata(instance, path, spark)

  /** Reads the metadata at `path`, checks its class and sets `instance`'s params from it. */
  def loadInto(instance: Params, path: String, spark: SparkSession, className: String): Unit = {
    val metadata = DefaultParamsReader.loadMetadata(path, spark, className)
    metadata.getAndSetParams(instance)
  }

  /** The uid recorded at `path`. */
  def uid(path: String, spark: SparkSession, className: String): String =
    DefaultParamsReader.loadMetadata(path, spark, className).uid
}

package dev.stoker.spark

import dev.stoker.InvalidInputException
import org.apache.spark.ml.functions.vector_to_array
import org.apache.spark.ml.linalg.SQLDataTypes
import org.apache.spark.sql.Column
import org.apache.spark.sql.functions.col
import org.apache.spark.sql.types._

/**
 * Which columns go to the server and how: numeric columns as they are, a Spark ML
 * Vector as `array<float>` (Spark densifies sparse vectors), an array of numbers as it
 * is. Schema problems are caught here, on the driver, before any Spark job runs; value
 * problems (nulls, vectors of mixed sizes, labels out of range) are caught by the
 * server, which names the column and row.
 */
private[spark] object Features {

  /** The feature columns to send (named as in the DataFrame) and their names. A Spark
   *  ML Vector becomes an array of `elementType` (float32 for models; float64 where a
   *  matrix job asks for it). */
  def columns(schema: StructType, featureCols: Array[String], featuresCol: String,
      elementType: String = "float32"): (Seq[Column], Seq[String]) = {
    if (featureCols.nonEmpty) {
      val dup = featureCols.diff(featureCols.distinct)
      if (dup.nonEmpty) {
        throw new InvalidInputException(s"featureCols names ${dup.mkString(", ")} twice")
      }
      featureCols.foreach { name =>
        field(schema, name, "feature").dataType match {
          case _: DecimalType => throw decimal("feature", name)
          case _: NumericType =>
          case other => throw new InvalidInputException(
            s"feature column '$name' has type ${other.simpleString}; featureCols must be " +
              "numeric columns (use featuresCol for a vector or array column)")
        }
      }
      (featureCols.toSeq.map(col), featureCols.toSeq)
    } else {
      val f = field(schema, featuresCol, "features")
      val column = f.dataType match {
        case dt if dt == SQLDataTypes.VectorType =>
          vector_to_array(col(featuresCol), elementType).as(featuresCol)
        case ArrayType(_: DecimalType, _) => throw decimal("features", featuresCol)
        case ArrayType(_: NumericType, _) => col(featuresCol)
        case other => throw new InvalidInputException(
          s"features column '$featuresCol' has type ${other.simpleString}; it must be a " +
            "Spark ML Vector or an array of numbers (or set featureCols to numeric columns)")
      }
      (Seq(column), Seq(featuresCol))
    }
  }

  /**
   * The number of values per row the `columns` that [[columns]] chose make: one per
   * numeric column, or a vector column's size (from its ML attributes, else its first
   * row: one small Spark job).
   */
  def width(dataset: org.apache.spark.sql.Dataset[_], columns: Seq[Column],
      names: Seq[String]): Int = {
    val schema = dataset.schema
    val numeric = names.forall(n => schema.find(_.name == n).exists(_.dataType match {
      case _: NumericType => true
      case _ => false
    }))
    if (numeric) return names.length
    val field = schema(names.head)
    val declared = org.apache.spark.ml.attribute.AttributeGroup.fromStructField(field).size
    if (declared >= 0) return declared
    dataset.select(columns.head).head(1).headOption match {
      case Some(row) if !row.isNullAt(0) => row.getSeq[Any](0).length
      case Some(_) => throw new InvalidInputException(
        s"features column '${names.head}' has a null in its first row; fill or drop nulls")
      case None => throw new InvalidInputException("the DataFrame has no rows")
    }
  }

  /** The label column, checked to be numeric. */
  def label(schema: StructType, labelCol: String): Column = {
    field(schema, labelCol, "label").dataType match {
      case _: DecimalType => throw decimal("label", labelCol)
      case _: NumericType => col(labelCol)
      case other => throw new InvalidInputException(
        s"label column '$labelCol' has type ${other.simpleString}; it must be numeric " +
          "(class index 0..num_classes-1 for classifiers; use StringIndexer for strings)")
    }
  }

  private def decimal(role: String, name: String) = new InvalidInputException(
    s"$role column '$name' is a decimal; cast it to double (or float) first")

  private def field(schema: StructType, name: String, role: String): StructField =
    schema.find(_.name == name).getOrElse(throw new InvalidInputException(
      s"$role column '$name' not found; the DataFrame has columns " +
        schema.fieldNames.mkString("[", ", ", "]")))
}

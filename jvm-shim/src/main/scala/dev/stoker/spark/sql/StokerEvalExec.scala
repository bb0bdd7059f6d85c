package dev.stoker.spark.sql

import dev.stoker.InvalidInputException
import dev.stoker.spark.{Appended, BatchPredictor, NullFeatures, PredictCall, PredictMetrics}
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{Attribute, AttributeSet, Expression, SortOrder}
import org.apache.spark.sql.catalyst.plans.physical.{Partitioning, UnknownPartitioning}
import org.apache.spark.sql.execution.{SparkPlan, UnaryExecNode}
import org.apache.spark.sql.execution.metric.{SQLMetric, SQLMetrics}
import org.apache.spark.sql.stoker.ColumnarBatches
import org.apache.spark.sql.types.{StructField, StructType}

/**
 * Evaluates stoker_predict calls in Arrow batches with a `BatchPredictor`, as
 * `StokerModel.transform` does: per partition, rows are buffered into batches of
 * `spark.stoker.sql.batchRows`, each call's features go to the node's server as one
 * Arrow stream per batch (DoExchange), and the results are appended to the rows in
 * order, as the last columns of the output. Null features give a null result (or fail,
 * with `spark.stoker.sql.nullFeatures=error`) and are not sent.
 *
 * When the child is a columnar scan (a cached table, Parquet, ORC), its batches are read
 * directly: a call whose features are plain columns of flat numeric types, without
 * nulls in the batch, gets them copied into Arrow a column at a time, and the output
 * rows are read off the batch in place.
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
    val predictCalls = calls.map(predictCall)
    val predictor = new BatchPredictor(predictCalls, child.output,
      Some(passed.map(child.output.indexOf)), batchRows, conf.sessionLocalTimeZone,
      if (nulls == "error") NullFeatures.Fail(
        "set spark.stoker.sql.nullFeatures=null to get a null result instead")
      else NullFeatures.Skip,
      Some(PredictMetrics(longMetric("numOutputRows"), longMetric("numBatches"),
        longMetric("nullRows"), longMetric("serverTime"))))
    val columnar = ColumnarBatches.columnarScan(child)
      .filter(_ => predictCalls.exists(_.columns.isDefined))
    columnar match {
      case Some(scan) =>
        scan.executeColumnar().mapPartitions(b => predictor.runColumnar(b),
          preservesPartitioning = true)
      case None =>
        child.execute().mapPartitions(rows => predictor.run(rows), preservesPartitioning = true)
    }
  }

  /**
   * A call's feature columns as ordinals of the child's output, when they are plain
   * columns that copy column-wise.
   */
  private def columns(call: EvalCall): Option[Array[Int]] = {
    val found = call.features.map {
      case a: Attribute if ColumnarBatches.copyable(a.dataType) =>
        Some(child.output.indexWhere(_.exprId == a.exprId)).filter(_ >= 0)
      case _ => None
    }
    if (found.forall(_.isDefined)) Some(found.map(_.get).toArray) else None
  }

  /** A call as the predictor runs it (the model's feature names are read on the driver). */
  private def predictCall(call: EvalCall): PredictCall = {
    val names = call.served.value.features
    // Named as the model's features (by position), typed as the call's expressions.
    val schema = StructType(call.features.zipWithIndex.map { case (f, i) =>
      StructField(names(i), f.dataType, nullable = true)
    })
    PredictCall(call.served, call.features, schema, columns(call),
      if (call.probability) Appended.Probabilities else Appended.Prediction, call.display)
  }

  override protected def withNewChildInternal(newChild: SparkPlan): StokerEvalExec =
    copy(child = newChild)
}

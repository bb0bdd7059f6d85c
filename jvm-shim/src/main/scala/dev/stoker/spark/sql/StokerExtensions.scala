package dev.stoker.spark.sql

import scala.annotation.varargs

import org.apache.spark.sql.{Column, SparkSessionExtensions}
import org.apache.spark.sql.catalyst.FunctionIdentifier
import org.apache.spark.sql.catalyst.expressions.{Expression, ExpressionInfo}
import org.apache.spark.sql.functions.{call_function, lit}

/**
 * The Spark session extension behind `stoker_predict`: enable it with
 * `spark.sql.extensions=dev.stoker.spark.sql.StokerExtensions` (stoker.spark.configure
 * does it for PySpark). It registers `stoker_predict` and `stoker_predict_proba`, the
 * optimizer rule that pulls their calls into StokerEval nodes, and the planner strategy
 * that evaluates those in Arrow batches.
 */
class StokerExtensions extends (SparkSessionExtensions => Unit) {
  override def apply(extensions: SparkSessionExtensions): Unit = {
    for ((name, probability) <- Seq("stoker_predict" -> false, "stoker_predict_proba" -> true)) {
      val usage = s"$name(model [, version], features...) - " +
        (if (probability) "class probabilities (array<float>)" else "the prediction (double)") +
        " of a stoker model, evaluated in Arrow batches on the node's stoker server."
      val info = new ExpressionInfo(classOf[StokerPredict].getName, null, name, usage, "", "",
        "", "", "", "", "scala_udf")
      extensions.injectFunction((FunctionIdentifier(name), info,
        (args: Seq[Expression]) => StokerPredict.build(args, probability)))
    }
    extensions.injectOptimizerRule(_ => ExtractStokerCalls)
    extensions.injectPlannerStrategy(session => new StokerStrategy(session))
  }
}

/** Column functions for the DataFrame API (the session needs StokerExtensions). */
object StokerFunctions {

  /** The prediction of registered model `model` for the feature columns. */
  @varargs def stokerPredict(model: String, features: Column*): Column =
    call_function("stoker_predict", lit(model) +: features: _*)

  /** The prediction of version `version` of `model`. */
  @varargs def stokerPredict(model: String, version: Int, features: Column*): Column =
    call_function("stoker_predict", lit(model) +: lit(version) +: features: _*)

  /** Class probabilities (array<float>) of classifier `model`. */
  @varargs def stokerPredictProba(model: String, features: Column*): Column =
    call_function("stoker_predict_proba", lit(model) +: features: _*)

  /** Class probabilities of version `version` of classifier `model`. */
  @varargs def stokerPredictProba(model: String, version: Int, features: Column*): Column =
    call_function("stoker_predict_proba", lit(model) +: lit(version) +: features: _*)
}

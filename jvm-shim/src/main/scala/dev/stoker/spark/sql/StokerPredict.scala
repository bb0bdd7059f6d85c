package dev.stoker.spark.sql

import dev.stoker.InvalidInputException
import org.apache.spark.ml.linalg.SQLDataTypes
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{Expression, Literal}
import org.apache.spark.sql.catalyst.expressions.codegen.{CodegenContext, ExprCode}
import org.apache.spark.sql.types._

/**
 * `stoker_predict(model [, version], features...)` and `stoker_predict_proba(...)`:
 * the prediction (double) or class probabilities (array<float>) of a model on the
 * stoker server. Never evaluated row by row: StokerStrategy pulls every call out of
 * its projection or filter into a StokerEvalExec, which sends Arrow batches.
 *
 * @param children    the model name (a string literal), an optional version (an
 *                    integer literal), then the feature expressions
 * @param probability whether this is `stoker_predict_proba`
 */
case class StokerPredict(children: Seq[Expression], probability: Boolean) extends Expression {

  @transient lazy val (modelName, version, features) = StokerPredict.split(children)

  override def dataType: DataType =
    if (probability) ArrayType(FloatType, containsNull = false) else DoubleType

  override def nullable: Boolean = true
  override def foldable: Boolean = false
  override def prettyName: String =
    if (probability) "stoker_predict_proba" else "stoker_predict"

  override def eval(input: InternalRow): Any = throw StokerPredict.notHere(this)

  override protected def doGenCode(ctx: CodegenContext, ev: ExprCode): ExprCode =
    throw StokerPredict.notHere(this)

  override protected def withNewChildrenInternal(
      newChildren: IndexedSeq[Expression]): Expression = copy(children = newChildren)
}

object StokerPredict {

  /** The function builder: checks the arguments at analysis. */
  def build(args: Seq[Expression], probability: Boolean): StokerPredict = {
    val call = StokerPredict(args, probability)
    split(args)
    call.features.foreach { f =>
      f.dataType match {
        case _: NumericType =>
        case ArrayType(_: NumericType, _) =>
        case dt if dt == SQLDataTypes.VectorType =>
        case other => throw new InvalidInputException(
          s"${call.prettyName}: feature '${f.sql}' has type ${other.simpleString}; features " +
            "must be numeric columns, or one Spark ML Vector or array<number> column")
      }
    }
    val arrays = call.features.count(f => !f.dataType.isInstanceOf[NumericType])
    if (arrays > 0 && call.features.size > 1) {
      throw new InvalidInputException(s"${call.prettyName}: a Vector or array feature " +
        s"column must be the only feature; got ${call.features.map(_.sql).mkString(", ")}")
    }
    call
  }

  /** (model name, version, features) from the arguments. */
  def split(args: Seq[Expression]): (String, Option[Int], Seq[Expression]) = {
    val model = args.headOption match {
      case Some(e) if e.foldable && e.dataType == StringType => Option(e.eval())
        .map(_.toString).getOrElse(throw new InvalidInputException(
          "stoker_predict: the model name is null"))
      case _ => throw new InvalidInputException(
        "stoker_predict needs a model name (a string literal) first: " +
          "stoker_predict('churn', f1, f2, ...)")
    }
    val (version, features) = args.drop(1) match {
      case Literal(v: Int, IntegerType) +: rest if rest.nonEmpty => (Some(v), rest)
      case rest => (None, rest)
    }
    if (features.isEmpty) {
      throw new InvalidInputException(s"stoker_predict('$model') needs feature columns")
    }
    (model, version, features)
  }

  private def notHere(e: StokerPredict) = new UnsupportedOperationException(
    s"${e.prettyName} is evaluated in Arrow batches where it appears in a SELECT list or a " +
      "WHERE condition; it cannot be used here (e.g. in a join condition, an aggregate or " +
      "ORDER BY): compute it in a SELECT first")
}

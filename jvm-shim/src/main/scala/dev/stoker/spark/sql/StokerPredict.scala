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
case class StokerPredict(
    model: String,
    version: Option[Int],
    children: Seq[Expression],
    probability: Boolean) extends Expression {

  /** The feature expressions (the children: model and version are fixed at analysis). */
  def features: Seq[Expression] = children

  /** The model name, as the strategy resolves it. */
  def modelName: String = model

  override def dataType: DataType =
    if (probability) ArrayType(FloatType, containsNull = false) else DoubleType

  override def nullable: Boolean = true
  override def foldable: Boolean = false
  override def prettyName: String =
    if (probability) "stoker_predict_proba" else "stoker_predict"

  override def sql: String = s"$prettyName('$model'${version.map(v => s", $v").getOrElse("")}, " +
    s"${children.map(_.sql).mkString(", ")})"

  override def toString: String =
    s"$prettyName('$model'${version.map(v => s", $v").getOrElse("")}, ${children.mkString(", ")})"

  override def eval(input: InternalRow): Any = throw StokerPredict.notHere(this)

  override protected def doGenCode(ctx: CodegenContext, ev: ExprCode): ExprCode =
    throw StokerPredict.notHere(this)

  override protected def withNewChildrenInternal(
      newChildren: IndexedSeq[Expression]): Expression = copy(children = newChildren)
}

object StokerPredict {

  /**
   * The function builder: checks the arguments at analysis and fixes the model name and
   * version there, so later constant folding of a feature cannot turn it into a version.
   */
  def build(args: Seq[Expression], probability: Boolean): StokerPredict = {
    val name = if (probability) "stoker_predict_proba" else "stoker_predict"
    val (model, version, features) = split(args, name)
    val call = StokerPredict(model, version, features, probability)
    call.features.foreach { f =>
      f.dataType match {
        case _: DecimalType => throw new InvalidInputException(
          s"$name: feature '${f.sql}' is a decimal; cast it to double (a literal such as " +
            "1.0 is a decimal in SQL: write 1.0D)")
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
  def split(args: Seq[Expression], name: String): (String, Option[Int], Seq[Expression]) = {
    val model = args.headOption match {
      case Some(e) if e.foldable && e.dataType == StringType => Option(e.eval())
        .map(_.toString).getOrElse(throw new InvalidInputException(
          s"$name: the model name is null"))
      case _ => throw new InvalidInputException(
        s"$name needs a model name (a string literal) first: $name('churn', f1, f2, ...)")
    }
    val (version, features) = args.drop(1) match {
      case Literal(v: Int, IntegerType) +: rest if rest.nonEmpty => (Some(v), rest)
      case rest => (None, rest)
    }
    if (features.isEmpty) {
      throw new InvalidInputException(s"$name('$model') needs feature columns")
    }
    (model, version, features)
  }

  private def notHere(e: StokerPredict) = new UnsupportedOperationException(
    s"${e.prettyName} is evaluated in Arrow batches where it appears in a SELECT list or a " +
      "WHERE condition; it cannot be used here (e.g. in a join condition, an aggregate or " +
      "ORDER BY): compute it in a SELECT first")
}

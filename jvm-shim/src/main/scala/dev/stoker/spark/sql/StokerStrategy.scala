package dev.stoker.spark.sql

import dev.stoker.{InvalidInputException, NotFoundException}
import dev.stoker.spark.{Envelope, ModelCatalog, Served, Servers, ServerTarget}
import org.apache.spark.sql.SparkSession
import org.apache.spark.sql.catalyst.expressions.{Attribute, AttributeReference, AttributeSet, Expression, NamedExpression}
import org.apache.spark.sql.catalyst.plans.logical.{Filter, LogicalPlan, Project, UnaryNode}
import org.apache.spark.sql.catalyst.rules.Rule
import org.apache.spark.sql.execution.{SparkPlan, SparkStrategy}
import org.apache.spark.sql.types.NumericType
import org.json4s._

/**
 * Pulls stoker_predict calls out of projections and filters into a [[StokerEval]] node
 * below them, whose result columns the projection or filter then reads (as Spark pulls
 * Python UDFs into BatchEvalPython). Done on the logical plan, after the optimizer has
 * pushed filters down, so that scan strategies which collapse Project/Filter chains
 * into a scan never see a call.
 */
object ExtractStokerCalls extends Rule[LogicalPlan] {

  override def apply(plan: LogicalPlan): LogicalPlan = plan.transformDown {
    // A projection above an eval node that reads only some of the child's columns: the
    // node passes on only those (its rows are projected into UnsafeRows, so every column
    // it passes on is a copy per row).
    case Project(list, e: StokerEval) if e.passed.exists(a => !list.exists(_.references.contains(a))) =>
      val used = AttributeSet(list.flatMap(_.references))
      Project(list, e.copy(keep = Some(e.passed.filter(used.contains))))
    // The optimizer pushes `WHERE p > 0.5` over `SELECT stoker_predict(...) AS p` down
    // by copying the call into the filter; one StokerEval then serves both, so the
    // model runs once per row.
    case Project(list, Filter(condition, child)) if list.exists(hasCall) && hasCall(condition) =>
      val (eval, rewrite) = extract(list :+ condition, child)
      Project(list.map(e => rewrite(e).asInstanceOf[NamedExpression]),
        Filter(rewrite(condition), eval))
    case Project(list, child) if list.exists(hasCall) =>
      val (eval, rewrite) = extract(list, child)
      Project(list.map(e => rewrite(e).asInstanceOf[NamedExpression]), eval)
    case Filter(condition, child) if hasCall(condition) =>
      val (eval, rewrite) = extract(Seq(condition), child)
      Project(child.output, Filter(rewrite(condition), eval))
  }

  private def hasCall(e: Expression): Boolean = e.exists(_.isInstanceOf[StokerPredict])

  /** The eval node for the distinct calls in `exprs`, and how to rewrite them. */
  private def extract(exprs: Seq[Expression], child: LogicalPlan)
      : (StokerEval, Expression => Expression) = {
    val calls = exprs.flatMap(_.collect { case p: StokerPredict => p })
      .groupBy(_.canonicalized).values.map(_.head).toSeq
      .sortBy(_.toString)
    calls.foreach { c =>
      if (c.features.exists(hasCall)) {
        throw new InvalidInputException(s"${c.prettyName} cannot take another " +
          "stoker_predict as a feature; compute it in a SELECT first")
      }
    }
    val results = calls.zipWithIndex.map { case (c, i) =>
      AttributeReference(s"${c.prettyName}_$i", c.dataType, nullable = true)()
    }
    val byCall = calls.map(_.canonicalized).zip(results).toMap
    val rewrite: Expression => Expression = _.transformUp {
      case p: StokerPredict => byCall(p.canonicalized)
    }
    (StokerEval(calls, results, child), rewrite)
  }
}

/**
 * The logical node: `child`'s rows (its columns in `keep`, all of them when `keep` is
 * empty) with the results of `calls` appended.
 */
case class StokerEval(
    calls: Seq[StokerPredict],
    resultAttrs: Seq[Attribute],
    child: LogicalPlan,
    keep: Option[Seq[Attribute]] = None)
  extends UnaryNode {
  /** The child's columns this node passes on. */
  def passed: Seq[Attribute] = StokerEval.passed(child.output, keep)
  override def output: Seq[Attribute] = passed ++ resultAttrs
  override def producedAttributes: AttributeSet = AttributeSet(resultAttrs)
  override protected def withNewChildInternal(newChild: LogicalPlan): StokerEval =
    copy(child = newChild)
}

object StokerEval {
  // `keep` is a Seq, not an AttributeSet: tree transformations map a node's
  // Iterable fields element by element, which turns a set into a List.
  def passed(childOutput: Seq[Attribute], keep: Option[Seq[Attribute]]): Seq[Attribute] =
    keep.fold(childOutput) { k =>
      val kept = AttributeSet(k)
      childOutput.filter(kept.contains)
    }
}

/**
 * Plans [[StokerEval]] as [[StokerEvalExec]], resolving each call's model here, on the
 * driver, so an unknown model or a wrong feature count fails before any task runs.
 */
final class StokerStrategy(session: SparkSession) extends SparkStrategy {

  override def apply(plan: LogicalPlan): Seq[SparkPlan] = plan match {
    case StokerEval(calls, results, child, keep) =>
      val evalCalls = calls.map(c => EvalCall(session.sparkContext.broadcast(resolve(c)),
        c.features, c.probability, c.sql))
      StokerEvalExec(evalCalls, results, planLater(child), keep) :: Nil
    case _ => Nil
  }

  /** The served model a call names: registered in this application, or on the server. */
  private def resolve(call: StokerPredict): Served = {
    val served = ModelCatalog.get(call.modelName, call.version)
      .getOrElse(onServer(call))
    val passed = call.features
    val expected = served.features
    // One Vector/array column stands for a model's one (vector) feature only.
    val fits = passed.size == expected.size &&
      (passed.size == 1 || passed.forall(_.dataType.isInstanceOf[NumericType]))
    if (!fits) {
      throw new InvalidInputException(s"${call.prettyName}('${call.modelName}'): the model " +
        s"takes ${expected.size} features (${expected.mkString(", ")}); the call passes " +
        s"${passed.size} (${passed.map(g => s"${g.sql}: ${g.dataType.simpleString}")
          .mkString(", ")})")
    }
    served
  }

  /** A model registered on the server the SQL session uses (not through this app). */
  private def onServer(call: StokerPredict): Served = {
    val conf = session.sparkContext.getConf
    val target = ServerTarget.fromConf(conf.get("spark.stoker.server.address", ""), Some(conf))
    val models = Servers.withClient(target) { client =>
      Envelope.call(client, "stats", Envelope(JObject())).json \ "models"
    }
    val versions = models match {
      case JArray(items) => items.filter(m =>
        (m \ "name") == JString(call.modelName) &&
          call.version.forall(v => (m \ "version") == JInt(v)))
      case _ => Nil
    }
    val latest = versions.sortBy(m => (m \ "version") match {
      case JInt(v) => v.toInt
      case _ => 0
    }).lastOption.getOrElse(throw new NotFoundException(
      s"${call.prettyName}: no model named '${call.modelName}'" +
        call.version.map(v => s" at version $v").getOrElse("") +
        " is registered in this application (StokerModel.register) or on its stoker server; " +
        s"registered here: ${ModelCatalog.names}"))
    val features = (latest \ "features") match {
      case JArray(fs) => fs.collect { case JString(f) => f }
      case _ => Nil
    }
    val version = (latest \ "version") match {
      case JInt(v) => Some(v.toInt)
      case _ => None
    }
    Served(call.modelName, version, features, None, target)
  }
}

/** What StokerEvalExec needs of one call: the model and the feature expressions. */
final case class EvalCall(
    served: org.apache.spark.broadcast.Broadcast[Served],
    features: Seq[Expression],
    probability: Boolean,
    display: String)

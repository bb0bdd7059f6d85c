package dev.stoker.spark

import scala.jdk.CollectionConverters._

import dev.stoker.InvalidInputException
import org.apache.spark.ml.Estimator
import org.apache.spark.ml.linalg.SQLDataTypes
import org.apache.spark.ml.param.ParamMap
import org.apache.spark.ml.util.{DefaultParamsReadable, DefaultParamsWritable, Identifiable}
import org.apache.spark.sql.Dataset
import org.apache.spark.sql.types._
import org.json4s.{JInt, JNothing, JString}

/**
 * Trains a PyTorch-style network on a DataFrame with synchronous local SGD: each
 * partition trains on its node's stoker server from the same weights, and the driver
 * averages the weights (and optimizer state) every round.
 *
 * {{{
 * val model = new StokerEstimator()
 *   .setFeaturesCol("features").setLabelCol("label")
 *   .setModel("""{"type": "mlp", "hidden": [64, 64], "num_classes": 2}""")
 *   .setRounds(10).setLocalEpochs(2)
 *   .fit(train)
 * model.transform(test)
 * }}}
 */
class StokerEstimator(override val uid: String)
  extends Estimator[StokerModel] with StokerParams[StokerEstimator] with DefaultParamsWritable {

  def this() = this(Identifiable.randomUID("stoker"))

  override def fit(dataset: Dataset[_]): StokerModel = {
    // Inputs only: a training table may well carry an old prediction column.
    Features.columns(dataset.schema, getFeatureCols, getFeaturesCol)
    Features.label(dataset.schema, getLabelCol)
    val trained = new Training(this, dataset).run()
    model(trained.state, trained.modelBlob, trained.history, trained.summary)
  }

  /** The model of a trained state with these params, registered on the node servers. */
  private[spark] def model(state: Array[Byte], blob: Option[Array[Byte]],
      history: Seq[RoundStats], summary: FitSummary): StokerModel = {
    val model = copyValues(new StokerModel(uid, state, blob, history, summary).setParent(this))
    model.preRegister()
    model
  }

  /**
   * Runs one round from `state` (null: the initial weights) and returns each non-empty
   * partition's trained state and sample count, without averaging: what `fit` would
   * average for that round. For inspecting and testing the averaging.
   */
  def partitionStates(dataset: Dataset[_], round: Int, state: Array[Byte])
      : java.util.List[PartitionState] = {
    new Training(this, dataset).partitionStates(round, Option(state))
      .map(t => PartitionState(t.partition, t.samples, t.state)).asJava
  }

  /**
   * Sends every partition of `dataset` to its node's server cache, converted as `fit`
   * converts it, without training: the data path of a first round alone (a warm-up, or
   * a measurement of it; bench/). Returns the rows sent.
   */
  def feed(dataset: Dataset[_]): Long = {
    Features.columns(dataset.schema, getFeatureCols, getFeaturesCol)
    Features.label(dataset.schema, getLabelCol)
    new Training(this, dataset).feed()
  }

  override def transformSchema(schema: StructType): StructType = {
    Features.columns(schema, getFeatureCols, getFeaturesCol)
    Features.label(schema, getLabelCol)
    StokerModel.outputSchema(schema, getPredictionCol, getProbabilityCol, classifier(schema))
  }

  /**
   * Whether the trained model will be a classifier, as the engine decides it
   * (`ModelSource::default_loss`): the loss when set; else a spec's `num_classes` (a
   * linear_regression spec never); else an integer label means cross-entropy.
   */
  private[spark] def classifier(schema: StructType): Boolean = effectiveLoss match {
    case Some("cross_entropy" | "bce") => true
    case Some(_) => false
    case None => modelSpecJson match {
      case Some(spec) if (spec \ "num_classes") != JNothing => (spec \ "num_classes") match {
        case JInt(n) => n > 1
        case _ => false
      }
      case Some(spec) if (spec \ "type") == JString("linear_regression") => false
      case _ => schema.find(_.name == getLabelCol).map(_.dataType).exists {
        case ByteType | ShortType | IntegerType | LongType => true
        case _ => false
      }
    }
  }

  override def copy(extra: ParamMap): StokerEstimator = defaultCopy(extra)
}

object StokerEstimator extends DefaultParamsReadable[StokerEstimator] {
  override def load(path: String): StokerEstimator = super.load(path)
}

/** One partition's state after a round, before averaging. */
final case class PartitionState(partition: Int, samples: Long, state: Array[Byte])

private[spark] object Schemas {
  def addColumn(schema: StructType, field: StructField): StructType = {
    if (schema.fieldNames.contains(field.name)) {
      throw new InvalidInputException(
        s"output column '${field.name}' already exists; set another name for it")
    }
    schema.add(field)
  }

  val Prediction = DoubleType
  val Probability = SQLDataTypes.VectorType
}

package dev.stoker.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.InvalidInputException;
import org.junit.jupiter.api.Test;
import scala.collection.immutable.ListMap$;

/**
 * Params fail where they are set, naming the valid range (Spark's own validators say only
 * "given invalid value"); the objective decides the loss and the default spec; early
 * stopping follows its metric's direction.
 */
class ParamsTest {
  private static String error(Runnable set) {
    return assertThrows(InvalidInputException.class, set::run).getMessage();
  }

  @Test
  void outOfRangeAndUnknownValuesFailWhenSetAndNameWhatIsValid() {
    StokerEstimator e = new StokerEstimator();
    assertEquals("rounds must be at least 1; got 0", error(() -> e.setRounds(0)));
    assertTrue(error(() -> e.setEarlyStoppingRounds(0)).contains("leave it unset"));
    assertTrue(error(() -> e.setEvalMetric("areaUnderPR")).contains("'auc'"));
    assertTrue(error(() -> e.setLearningRate(0)).contains("greater than 0.0"));
    assertTrue(error(() -> e.setValidationFraction(1.0)).contains("in [0, 1)"));
    assertTrue(error(() -> e.setObjective("ranking")).contains("'regression'"));
    assertTrue(error(() -> e.setClassWeights(new double[] {1, -1})).contains("non-negative"));
    // Unset patience means no early stopping; a valid value sticks.
    assertEquals(0, e.getEarlyStoppingRounds());
    assertEquals(3, e.setEarlyStoppingRounds(3).getEarlyStoppingRounds());
  }

  @Test
  void aRegressionObjectiveTrainsWithMseAndDropsTheDefaultSpecsClasses() {
    StokerEstimator e = new StokerEstimator().setObjective("regression");
    assertEquals("mse", e.effectiveLoss().get());
    assertTrue(e.modelSpecJson().get().obj().forall(f -> !f._1().equals("num_classes")));
    // A spec the user wrote with classes conflicts, and says how out.
    e.setModel("{\"type\": \"mlp\", \"hidden\": [8], \"num_classes\": 3}");
    assertTrue(error(e::modelSpecJson).contains("remove num_classes"));
    e.setLoss("bce");
    assertTrue(error(e::effectiveLoss).contains("a classifier's loss"));
    assertTrue(new StokerEstimator().effectiveLoss().isEmpty());
  }

  @Test
  void earlyStoppingFollowsTheMetricsDirectionAndPatience() {
    EarlyStopping auc = new EarlyStopping("auc", scala.Option.apply(2), 0.01);
    assertTrue(auc.observe(0, metrics("auc", 0.70)));
    assertTrue(auc.observe(1, metrics("auc", 0.75)));
    // Better, but not by more than the min delta: no improvement.
    assertEquals(false, auc.observe(2, metrics("auc", 0.755)));
    assertTrue(auc.stopReason().isEmpty());
    assertEquals(false, auc.observe(3, metrics("auc", 0.60)));
    assertEquals(1, auc.bestRound().get());
    assertTrue(auc.stopReason().get().contains("did not improve by more than 0.01 for 2 rounds"));
    EarlyStopping loss = new EarlyStopping("loss", scala.Option.empty(), 0.0);
    loss.observe(0, metrics("loss", 0.5));
    loss.observe(1, metrics("loss", 0.4));
    loss.observe(2, metrics("loss", 0.45));
    assertEquals(1, loss.bestRound().get());
    assertTrue(loss.stopReason().isEmpty());
  }

  @SuppressWarnings("unchecked")
  private static scala.collection.immutable.Map<String, Object> metrics(String k, double v) {
    scala.collection.immutable.Map<String, Object> empty =
        (scala.collection.immutable.Map<String, Object>) (Object) ListMap$.MODULE$.empty();
    return empty.updated(k, (Object) v);
  }
}

package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.rand;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.InvalidInputException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Validation and early stopping from Java on the two-executor cluster: the same JVM code
 * the PySpark suites drive (tests/sparkml/test_validation.py), called as a Scala or Java
 * user calls it.
 */
class ValidationIT {
  private static Dataset<Row> data;

  @BeforeAll
  static void data() throws IOException {
    SparkSession spark = SparkCluster.session();
    data = SparkCluster.customers(spark, 3000, 5)
        .withColumn("is_val", rand(17).lt(0.25))
        .repartition(3, col("id")).sortWithinPartitions("id").cache();
    data.count();
  }

  private static StokerEstimator estimator() {
    return new StokerEstimator()
        .setFeatureCols(new String[] {"x", "y"})
        .setLabelCol("label")
        .setModel(StokerEstimatorIT.MLP)
        .setLearningRate(0.01)
        .setBatchSize(64)
        .setRounds(8)
        .setSeed(2)
        .setValidationIndicatorCol("is_val");
  }

  @Test
  void earlyStoppingReturnsTheBestRoundsStateAsItsCheckpointHoldsIt(@TempDir Path dir)
      throws IOException {
    // A min delta no round can beat: round 0 stays best, and two rounds later it stops.
    StokerModel model = estimator()
        .setEvalMetric("accuracy")
        .setEarlyStoppingRounds(2)
        .setEarlyStoppingMinDelta(10.0)
        .setCheckpointDir(dir.toString())
        .fit(data);
    List<RoundStats> history = model.getHistory();
    assertEquals(3, history.size());
    FitSummary summary = model.trainingSummary();
    assertTrue(summary.stoppedEarly(), summary.toString());
    assertEquals(0, summary.bestRound());
    assertTrue(summary.stopReason().contains("did not improve by more than 10.0 for 2 rounds"),
        summary.stopReason());
    for (RoundStats r : history) {
      assertEquals(List.of("accuracy", "auc", "logloss", "loss"),
          List.copyOf(new java.util.TreeSet<>(r.getValidation().keySet())));
    }
    assertEquals(history.get(0).getValidation().get("accuracy"), summary.bestValue(), 0.0);
    // The returned state is round 0's checkpoint, byte for byte, not the last round's.
    byte[] best = Files.readAllBytes(dir.resolve("round-00000.safetensors"));
    byte[] last = Files.readAllBytes(dir.resolve("round-00002.safetensors"));
    assertArrayEquals(best, model.getState());
    assertTrue(!java.util.Arrays.equals(last, model.getState()));
    // A saved model keeps its summary and validation history.
    Path saved = dir.resolve("model");
    model.write().overwrite().save(saved.toString());
    StokerModel loaded = StokerModel.load(saved.toString());
    assertEquals(summary, loaded.trainingSummary());
    assertEquals(history.get(1).getValidation(), loaded.getHistory().get(1).getValidation());
  }

  @Test
  void validationThatCannotWorkFailsBeforeTrainingNamingWhy() {
    String text = assertThrows(InvalidInputException.class,
        () -> estimator().setValidationIndicatorCol("label").fit(data)).getMessage();
    assertTrue(text.contains("must be boolean"), text);
    text = assertThrows(InvalidInputException.class,
        () -> estimator().setValidationIndicatorCol("").setEarlyStoppingRounds(2).fit(data))
        .getMessage();
    assertTrue(text.contains("need a validation set"), text);
    text = assertThrows(InvalidInputException.class,
        () -> estimator().setEvalMetric("rmse").fit(data)).getMessage();
    assertTrue(text.contains("does not apply to a classifier"), text);
  }
}

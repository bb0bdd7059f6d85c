package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.rand;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import dev.stoker.InvalidInputException;
import java.io.IOException;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.spark.ml.Pipeline;
import org.apache.spark.ml.PipelineModel;
import org.apache.spark.ml.PipelineStage;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Hyperparameter search on the two-executor cluster: ASHA against the full grid on the
 * same 16 configurations and seeds, the data put once for a whole search, and the
 * inputs a search refuses.
 */
class TunerIT {
  private static Dataset<Row> data;

  /** 4 learning rates x 2 networks x 2 batch sizes. */
  private static final String SPACE = "{\"learningRate\": {\"grid\": [0.0003, 0.003, 0.03, 0.3]},"
      + " \"model.hidden\": {\"grid\": [[4], [32, 32]]}, \"batchSize\": {\"grid\": [32, 256]}}";

  @BeforeAll
  static void data() throws IOException {
    data = SparkCluster.customers(SparkCluster.session(), 2400, 7)
        .withColumn("is_val", rand(3).lt(0.25))
        .repartition(2, col("id")).sortWithinPartitions("id").cache();
    data.count();
  }

  private static StokerEstimator estimator() {
    return new StokerEstimator()
        .setFeatureCols(new String[] {"x", "y"})
        .setLabelCol("label")
        .setModel(StokerEstimatorIT.MLP)
        .setSeed(2)
        .setValidationIndicatorCol("is_val");
  }

  private static StokerTuner tuner() {
    return new StokerTuner().setEstimator(estimator()).setSpace(SPACE)
        .setMaxRounds(4).setMinRounds(1).setReductionFactor(2).setParallelism(2);
  }

  private static long partitionsPut() throws IOException {
    return ServerCleanupIT.stats().get("partitions_in").asLong();
  }

  private static Map<Integer, Row> byTrial(StokerTunerModel model) {
    Map<Integer, Row> out = new HashMap<>();
    for (Row r : model.trials().collectAsList()) out.put(r.getInt(0), r);
    return out;
  }

  @Test
  void ashaStopsLowPerformersEarlyAndFindsTheBestOfTheFullGrid(@TempDir Path dir)
      throws IOException {
    long before = partitionsPut();
    StokerTunerModel asha = tuner().fit(data);
    // Two training and two validation partitions, once each, for all 16 trials.
    assertEquals(4, partitionsPut() - before);
    Map<Integer, Row> trials = byTrial(asha);
    assertEquals(16, trials.size());
    int[] atLeast = new int[3];
    int rounds = 0;
    for (Row r : trials.values()) {
      int rung = r.getAs("rung");
      for (int k = 0; k <= rung; k++) atLeast[k]++;
      rounds += (int) r.getAs("rounds");
      assertEquals(List.of(1, 2, 4).subList(0, rung + 1).get(rung), (Integer) r.getAs("rounds"),
          r.toString());
      assertEquals(rung + 1, r.getList(r.fieldIndex("rung_metrics")).size());
    }
    // Every trial ran rung 0; each rung holds at least the top half of the one below
    // (ASHA may promote a trial that a later one pushes out of the top half) and
    // fewer than all: low performers stopped early.
    assertEquals(16, atLeast[0]);
    assertTrue(atLeast[1] >= 8 && atLeast[1] < 16, java.util.Arrays.toString(atLeast));
    assertTrue(atLeast[2] >= 4 && atLeast[2] < atLeast[1], java.util.Arrays.toString(atLeast));
    assertTrue(rounds < 16 * 4, "rounds " + rounds);

    long beforeGrid = partitionsPut();
    StokerTunerModel grid = tuner().setScheduler("none").fit(data);
    assertEquals(4, partitionsPut() - beforeGrid);
    Map<Integer, Row> full = byTrial(grid);
    double gridBest = Double.MAX_VALUE;
    for (Row r : full.values()) {
      assertEquals("completed", r.getAs("status"));
      assertEquals(4, (int) r.getAs("rounds"));
      gridBest = Math.min(gridBest, r.getDouble(r.fieldIndex("metric")));
    }
    Row best = trials.values().stream().filter(r -> r.getAs("best")).findFirst().get();
    double ashaBest = best.getDouble(best.fieldIndex("metric"));
    // The same configuration and seed trained the same 4 rounds, paused or not.
    int index = best.getAs("trial");
    assertEquals(full.get(index).getDouble(full.get(index).fieldIndex("metric")), ashaBest, 1e-3);
    assertTrue(ashaBest <= gridBest + 0.02, ashaBest + " vs the grid's " + gridBest);
    assertEquals(ashaBest, asha.bestModel().trainingSummary().bestValue(), 0.0);
    JsonNode stats = ServerCleanupIT.stats();
    assertTrue(ServerCleanupIT.names(stats.get("jobs")).isEmpty(), stats.get("jobs").toString());

    // A Pipeline stage that saves and loads, trials and all.
    Pipeline pipeline = new Pipeline().setStages(new PipelineStage[] {
        tuner().setScheduler("none").setMaxRounds(1).setSpace(
            "{\"learningRate\": {\"choice\": [0.01, 0.001]}}").setNumTrials(2)});
    PipelineModel fitted = pipeline.fit(data);
    fitted.write().overwrite().save(dir.resolve("pipeline").toString());
    PipelineModel loaded = PipelineModel.load(dir.resolve("pipeline").toString());
    StokerTunerModel tuned = (StokerTunerModel) loaded.stages()[0];
    assertEquals(2, tuned.trials().count());
    assertEquals(((StokerTunerModel) fitted.stages()[0]).trialsJson(), tuned.trialsJson());
    assertEquals(data.count(), loaded.transform(data).filter(col("prediction").isNotNull()).count());
    pipeline.write().overwrite().save(dir.resolve("estimator").toString());
    StokerTuner again = (StokerTuner) Pipeline.load(dir.resolve("estimator").toString())
        .getStages()[0];
    assertEquals(2, again.getNumTrials());
    assertEquals(StokerEstimatorIT.MLP, again.getEstimator().getModel());
  }

  @Test
  void badSearchesFailBeforeTrainingNamingWhy() {
    String text = assertThrows(InvalidInputException.class,
        () -> tuner().setSpace("{}").fit(data)).getMessage();
    assertTrue(text.contains("search space is empty"), text);
    text = assertThrows(InvalidInputException.class,
        () -> tuner().setSpace("{\"learningRate\": {\"grid\": []}}").fit(data)).getMessage();
    assertTrue(text.contains("'learningRate' has an empty grid"), text);
    text = assertThrows(InvalidInputException.class,
        () -> tuner().setSpace("{\"hiddenSize\": {\"grid\": [8, 16]}}").fit(data)).getMessage();
    assertTrue(text.contains("'hiddenSize' is not a param of StokerEstimator"), text);
    text = assertThrows(InvalidInputException.class,
        () -> tuner().setSpace("{\"labelCol\": {\"grid\": [\"x\"]}}").fit(data)).getMessage();
    assertTrue(text.contains("'labelCol' cannot be searched"), text);
    text = assertThrows(InvalidInputException.class,
        () -> tuner().setTunerMetric("rmse").fit(data)).getMessage();
    assertTrue(text.contains("evalMetric 'rmse' does not apply to a classifier"), text);
    text = assertThrows(InvalidInputException.class,
        () -> tuner().setSpace("{\"learningRate\": {\"log_uniform\": [0, 1]}}").fit(data))
        .getMessage();
    assertTrue(text.contains("log_uniform needs a low above 0"), text);
    text = assertThrows(InvalidInputException.class,
        () -> tuner().setSpace("{\"learningRate\": {\"grid\": [-1]}}").fit(data)).getMessage();
    assertTrue(text.contains("learningRate must be greater than 0.0"), text);
    text = assertThrows(InvalidInputException.class,
        () -> tuner().setSpace("{\"model.num_classes\": {\"grid\": [2, 3]}}").fit(data))
        .getMessage();
    assertTrue(text.contains("'model.num_classes' cannot be searched: it changes the task"), text);
    text = assertThrows(InvalidInputException.class,
        () -> tuner().setSpace("{\"batchSize\": {\"grid\": [32.5]}}").fit(data)).getMessage();
    assertTrue(text.contains("'batchSize' takes whole numbers, not 32.5"), text);
    text = assertThrows(InvalidInputException.class, () -> tuner().setNumTrials(0)).getMessage();
    assertTrue(text.contains("numTrials must be at least 1"), text);
    text = assertThrows(InvalidInputException.class, () -> tuner().setMaxRounds(0)).getMessage();
    assertTrue(text.contains("maxRounds must be at least 1"), text);
    text = assertThrows(InvalidInputException.class,
        () -> tuner().setMinRounds(5).setMaxRounds(4).fit(data)).getMessage();
    assertTrue(text.contains("minRounds (5) is above maxRounds (4)"), text);
    text = assertThrows(InvalidInputException.class,
        () -> new StokerTuner().setSpace(SPACE).fit(data)).getMessage();
    assertTrue(text.contains("has no estimator"), text);
  }

  /** A configuration the servers refuse fails its trial only; the search goes on. */
  @Test
  void aTrialTheServerRefusesFailsAloneAndLeavesNothingBehind() throws IOException {
    StokerTunerModel model = tuner().setMaxRounds(1).setScheduler("none")
        .setSpace("{\"model.hidden\": {\"grid\": [[0], [8]]}}").fit(data);
    Map<Integer, Row> trials = byTrial(model);
    String failed = trials.get(0).getAs("status");
    assertTrue(failed.startsWith("failed:") && failed.contains("hidden layer sizes must be positive"),
        failed);
    assertEquals("completed", trials.get(1).getAs("status"));
    assertTrue((boolean) trials.get(1).getAs("best"));
    assertTrue(ServerCleanupIT.names(ServerCleanupIT.stats().get("jobs")).isEmpty());
  }
}

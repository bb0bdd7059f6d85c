package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Tree aggregation ({@code treeAggregate} at depth 2, which fit picks past 64 partitions or
 * near {@code spark.driver.maxResultSize}) with real states: the same data, seed and
 * partitioning fitted once with the driver merging every state and once with the executors
 * merging first give the same model. {@code spark.stoker.train.aggregationDepth} forces
 * each path on 12 partitions (at depth 2, treeAggregate merges 12 partitions into 3 on the
 * executors).
 */
class TreeAggregationIT {
  private static final int PARTITIONS = 12;
  private static SparkSession spark;
  private static Dataset<Row> train;
  /** Names of the stages submitted since the last clear ("treeAggregate at ..."). */
  private static final List<String> stages = new ArrayList<>();

  @BeforeAll
  static void data() throws IOException {
    spark = SparkCluster.session();
    train = SparkCluster.customers(spark, 2400, 13).repartition(PARTITIONS, col("id"))
        .sortWithinPartitions("id").cache();
    train.count();
    spark.sparkContext().addSparkListener(new SparkListener() {
      @Override
      public void onStageSubmitted(SparkListenerStageSubmitted submitted) {
        synchronized (stages) {
          stages.add(submitted.stageInfo().name());
        }
      }
    });
  }

  /** Fits two rounds with the depth forced to {@code depth}. */
  private static StokerModel fit(int depth) {
    synchronized (stages) {
      stages.clear();
    }
    spark.conf().set("spark.stoker.train.aggregationDepth", Integer.toString(depth));
    try {
      return new StokerEstimator()
          .setFeatureCols(new String[] {"x", "y"})
          .setLabelCol("label")
          .setModel("{\"type\": \"mlp\", \"hidden\": [16], \"num_classes\": 2}")
          .setOptimizer("adam")
          .setLearningRate(0.01)
          .setBatchSize(64)
          .setLocalEpochs(1)
          .setRounds(2)
          .setSeed(3)
          .fit(train);
    } finally {
      spark.conf().unset("spark.stoker.train.aggregationDepth");
    }
  }

  /** Waits (the listener bus is asynchronous) until {@code count} stages named so ran. */
  private static List<String> awaitStages(String prefix, int count) throws InterruptedException {
    long deadline = System.nanoTime() + 20_000_000_000L;
    while (true) {
      List<String> seen;
      synchronized (stages) {
        seen = new ArrayList<>(stages);
      }
      if (seen.stream().filter(s -> s.startsWith(prefix)).count() >= count
          || System.nanoTime() > deadline) {
        return seen;
      }
      Thread.sleep(50);
    }
  }

  @Test
  void treeAggregationGivesTheFlatPathsState() throws IOException, InterruptedException {
    assertEquals(PARTITIONS, train.rdd().getNumPartitions());

    StokerModel flat = fit(1);
    List<String> flatStages = awaitStages("runJob at Rounds.scala", 2);
    assertEquals(2, flatStages.stream().filter(s -> s.startsWith("runJob at Rounds.scala"))
        .count(), flatStages.toString());
    assertFalse(flatStages.stream().anyMatch(s -> s.startsWith("treeAggregate")),
        flatStages.toString());

    StokerModel tree = fit(2);
    // Per round, a stage that trains and merges on the executors, and one that merges
    // their partial means.
    List<String> treeStages = awaitStages("treeAggregate at Rounds.scala", 4);
    assertEquals(4, treeStages.stream()
        .filter(s -> s.startsWith("treeAggregate at Rounds.scala")).count(),
        treeStages.toString());

    for (StokerModel m : List.of(flat, tree)) {
      assertEquals(2, m.getHistory().size());
      assertEquals(PARTITIONS, m.getHistory().get(1).partitions());
      assertEquals(train.count(), m.getHistory().get(1).samples());
    }
    assertEquals(flat.getHistory().get(1).loss(), tree.getHistory().get(1).loss(), 1e-6);
    Map<String, double[]> expected = SparkCluster.floatTensors(flat.getState());
    Map<String, double[]> actual = SparkCluster.floatTensors(tree.getState());
    assertEquals(expected.keySet(), actual.keySet());
    assertTrue(expected.keySet().stream().anyMatch(k -> k.startsWith("optimizer/")),
        expected.keySet().toString());
    for (String name : expected.keySet()) {
      assertArrayEquals(expected.get(name), actual.get(name), 1e-6, name);
    }
  }
}

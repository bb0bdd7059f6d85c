package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.apache.spark.ml.Pipeline;
import org.apache.spark.ml.PipelineModel;
import org.apache.spark.ml.PipelineStage;
import org.apache.spark.ml.feature.VectorAssembler;
import org.apache.spark.ml.linalg.Vector;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** fit, transform, persistence, pipelines and resume on a real two-executor cluster. */
class StokerEstimatorIT {
  static final String MLP = "{\"type\": \"mlp\", \"hidden\": [32, 32], \"num_classes\": 2}";
  private static SparkSession spark;
  private static Dataset<Row> train;
  private static Dataset<Row> test;

  @BeforeAll
  static void data() throws IOException {
    spark = SparkCluster.session();
    Dataset<Row> table = SparkCluster.customers(spark, 6000, 7);
    Dataset<Row>[] parts = table.randomSplit(new double[] {0.8, 0.2}, 11);
    // Hash-partitioned and sorted within partitions: every run sees the same rows in the
    // same order per partition, so training is reproducible.
    train = parts[0].repartition(4, col("id")).sortWithinPartitions("id").cache();
    test = parts[1].orderBy("id").cache();
    train.count();
    test.count();
  }

  static StokerEstimator estimator() {
    return new StokerEstimator()
        .setFeatureCols(new String[] {"x", "y"})
        .setLabelCol("label")
        .setModel(MLP)
        .setOptimizer("adam")
        .setLearningRate(0.01)
        .setBatchSize(64)
        .setLocalEpochs(3)
        .setRounds(6)
        .setSeed(3);
  }

  static double accuracy(Dataset<Row> predicted) {
    long right = predicted.filter(col("prediction").equalTo(col("label"))).count();
    return (double) right / predicted.count();
  }

  @Test
  void fitOnAJoinedAndAggregatedTableLearnsANonLinearBoundary() {
    assertEquals(4, train.rdd().getNumPartitions());
    StokerModel model = estimator().fit(train);
    List<RoundStats> history = model.getHistory();
    assertEquals(6, history.size());
    assertEquals(0, history.get(0).round());
    assertEquals(4, history.get(0).partitions());
    assertEquals(train.count(), history.get(0).samples());
    assertTrue(history.get(5).loss() < history.get(0).loss(), history.toString());
    assertEquals("multiclass:2", model.task());
    assertTrue(model.isClassifier());
    double acc = accuracy(model.transform(test));
    assertTrue(acc >= 0.9, "held-out accuracy " + acc);
  }

  @Test
  void oneRoundAveragesThePartitionStatesWeightedBySamples() throws IOException {
    StokerEstimator one = estimator().setRounds(1);
    List<PartitionState> parts = one.partitionStates(train, 0, null);
    assertEquals(4, parts.size());
    long total = parts.stream().mapToLong(PartitionState::samples).sum();
    assertEquals(train.count(), total);
    Map<String, double[]> expected = null;
    for (PartitionState p : parts) {
      Map<String, double[]> tensors = SparkCluster.floatTensors(p.state());
      double w = (double) p.samples() / total;
      if (expected == null) {
        expected = new java.util.TreeMap<>();
        for (Map.Entry<String, double[]> e : tensors.entrySet()) {
          expected.put(e.getKey(), new double[e.getValue().length]);
        }
      }
      for (Map.Entry<String, double[]> e : tensors.entrySet()) {
        double[] acc = expected.get(e.getKey());
        for (int i = 0; i < acc.length; i++) {
          acc[i] += w * e.getValue()[i];
        }
      }
    }
    Map<String, double[]> averaged = SparkCluster.floatTensors(one.fit(train).getState());
    assertEquals(expected.keySet(), averaged.keySet());
    assertTrue(averaged.keySet().stream().anyMatch(k -> k.startsWith("optimizer/")),
        "optimizer state is averaged by default: " + averaged.keySet());
    for (String name : expected.keySet()) {
      assertArrayEquals(expected.get(name), averaged.get(name), 1e-5, name);
    }
  }

  @Test
  void transformKeepsEveryRowInOrderAndSaveLoadPredictsTheSame(@TempDir Path dir)
      throws IOException {
    StokerModel model = estimator().setRounds(2).fit(train);
    Dataset<Row> input = test.repartition(3).sortWithinPartitions("id");
    List<Row> in = input.collectAsList();
    List<Row> out = model.transform(input).collectAsList();
    assertEquals(in.size(), out.size());
    for (int i = 0; i < in.size(); i++) {
      assertEquals(in.get(i).<Long>getAs("id"), out.get(i).<Long>getAs("id"), "row " + i);
      Vector p = out.get(i).getAs("probability");
      assertEquals(2, p.size());
      assertEquals(1.0, p.apply(0) + p.apply(1), 1e-5);
      double prediction = out.get(i).getAs("prediction");
      assertEquals(p.apply(1) > p.apply(0) ? 1.0 : 0.0, prediction, "row " + i);
    }

    String path = dir.resolve("model").toString();
    model.write().overwrite().save(path);
    StokerModel loaded = StokerModel.load(path);
    assertEquals(model.uid(), loaded.uid());
    assertEquals(model.getHistory(), loaded.getHistory());
    assertArrayEquals(model.getState(), loaded.getState());
    assertEquals(MLP, loaded.getModel());
    List<Row> again = loaded.transform(input).select("id", "prediction", "probability")
        .collectAsList();
    assertEquals(model.transform(input).select("id", "prediction", "probability")
        .collectAsList(), again);
  }

  @Test
  void worksInAPipelineAfterVectorAssembler(@TempDir Path dir) throws IOException {
    VectorAssembler assembler = new VectorAssembler()
        .setInputCols(new String[] {"x", "y"}).setOutputCol("features");
    StokerEstimator stoker = estimator().setFeatureCols(new String[0])
        .setFeaturesCol("features");
    Pipeline pipeline = new Pipeline().setStages(new PipelineStage[] {assembler, stoker});
    PipelineModel fitted = pipeline.fit(train);
    double acc = accuracy(fitted.transform(test));
    assertTrue(acc >= 0.9, "held-out accuracy " + acc);

    String path = dir.resolve("pipeline").toString();
    fitted.write().overwrite().save(path);
    PipelineModel loaded = PipelineModel.load(path);
    assertEquals(fitted.transform(test).select("prediction").collectAsList(),
        loaded.transform(test).select("prediction").collectAsList());
  }

  @Test
  void fitResumesAfterTheLastCheckpointedRound(@TempDir Path dir) throws IOException {
    String checkpoints = dir.resolve("ckpt").toString();
    StokerModel first = estimator().setRounds(2).setCheckpointDir(checkpoints).fit(train);
    assertTrue(Files.exists(dir.resolve("ckpt/round-00001.safetensors")));
    StokerModel resumed = estimator().setRounds(4).setCheckpointDir(checkpoints).fit(train);
    List<RoundStats> history = resumed.getHistory();
    assertEquals(4, history.size());
    assertEquals(first.getHistory(), history.subList(0, 2));
    assertTrue(Files.exists(dir.resolve("ckpt/round-00003.safetensors")));
    // Resuming from round 2 gives what four uninterrupted rounds give.
    StokerModel straight = estimator().setRounds(4).fit(train);
    Map<String, double[]> a = SparkCluster.floatTensors(straight.getState());
    Map<String, double[]> b = SparkCluster.floatTensors(resumed.getState());
    for (String name : a.keySet()) {
      assertArrayEquals(a.get(name), b.get(name), 1e-6, name);
    }
  }
}

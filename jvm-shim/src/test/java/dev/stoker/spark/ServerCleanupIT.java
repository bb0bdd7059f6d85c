package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.stoker.jni.NativeClient;
import dev.stoker.server.LocalServer;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerJobStart;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * What Spark leaves on the node's servers: nothing after a failed or cancelled fit, the
 * model (ready to serve) after a finished one, and nothing of it after {@code unload()}. In local-cluster both executors and the
 * driver share the node's one auto-started server, which the test reads by {@code stats}.
 */
class ServerCleanupIT {
  private static SparkSession spark;
  private static Dataset<Row> train;

  @BeforeAll
  static void data() throws IOException {
    spark = SparkCluster.session();
    train = SparkCluster.customers(spark, 2000, 5).repartition(4, col("id"))
        .sortWithinPartitions("id").cache();
    train.count();
  }

  /** The node's server, as Spark's tasks find it (the session's run directory). */
  static JsonNode stats() throws IOException {
    SparkSession session = SparkCluster.session();
    LocalServer.configure("stoker.run.dir", session.conf().get("spark.stoker.server.runDir"));
    LocalServer.configure("stoker.bin", session.conf().get("spark.stoker.server.bin"));
    try (NativeClient client = LocalServer.ensure().connect()) {
      return new ObjectMapper().readTree(client.action("stats", "{}"));
    }
  }

  static List<String> names(JsonNode list) {
    List<String> out = new ArrayList<>();
    list.forEach(n -> out.add(n.get("name").asText()));
    return out;
  }

  @Test
  void aFitCancelledInRoundTwoLeavesNoJobOnTheServers() throws IOException {
    StokerEstimator estimator = StokerEstimatorIT.estimator().setRounds(4).setLocalEpochs(1);
    String prefix = "spark-" + estimator.uid() + "-";
    AtomicInteger cancelled = new AtomicInteger();
    List<String> jobsAtCancel = new java.util.concurrent.CopyOnWriteArrayList<>();
    SparkListener canceller = new SparkListener() {
      @Override
      public void onJobStart(SparkListenerJobStart start) {
        String description = start.properties().getProperty("spark.job.description", "");
        if (description.startsWith("stoker fit: round 2 of")) {
          cancelled.incrementAndGet();
          try {
            jobsAtCancel.addAll(names(stats().get("jobs")));
          } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
          }
          spark.sparkContext().cancelJob(start.jobId());
        }
      }
    };
    spark.sparkContext().addSparkListener(canceller);
    try {
      Exception e = assertThrows(Exception.class, () -> estimator.fit(train));
      assertTrue(String.valueOf(e.getMessage()).contains("cancel"), String.valueOf(e));
    } finally {
      spark.sparkContext().removeSparkListener(canceller);
    }
    assertEquals(1, cancelled.get());
    // Round 1 left the job and its partitions on the server...
    assertTrue(jobsAtCancel.stream().anyMatch(n -> n.startsWith(prefix)), jobsAtCancel.toString());
    // ...and the cancelled fit took them away.
    JsonNode stats = stats();
    assertTrue(names(stats.get("jobs")).stream().noneMatch(n -> n.startsWith(prefix)),
        stats.get("jobs").toString());
    // The same estimator fits afterwards, and a finished fit leaves nothing either.
    estimator.setRounds(2).fit(train);
    stats = stats();
    assertTrue(names(stats.get("jobs")).stream().noneMatch(n -> n.startsWith(prefix)),
        stats.get("jobs").toString());
  }

  @Test
  void anUnloadedModelIsGoneFromTheServersAndATransformRegistersItAgain() throws IOException {
    StokerModel model = StokerEstimatorIT.estimator().setRounds(1).setLocalEpochs(1).fit(train);
    String prefix = "spark-" + model.uid() + "-";
    // fit registered it already, so the first transform does not pay for that.
    assertTrue(names(stats().get("models")).stream().anyMatch(n -> n.startsWith(prefix)));
    long before = model.transform(train).count();
    model.register("cleanup_it");
    assertTrue(names(stats().get("models")).stream().anyMatch(n -> n.startsWith(prefix)));
    assertTrue(names(stats().get("models")).contains("cleanup_it"));

    assertTrue(model.unload() >= 1);
    JsonNode models = stats().get("models");
    assertTrue(names(models).stream().noneMatch(n -> n.startsWith(prefix)), models.toString());
    assertTrue(!names(models).contains("cleanup_it"), models.toString());
    assertTrue(!ModelCatalog.names().contains("cleanup_it"));

    assertEquals(before, model.transform(train).count());
    assertTrue(names(stats().get("models")).stream().anyMatch(n -> n.startsWith(prefix)));
  }
}

package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.count;
import static org.apache.spark.sql.functions.lit;
import static org.apache.spark.sql.functions.rand;
import static org.apache.spark.sql.functions.sum;
import static org.apache.spark.sql.functions.when;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.TreeMap;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;

/**
 * One real Spark cluster for the suites: {@code local-cluster[2,1,1024]} (two executor
 * JVMs), with pyspark's installation as SPARK_HOME, stoker-spark.jar shipped to executors
 * through {@code spark.jars}, and the servers auto-started per node in a private run
 * directory.
 */
final class SparkCluster {
  private static SparkSession spark;

  private SparkCluster() {}

  static synchronized SparkSession session() throws IOException {
    if (spark == null) {
      Path runDir = Files.createTempDirectory("stoker-it-run");
      spark = SparkSession.builder()
          .master("local-cluster[2,1,1024]")
          .appName("stoker-it")
          .config("spark.jars", System.getProperty("stoker.jar"))
          .config("spark.sql.extensions", "dev.stoker.spark.sql.StokerExtensions")
          .config("spark.stoker.server.bin", System.getProperty("stoker.bin"))
          .config("spark.stoker.server.device", "cpu")
          .config("spark.stoker.server.runDir", runDir.toString())
          .config("spark.sql.shuffle.partitions", "4")
          .config("spark.ui.enabled", "false")
          .getOrCreate();
      Runtime.getRuntime().addShutdownHook(new Thread(() -> spark.stop()));
    }
    return spark;
  }

  /**
   * The training table, built the way users build theirs: per-customer aggregates of an
   * events table (group-by) joined to the customers table. The label is whether the
   * customer's point (x, y), which only the events carry, lies outside a circle: a task
   * no linear model solves (about 72% by guessing the majority class).
   */
  static Dataset<Row> customers(SparkSession spark, int n, long seed) {
    Dataset<Row> points = spark.range(n).toDF("id")
        .withColumn("px", rand(seed).multiply(4).minus(2))
        .withColumn("py", rand(seed + 1).multiply(4).minus(2));
    Dataset<Row> customers = points.select(col("id"),
        when(col("px").multiply(col("px")).plus(col("py").multiply(col("py"))).gt(1.44), 1)
            .otherwise(0).as("label"),
        rand(seed + 2).multiply(100).cast("int").as("segment"));
    // Four events per customer: two carry halves of x, two halves of y.
    Dataset<Row> events = points
        .crossJoin(spark.range(4).toDF("k"))
        .select(col("id").as("customer"),
            when(col("k").lt(2), lit("x")).otherwise(lit("y")).as("kind"),
            when(col("k").lt(2), col("px")).otherwise(col("py")).divide(2).as("amount"));
    Dataset<Row> perCustomer = events.groupBy("customer").agg(
        sum(when(col("kind").equalTo("x"), col("amount"))).as("x"),
        sum(when(col("kind").equalTo("y"), col("amount"))).as("y"),
        count(lit(1)).as("events"));
    return customers.join(perCustomer, customers.col("id").equalTo(perCustomer.col("customer")))
        .select("id", "x", "y", "events", "segment", "label");
  }

  /** Float tensors of a safetensors state, by name (for checking averages by hand). */
  static Map<String, double[]> floatTensors(byte[] state) throws IOException {
    ByteBuffer buf = ByteBuffer.wrap(state).order(ByteOrder.LITTLE_ENDIAN);
    int headerLength = (int) buf.getLong(0);
    JsonNode header = new ObjectMapper().readTree(
        new String(state, 8, headerLength, StandardCharsets.UTF_8));
    Map<String, double[]> out = new TreeMap<>();
    for (Map.Entry<String, JsonNode> e : header.properties()) {
      if (e.getKey().equals("__metadata__") || !e.getValue().get("dtype").asText().equals("F32")) {
        continue;
      }
      long start = e.getValue().get("data_offsets").get(0).asLong();
      long end = e.getValue().get("data_offsets").get(1).asLong();
      double[] values = new double[(int) ((end - start) / 4)];
      for (int i = 0; i < values.length; i++) {
        values[i] = buf.getFloat((int) (8 + headerLength + start + 4L * i));
      }
      out.put(e.getKey(), values);
    }
    return out;
  }
}

package dev.stoker.spark;

import static dev.stoker.spark.sql.StokerFunctions.stokerPredict;
import static dev.stoker.spark.sql.StokerFunctions.stokerPredictProba;
import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.lit;
import static org.apache.spark.sql.functions.when;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.stoker.InvalidInputException;
import dev.stoker.NotFoundException;
import dev.stoker.jni.NativeClient;
import dev.stoker.server.LocalServer;
import java.io.IOException;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.spark.SparkException;
import org.apache.spark.ml.linalg.Vector;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.stoker.ColumnarBatches;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** stoker_predict in SQL and the DataFrame API, evaluated in Arrow batches. */
class StokerSqlIT {
  private static SparkSession spark;
  private static Dataset<Row> train;
  private static Dataset<Row> test;
  private static StokerModel classifier;
  private static StokerModel regressor;

  @BeforeAll
  static void models() throws IOException {
    spark = SparkCluster.session();
    Dataset<Row> table = SparkCluster.customers(spark, 4000, 21);
    Dataset<Row>[] parts = table.randomSplit(new double[] {0.8, 0.2}, 3);
    train = parts[0].repartition(4).cache();
    test = parts[1].orderBy("id").cache();
    classifier = StokerEstimatorIT.estimator().setRounds(3).fit(train);
    classifier.register("rings");
    // A second model: regression of the (aggregated) event count on x and y.
    regressor = StokerEstimatorIT.estimator().setRounds(2)
        .setLabelCol("segment").setLoss("mse")
        .setModel("{\"type\": \"linear_regression\"}").fit(train);
    regressor.register("segments");
    test.createOrReplaceTempView("people");
  }

  static Map<Long, Row> byId(List<Row> rows) {
    Map<Long, Row> out = new HashMap<>();
    for (Row r : rows) {
      out.put(r.getLong(r.fieldIndex("id")), r);
    }
    return out;
  }

  @Test
  void sqlAndDataFrameCallsMatchTransform() {
    Map<Long, Row> expected = byId(classifier.transform(test).collectAsList());
    List<Row> sql = spark.sql(
        "SELECT id, stoker_predict('rings', x, y) AS p, stoker_predict_proba('rings', x, y) AS q "
            + "FROM people").collectAsList();
    assertEquals(expected.size(), sql.size());
    for (Row r : sql) {
      Row e = expected.get(r.getLong(0));
      assertEquals(e.<Double>getAs("prediction"), r.getDouble(1), "id " + r.getLong(0));
      Vector p = e.getAs("probability");
      List<Float> q = r.getList(2);
      assertEquals(p.apply(1), q.get(1), 1e-6);
    }
    List<Row> df = test.select(col("id"), stokerPredict("rings", col("x"), col("y")).as("p"))
        .collectAsList();
    for (Row r : df) {
      assertEquals(expected.get(r.getLong(0)).<Double>getAs("prediction"), r.getDouble(1));
    }
    String plan = spark.sql("SELECT stoker_predict('rings', x, y) FROM people")
        .queryExecution().executedPlan().toString();
    assertTrue(plan.contains("StokerEval"), plan);
  }

  /**
   * A cached table's batches are read in place: calls on plain columns get them copied
   * column-wise, a call with a computed feature (the literal) and a batch holding a null
   * read rows. All must answer what the same rows, not cached, answer.
   */
  @Test
  void aCachedScanAnswersAsItsRowsDo() {
    String query = "SELECT id, stoker_predict('rings', x, y) AS p, "
        + "stoker_predict_proba('rings', x, y) AS q, stoker_predict('segments', 1, x, y) AS s "
        + "FROM %s";
    withNullX().createOrReplaceTempView("fresh_rows");
    Map<Long, Row> fromRows = byId(spark.sql(String.format(query, "fresh_rows")).collectAsList());
    // A new Dataset of the same rows, cached: later queries of these rows scan the cache.
    Dataset<Row> cached = withNullX().cache();
    try {
      cached.count();
      assertTrue(ColumnarBatches.scan(cached).isDefined(), "a cached scan is columnar");
      cached.createOrReplaceTempView("cached_rows");
      Dataset<Row> scored = spark.sql(String.format(query, "cached_rows"));
      String plan = scored.queryExecution().executedPlan().toString();
      assertTrue(plan.contains("StokerEval") && plan.contains("InMemoryTableScan"), plan);
      List<Row> fromColumns = scored.collectAsList();
      assertEquals(fromRows.size(), fromColumns.size());
      for (Row r : fromColumns) {
        long id = r.getLong(0);
        Row e = fromRows.get(id);
        if (id == 7) {
          assertTrue(r.isNullAt(1) && r.isNullAt(2) && r.isNullAt(3), r.toString());
          continue;
        }
        assertEquals(e.getDouble(1), r.getDouble(1), "id " + id);
        assertEquals(e.<Float>getList(2).get(1), r.<Float>getList(2).get(1), 1e-6, "id " + id);
        assertEquals(e.getDouble(3), r.getDouble(3), 1e-5, "id " + id);
      }
    } finally {
      cached.unpersist(true);
    }
  }

  private static Dataset<Row> withNullX() {
    return SparkCluster.customers(spark, 3000, 5)
        .withColumn("x", when(col("id").equalTo(7), lit(null)).otherwise(col("x")));
  }

  @Test
  void twoModelsOneQueryBelowAJoinAndAboveAFilter() {
    Dataset<Row> scored = spark.sql(
        "SELECT id, stoker_predict('rings', x, y) AS ring, "
            + "stoker_predict('segments', 1, x, y) AS seg FROM people WHERE x > 0");
    Dataset<Row> joined = scored.join(test.select("id", "label"), "id")
        .filter(col("ring").equalTo(col("label")).or(col("ring").notEqual(col("label"))));
    List<Row> rows = joined.collectAsList();
    assertEquals(test.filter("x > 0").count(), rows.size());
    Map<Long, Row> ring = byId(classifier.transform(test).collectAsList());
    Map<Long, Row> seg = byId(regressor.transform(test).collectAsList());
    for (Row r : rows) {
      long id = r.getLong(r.fieldIndex("id"));
      assertEquals(ring.get(id).<Double>getAs("prediction"), r.<Double>getAs("ring"));
      // float32 outputs of batches of different sizes (the filter changes them) may
      // round differently in libtorch's matrix kernels.
      assertEquals(seg.get(id).<Double>getAs("prediction"), r.<Double>getAs("seg"), 1e-5);
    }
    // In a WHERE condition, above a join.
    long inWhere = test.join(train.select("segment").distinct(), "segment")
        .filter(stokerPredict("rings", col("x"), col("y")).equalTo(1.0)).count();
    assertEquals(test.filter(col("id").isin(ring.entrySet().stream()
        .filter(e -> e.getValue().<Double>getAs("prediction") == 1.0)
        .map(Map.Entry::getKey).toArray())).count(), inWhere);
  }

  @Test
  void serverCallsFollowBatchesNotRows() throws IOException {
    long before = requests("rings");
    long rows = 1_200_000;
    Dataset<Row> big = spark.range(rows).repartition(4)
        .selectExpr("rand(1) * 4 - 2 AS x", "rand(2) * 4 - 2 AS y");
    Row sums = big.select(stokerPredict("rings", col("x"), col("y")).as("p"))
        .selectExpr("count(p)", "sum(p)").first();
    assertEquals(rows, sums.getLong(0));
    long calls = requests("rings") - before;
    // 65,536-row batches per partition: about 20 calls, never one per row.
    assertTrue(calls > 0 && calls <= 40, "server calls: " + calls);
  }

  /** Exchange requests the node's server counted for a model, over its versions. */
  static long requests(String model) throws IOException {
    try (NativeClient client = LocalServer.ensure().connect()) {
      JsonNode stats = new ObjectMapper().readTree(client.action("stats", "{}"));
      long total = 0;
      for (JsonNode m : stats.get("models")) {
        if (m.get("name").asText().equals(model)) {
          total += m.get("requests").asLong();
        }
      }
      return total;
    }
  }

  @Test
  void badCallsFailWithClearMessages() {
    NotFoundException missing = assertThrows(NotFoundException.class,
        () -> spark.sql("SELECT stoker_predict('nope', x, y) FROM people").collect());
    assertTrue(missing.getMessage().contains("no model named 'nope'"), missing.getMessage());

    InvalidInputException count = assertThrows(InvalidInputException.class,
        () -> spark.sql("SELECT stoker_predict('rings', x) FROM people").collect());
    assertTrue(count.getMessage().contains("takes 2 features (x, y)")
        && count.getMessage().contains("passes 1 (") && count.getMessage().contains("x: double"),
        count.getMessage());

    InvalidInputException type = assertThrows(InvalidInputException.class,
        () -> spark.sql("SELECT stoker_predict('rings', x, 'a') FROM people").collect());
    assertTrue(type.getMessage().contains("has type string"), type.getMessage());

    // Null features: a null prediction by default, an error when configured.
    Dataset<Row> withNull = test.withColumn("x",
        when(col("id").equalTo(test.first().getLong(0)), lit(null)).otherwise(col("x")));
    List<Row> nulls = withNull.select(stokerPredict("rings", col("x"), col("y")).as("p"))
        .filter(col("p").isNull()).collectAsList();
    assertEquals(1, nulls.size());
    spark.conf().set("spark.stoker.sql.nullFeatures", "error");
    try {
      SparkException e = assertThrows(SparkException.class, () -> withNull
          .select(stokerPredict("rings", col("x"), col("y"))).collect());
      assertTrue(String.valueOf(e.getMessage()).contains("feature 'x' is null")
          || rootMessage(e).contains("feature 'x' is null"), e.toString());
    } finally {
      spark.conf().unset("spark.stoker.sql.nullFeatures");
    }
  }

  static String rootMessage(Throwable e) {
    Throwable t = e;
    while (t.getCause() != null) {
      t = t.getCause();
    }
    return String.valueOf(t.getMessage());
  }
}

package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.lit;
import static org.apache.spark.sql.functions.when;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.InvalidInputException;
import java.io.IOException;
import org.apache.spark.SparkException;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.functions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Each bad input fails fit or transform at once with InvalidInputException naming the
 * column and the problem, and the cluster's servers keep serving the next job.
 */
class BadInputIT {
  private static SparkSession spark;
  private static Dataset<Row> table;

  @BeforeAll
  static void data() throws IOException {
    spark = SparkCluster.session();
    table = SparkCluster.customers(spark, 1000, 5).repartition(4).cache();
    table.count();
  }

  static StokerEstimator estimator() {
    return StokerEstimatorIT.estimator().setRounds(1).setLocalEpochs(1);
  }

  static InvalidInputException fitFails(StokerEstimator e, Dataset<Row> df) {
    return assertThrows(InvalidInputException.class, () -> e.fit(df));
  }

  static void mentions(Throwable e, String... parts) {
    for (String part : parts) {
      assertTrue(e.getMessage().contains(part), "'" + part + "' not in: " + e.getMessage());
    }
  }

  @Test
  void missingColumn() {
    InvalidInputException e = fitFails(estimator().setFeatureCols(new String[] {"x", "nope"}),
        table);
    mentions(e, "feature column 'nope' not found", "[id, x, y");
    e = fitFails(estimator().setLabelCol("target"), table);
    mentions(e, "label column 'target' not found");
  }

  @Test
  void stringFeatureColumn() {
    Dataset<Row> df = table.withColumn("x", col("x").cast("string"));
    InvalidInputException e = fitFails(estimator(), df);
    mentions(e, "feature column 'x' has type string");
  }

  @Test
  void nullInAFeatureColumn() {
    Dataset<Row> df = table.withColumn("y", when(col("id").equalTo(17), lit(null))
        .otherwise(col("y")));
    InvalidInputException e = fitFails(estimator(), df);
    mentions(e, "'y'", "null");
  }

  @Test
  void vectorsOfMixedSizes() {
    Dataset<Row> df = table.withColumn("features",
        when(col("id").equalTo(3), functions.array(col("x"), col("y"), col("x")))
            .otherwise(functions.array(col("x"), col("y"))));
    InvalidInputException e = fitFails(
        estimator().setFeatureCols(new String[0]).setFeaturesCol("features"), df);
    mentions(e, "'features'");
  }

  @Test
  void labelOutOfRange() {
    Dataset<Row> df = table.withColumn("label", when(col("id").equalTo(9), lit(5))
        .otherwise(col("label")));
    InvalidInputException e = fitFails(estimator(), df);
    mentions(e, "label", "5");
  }

  @Test
  void badModelSpec() {
    InvalidInputException e = fitFails(estimator().setModel("{\"type\": \"transformer\"}"),
        table);
    mentions(e, "transformer");
    e = fitFails(estimator().setModel("/no/such/model.pt"), table);
    mentions(e, "/no/such/model.pt");
  }

  @Test
  void transformOfANullFeatureFailsNamingTheColumnAndTheServersKeepServing() {
    StokerModel model = estimator().fit(table);
    Dataset<Row> df = table.withColumn("x", when(col("id").equalTo(4), lit(null))
        .otherwise(col("x")));
    SparkException e = assertThrows(SparkException.class, () -> model.transform(df).count());
    Throwable root = e;
    while (root.getCause() != null && !(root instanceof InvalidInputException)) {
      root = root.getCause();
    }
    assertTrue(root instanceof InvalidInputException, "cause: " + e);
    mentions(root, "'x'", "null");
    // The same servers train and predict the next job.
    assertEquals(table.count(), estimator().fit(table).transform(table).count());
  }
}

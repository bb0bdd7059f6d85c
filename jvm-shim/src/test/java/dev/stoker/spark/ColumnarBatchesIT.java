package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.lit;
import static org.apache.spark.sql.functions.sin;
import static org.apache.spark.sql.functions.when;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.InvalidInputException;
import java.io.IOException;
import java.util.Map;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.stoker.ColumnarBatches;
import org.junit.jupiter.api.Test;

/**
 * Cached DataFrames feed training through the columnar path (column vectors copied into
 * Arrow a column at a time); it must train exactly what the row path trains on the same
 * rows, and refuse what the row path refuses.
 */
class ColumnarBatchesIT {

  private static Dataset<Row> table(SparkSession spark, int rows, boolean withNull) {
    return spark.range(0, rows, 1, 3).select(
        when(col("id").equalTo(17).and(lit(withNull)), lit(null))
            .otherwise(col("id").cast("float").divide(rows).cast("float")).as("x"),
        sin(col("id")).as("y"),
        col("id").mod(2).cast("int").as("label"));
  }

  @Test
  void aCachedTableTrainsTheSameModelAsItsRows() throws IOException {
    SparkSession spark = SparkCluster.session();
    Dataset<Row> df = table(spark, 6000, false);
    StokerEstimator e = StokerEstimatorIT.estimator().setRounds(2).setLocalEpochs(1);
    Dataset<Row> cached = df.cache();
    Map<String, double[]> fromColumns;
    try {
      cached.count();
      assertTrue(ColumnarBatches.of(cached.select("x", "y", "label")).isDefined(),
          "a cached scan is columnar");
      assertTrue(ColumnarBatches.of(cached.select(col("x").plus(1), col("y"))).isEmpty(),
          "a computed column is not a scan's output");
      fromColumns = SparkCluster.floatTensors(e.fit(cached).getState());
    } finally {
      cached.unpersist(true);
    }
    // The same rows, computed again without the cache: the row path.
    assertTrue(ColumnarBatches.of(df.select("x", "y", "label")).isEmpty());
    Map<String, double[]> fromRows = SparkCluster.floatTensors(e.fit(df).getState());
    assertEquals(fromRows.keySet(), fromColumns.keySet());
    for (String name : fromRows.keySet()) {
      assertArrayEquals(fromRows.get(name), fromColumns.get(name), 0.0, name);
    }
  }

  @Test
  void aNullInACachedFeatureColumnIsRefusedByName() throws IOException {
    Dataset<Row> cached = table(SparkCluster.session(), 100, true).cache();
    try {
      cached.count();
      assertTrue(ColumnarBatches.of(cached).isDefined());
      InvalidInputException e = BadInputIT.fitFails(BadInputIT.estimator(), cached);
      BadInputIT.mentions(e, "'x'", "null");
    } finally {
      cached.unpersist();
    }
  }
}

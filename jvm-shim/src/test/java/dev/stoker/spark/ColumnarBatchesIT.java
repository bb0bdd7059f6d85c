package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.lit;
import static org.apache.spark.sql.functions.sin;
import static org.apache.spark.sql.functions.when;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.InvalidInputException;
import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.apache.spark.SparkException;
import org.apache.spark.ml.linalg.Vector;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.stoker.ColumnarBatches;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Cached DataFrames feed training through the columnar path (column vectors copied into
 * Arrow a column at a time); it must train exactly what the row path trains on the same
 * rows, and refuse what the row path refuses. Transforming a cached DataFrame reads its
 * batches the same way and must predict what the row path predicts, row for row.
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

  @Test
  void aCachedTableTransformsAsItsRowsDo() throws IOException {
    SparkSession spark = SparkCluster.session();
    // A boolean column rides along: no feature is one, so it is read from the batch's
    // rows, not copied into Arrow. (A string column would make the cache scan rows.)
    Dataset<Row> df = table(spark, 3000, false).withColumn("flag", col("y").gt(0));
    StokerModel model = BadInputIT.estimator().fit(df);
    // Slices smaller than a cached batch: each batch goes to the server in pieces.
    model.setInferenceBatchRows(300);
    List<Row> fromRows = model.transform(df).collectAsList();
    // A new Dataset: one already planned keeps its plan without the cache.
    Dataset<Row> cached = table(spark, 3000, false).withColumn("flag", col("y").gt(0)).cache();
    try {
      cached.count();
      assertTrue(ColumnarBatches.scan(cached).isDefined(), "a cached scan is columnar");
      List<Row> fromColumns = model.transform(cached).collectAsList();
      assertEquals(fromRows.size(), fromColumns.size());
      for (int i = 0; i < fromRows.size(); i++) {
        Row a = fromRows.get(i);
        Row b = fromColumns.get(i);
        for (int c = 0; c < 4; c++) {
          assertEquals(a.get(c), b.get(c), "row " + i + " column " + c);
        }
        assertEquals(a.getDouble(4), b.getDouble(4), 0.0, "prediction of row " + i);
        assertArrayEquals(((Vector) a.get(5)).toArray(), ((Vector) b.get(5)).toArray(), 1e-6,
            "probability of row " + i);
      }
    } finally {
      cached.unpersist(true);
    }
  }

  /**
   * Parquet's vectorized reader reuses one batch for all its reads: each batch must be
   * finished (sent, predicted, its rows handed on) before the next is read.
   */
  @Test
  void aParquetScanTransformsAsItsRowsDo(@TempDir Path dir) throws IOException {
    SparkSession spark = SparkCluster.session();
    Dataset<Row> df = table(spark, 3000, false);
    StokerModel model = BadInputIT.estimator().fit(df);
    Map<Double, Row> fromRows = new java.util.HashMap<>();
    for (Row r : model.transform(df).collectAsList()) {
      fromRows.put(r.getDouble(1), r);  // y = sin(id): one row per value
    }
    String path = dir.resolve("rows.parquet").toString();
    df.write().parquet(path);
    spark.conf().set("spark.sql.parquet.columnarReaderBatchSize", "64");
    try {
      Dataset<Row> file = spark.read().parquet(path);
      assertTrue(ColumnarBatches.scan(file).isDefined(), "a Parquet scan is columnar");
      // Slices of 50 rows out of batches of 64.
      List<Row> fromColumns = model.setInferenceBatchRows(50).transform(file).collectAsList();
      assertEquals(fromRows.size(), fromColumns.size());
      for (Row r : fromColumns) {
        Row e = fromRows.get(r.getDouble(1));
        assertEquals(e.getFloat(0), r.getFloat(0), "x of y " + r.getDouble(1));
        assertEquals(e.getDouble(3), r.getDouble(3), 0.0, "prediction of y " + r.getDouble(1));
        assertArrayEquals(((Vector) e.get(4)).toArray(), ((Vector) r.get(4)).toArray(), 1e-6);
      }
    } finally {
      spark.conf().unset("spark.sql.parquet.columnarReaderBatchSize");
    }
  }

  @Test
  void aNullInACachedFeatureColumnFailsTransformByName() throws IOException {
    SparkSession spark = SparkCluster.session();
    StokerModel model = BadInputIT.estimator().fit(table(spark, 100, false));
    Dataset<Row> cached = table(spark, 100, true).cache();
    try {
      cached.count();
      SparkException e = assertThrows(SparkException.class, () -> model.transform(cached).count());
      Throwable root = e;
      while (root.getCause() != null && !(root instanceof InvalidInputException)) {
        root = root.getCause();
      }
      assertTrue(root instanceof InvalidInputException, "cause: " + e);
      BadInputIT.mentions(root, "'x'", "null");
    } finally {
      cached.unpersist();
    }
  }
}

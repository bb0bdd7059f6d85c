package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.lit;
import static org.apache.spark.sql.functions.randn;
import static org.apache.spark.sql.functions.when;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.InvalidInputException;
import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import org.apache.spark.ml.Pipeline;
import org.apache.spark.ml.PipelineModel;
import org.apache.spark.ml.PipelineStage;
import org.apache.spark.ml.feature.PCA;
import org.apache.spark.ml.feature.PCAModel;
import org.apache.spark.ml.feature.VectorAssembler;
import org.apache.spark.ml.linalg.DenseMatrix;
import org.apache.spark.ml.linalg.DenseVector;
import org.apache.spark.ml.linalg.Vector;
import org.apache.spark.ml.regression.LinearRegression;
import org.apache.spark.ml.regression.LinearRegressionModel;
import org.apache.spark.mllib.linalg.Matrix;
import org.apache.spark.mllib.linalg.SingularValueDecomposition;
import org.apache.spark.mllib.linalg.distributed.RowMatrix;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import scala.Tuple2;

/**
 * Matrix work on the servers of the two-executor cluster against Spark ML's own PCA,
 * RowMatrix.computeSVD / computeCovariance and LinearRegression(solver = "normal") on
 * the same DataFrame, and the inputs it refuses or answers specially (nulls, a
 * constant column, rank deficiency, more columns than rows).
 */
class LinalgIT {
  private static Dataset<Row> data;
  private static final String[] COLUMNS = {"a", "b", "c", "d", "e"};

  /** Five correlated columns with distinct variances, a label linear in them plus noise,
   *  and an assembled vector of the five; four partitions over two executors. */
  @BeforeAll
  static void data() throws IOException {
    Dataset<Row> base = SparkCluster.session().range(4000).toDF("id")
        .withColumn("z1", randn(1)).withColumn("z2", randn(2)).withColumn("z3", randn(3))
        .withColumn("z4", randn(4)).withColumn("z5", randn(5));
    Dataset<Row> rows = base
        .withColumn("a", col("z1").multiply(3).plus(10))
        .withColumn("b", col("z1").plus(col("z2").multiply(2)).minus(4))
        .withColumn("c", col("z3").multiply(1.5).plus(col("z2").multiply(0.5)))
        .withColumn("d", col("z4").multiply(0.7).plus(100))
        .withColumn("e", col("z5").multiply(0.2).plus(col("z1").multiply(0.1)))
        .withColumn("k", lit(7.5))
        .withColumn("y", col("a").multiply(0.5).minus(col("b").multiply(2))
            .plus(col("c").multiply(0.25)).plus(col("d")).plus(3).plus(randn(9).multiply(0.1)));
    data = new VectorAssembler().setInputCols(COLUMNS).setOutputCol("features")
        .transform(rows).repartition(4, col("id")).cache();
    data.count();
  }

  private static void near(double expected, double actual, double rel, String what) {
    double tol = rel * Math.max(1.0, Math.abs(expected));
    assertTrue(Math.abs(expected - actual) <= tol,
        what + ": expected " + expected + ", got " + actual);
  }

  /** Column j of both matrices equal up to sign. */
  private static void sameColumns(org.apache.spark.ml.linalg.Matrix expected,
      org.apache.spark.ml.linalg.Matrix actual, double rel, String what) {
    assertEquals(expected.numRows(), actual.numRows(), what);
    assertEquals(expected.numCols(), actual.numCols(), what);
    for (int j = 0; j < expected.numCols(); j++) {
      double dot = 0;
      for (int i = 0; i < expected.numRows(); i++) {
        dot += expected.apply(i, j) * actual.apply(i, j);
      }
      double sign = Math.signum(dot);
      for (int i = 0; i < expected.numRows(); i++) {
        near(expected.apply(i, j), sign * actual.apply(i, j), rel,
            what + " (" + i + ", " + j + ")");
      }
    }
  }

  @Test
  void pcaEqualsSparkMlInBothPrecisionsAndByBothMethods() {
    PCAModel spark = new PCA().setInputCol("features").setOutputCol("p").setK(3).fit(data);
    StokerPCAModel exact = new StokerPCA().setInputCol("features").setOutputCol("p").setK(3)
        .fit(data);
    sameColumns(spark.pc(), exact.pc(), 1e-5, "float64 components");
    for (int j = 0; j < 3; j++) {
      near(spark.explainedVariance().apply(j), exact.explainedVariance().apply(j), 1e-5,
          "explained variance " + j);
    }
    StokerPCAModel single = new StokerPCA().setInputCols(COLUMNS).setK(3)
        .setPrecision("float32").fit(data);
    sameColumns(spark.pc(), single.pc(), 1e-3, "float32 components");
    StokerPCAModel randomized = new StokerPCA().setInputCol("features").setK(2)
        .setMethod("randomized").setOversampling(2).setPowerIterations(8).setSeed(4)
        .fit(data);
    DenseMatrix leading = new DenseMatrix(5, 2,
        java.util.Arrays.copyOf(exact.pc().toArray(), 10));
    sameColumns(leading, randomized.pc(), 1e-6, "randomized components");
    near(exact.explainedVariance().apply(1), randomized.explainedVariance().apply(1), 1e-6,
        "randomized explained variance");

    // The projection is Spark's (uncentered) one, up to each component's sign.
    List<Row> ours = exact.transform(data).orderBy("id").select("p").limit(20).collectAsList();
    List<Row> theirs = spark.transform(data).orderBy("id").select("p").limit(20)
        .collectAsList();
    for (int r = 0; r < ours.size(); r++) {
      Vector o = ours.get(r).getAs(0);
      Vector t = theirs.get(r).getAs(0);
      for (int j = 0; j < 3; j++) {
        near(Math.abs(t.apply(j)), Math.abs(o.apply(j)), 1e-5, "projection " + r + "," + j);
      }
    }
  }

  @Test
  void svdAndCovarianceEqualRowMatrix() {
    // The rows collected and parallelized again (a lambda of this test class would not
    // reach the executors, which have stoker's jar only): 4,000 x 5 doubles.
    List<org.apache.spark.mllib.linalg.Vector> local = new java.util.ArrayList<>();
    for (Row r : data.select("features").collectAsList()) {
      local.add(org.apache.spark.mllib.linalg.Vectors.fromML((Vector) r.get(0)));
    }
    RowMatrix rows = new RowMatrix(new org.apache.spark.api.java.JavaSparkContext(
        data.sparkSession().sparkContext()).parallelize(local, 4).rdd());
    SingularValueDecomposition<RowMatrix, Matrix> svd = rows.computeSVD(3, false, 1e-9);
    Tuple2<DenseVector, DenseMatrix> ours =
        StokerLinalg.svd(data, new String[] {"features"}, 3, "float64", "", "exact");
    for (int j = 0; j < 3; j++) {
      near(svd.s().apply(j), ours._1().apply(j), 1e-5, "singular value " + j);
    }
    sameColumns(svd.V().asML(), ours._2(), 1e-5, "right singular vectors");
    Tuple2<DenseVector, DenseMatrix> randomized =
        StokerLinalg.svd(data, COLUMNS, 2, "float64", "", "randomized");
    near(svd.s().apply(0), randomized._1().apply(0), 1e-6, "randomized first singular value");

    org.apache.spark.ml.linalg.Matrix covariance = rows.computeCovariance().asML();
    DenseMatrix ourCovariance = StokerLinalg.covariance(data, COLUMNS, "float64", "");
    for (int i = 0; i < 5; i++) {
      for (int j = 0; j < 5; j++) {
        near(covariance.apply(i, j), ourCovariance.apply(i, j), 1e-5, "covariance");
      }
    }
    DenseMatrix gramian = StokerLinalg.gramian(data, new String[] {"features"}, "float32", "");
    org.apache.spark.ml.linalg.Matrix expected = rows.computeGramianMatrix().asML();
    near(expected.apply(3, 3), gramian.apply(3, 3), 1e-3, "float32 gramian");
  }

  @Test
  void leastSquaresEqualsSparkNormalSolver() {
    for (boolean intercept : new boolean[] {true, false}) {
      LinearRegressionModel spark = new LinearRegression().setSolver("normal")
          .setFitIntercept(intercept).setStandardization(false).setLabelCol("y").fit(data);
      StokerLinearRegressionModel ours = new StokerLinearRegression().setLabelCol("y")
          .setFitIntercept(intercept).fit(data);
      for (int j = 0; j < 5; j++) {
        near(spark.coefficients().apply(j), ours.coefficients().apply(j), 1e-5,
            "coefficient " + j + " (intercept " + intercept + ")");
      }
      near(spark.intercept(), ours.intercept(), 1e-5, "intercept");
      double[] se = spark.summary().coefficientStandardErrors();
      assertEquals(se.length, ours.summary().coefficientStandardErrors().length);
      for (int j = 0; j < se.length; j++) {
        near(se[j], ours.summary().coefficientStandardErrors()[j], 1e-5, "standard error " + j);
      }
      near(spark.summary().r2(), ours.summary().r2(), 1e-6, "r2");
      List<Row> predicted = ours.transform(data).select("prediction").limit(5).collectAsList();
      List<Row> expected = spark.transform(data).select("prediction").limit(5).collectAsList();
      for (int r = 0; r < 5; r++) {
        near(expected.get(r).getDouble(0), predicted.get(r).getDouble(0), 1e-6, "prediction");
      }
    }
    // Ridge: the closed form (XcᵀXc + nλI) β = Xcᵀyc, checked through its own gradient
    // at the answer: n λ β = Xcᵀ(yc - Xc β), column by column.
    StokerLinearRegressionModel ridge = new StokerLinearRegression().setLabelCol("y")
        .setFeatureCols(COLUMNS).setRegParam(0.5).fit(data);
    assertEquals(0, ridge.summary().coefficientStandardErrors().length);
    DenseMatrix cov = StokerLinalg.covariance(
        data.withColumn("y0", col("y")), new String[] {"a", "b", "c", "d", "e", "y0"},
        "float64", "");
    for (int j = 0; j < 5; j++) {
      double residual = cov.apply(j, 5);
      for (int i = 0; i < 5; i++) residual -= cov.apply(j, i) * ridge.coefficients().apply(i);
      // cov = scatter / (n - 1): n λ β_j / (n - 1) = residual_j.
      near(4000 * 0.5 * ridge.coefficients().apply(j) / 3999, residual, 1e-6, "ridge " + j);
    }
  }

  @Test
  void aConstantColumnRankDeficiencyAndMoreColumnsThanRows() {
    // A constant column: no spread, so PCA gives it no weight in the leading components,
    // and least squares with an intercept is rank deficient: its coefficient is 0 (the
    // minimum-norm answer) and the others are those of the fit without it.
    String[] withConstant = {"a", "b", "c", "d", "e", "k"};
    StokerPCAModel pca = new StokerPCA().setInputCols(withConstant).setK(2).fit(data);
    near(0.0, pca.pc().apply(5, 0), 1e-9, "constant column's loading");
    StokerLinearRegressionModel deficient = new StokerLinearRegression().setLabelCol("y")
        .setFeatureCols(withConstant).fit(data);
    StokerLinearRegressionModel full = new StokerLinearRegression().setLabelCol("y")
        .setFeatureCols(COLUMNS).fit(data);
    assertEquals(5, deficient.summary().rank());
    assertEquals(0, deficient.summary().coefficientStandardErrors().length);
    near(0.0, deficient.coefficients().apply(5), 1e-9, "constant column's coefficient");
    for (int j = 0; j < 5; j++) {
      near(full.coefficients().apply(j), deficient.coefficients().apply(j), 1e-6, "coef " + j);
    }

    // 12 rows of 30 columns: PCA still equals Spark's; least squares interpolates (rank
    // 11 with an intercept, no residual).
    Dataset<Row> wide = data.limit(12).select(col("id"), col("z1"), col("z2"), col("z3"));
    String[] names = new String[30];
    Dataset<Row> widened = wide;
    for (int j = 0; j < 30; j++) {
      names[j] = "w" + j;
      widened = widened.withColumn(names[j],
          col("z1").multiply(Math.sin(j)).plus(col("z2").multiply(Math.cos(j * 0.7)))
              .plus(col("z3").multiply(j % 3 == 0 ? 0.5 : -0.2)).plus(when(col("id")
                  .mod(30).equalTo(j), 1.0).otherwise(0.0)));
    }
    widened = new VectorAssembler().setInputCols(names).setOutputCol("features")
        .transform(widened).repartition(2).cache();
    // Three latent factors: the first three components are well separated; later ones
    // are near-degenerate (the indicators), so their vectors are not defined.
    PCAModel spark = new PCA().setInputCol("features").setK(3).fit(widened);
    StokerPCAModel ours = new StokerPCA().setInputCol("features").setK(3).fit(widened);
    sameColumns(spark.pc(), ours.pc(), 1e-5, "wide components");
    StokerLinearRegressionModel interpolating = new StokerLinearRegression()
        .setFeatureCols(java.util.Arrays.copyOf(names, 29)).setLabelCol("w29").fit(widened);
    assertTrue(interpolating.summary().rank() <= 11, "rank " + interpolating.summary().rank());
    near(0.0, interpolating.summary().rss(), 1e-6, "residual of an interpolating fit");
  }

  @Test
  void nullsAndBadParamsAreRefusedByName() {
    Dataset<Row> withNull = data.withColumn("c",
        when(col("id").equalTo(1234), lit(null).cast("double")).otherwise(col("c")));
    InvalidInputException e = assertThrows(InvalidInputException.class,
        () -> new StokerPCA().setInputCols(COLUMNS).setK(2).fit(withNull));
    assertTrue(e.getMessage().contains("'c'") && e.getMessage().contains("null"),
        e.getMessage());
    InvalidInputException lr = assertThrows(InvalidInputException.class,
        () -> new StokerLinearRegression().setFeatureCols(COLUMNS).setLabelCol("y")
            .fit(withNull));
    assertTrue(lr.getMessage().contains("'c'"), lr.getMessage());
    InvalidInputException k = assertThrows(InvalidInputException.class,
        () -> new StokerPCA().setInputCols(COLUMNS).setK(6).fit(data));
    assertTrue(k.getMessage().contains("at most 5"), k.getMessage());
    assertThrows(InvalidInputException.class,
        () -> new StokerPCA().setInputCol("missing").setK(2).fit(data));
    assertThrows(InvalidInputException.class,
        () -> new StokerLinearRegression().setFeatureCols(COLUMNS).setLabelCol("a").fit(data));
  }

  @Test
  void modelsSaveAndLoadInPipelinesAndLeaveNoJob(@TempDir Path dir) throws IOException {
    Pipeline pipeline = new Pipeline().setStages(new PipelineStage[] {
        new StokerPCA().setInputCol("features").setOutputCol("pcs").setK(2),
        new StokerLinearRegression().setFeaturesCol("pcs").setLabelCol("y")});
    PipelineModel fitted = pipeline.fit(data);
    String path = dir.resolve("pipeline").toString();
    fitted.write().overwrite().save(path);
    PipelineModel loaded = PipelineModel.load(path);
    List<Row> a = fitted.transform(data).orderBy("id").select("prediction").limit(10)
        .collectAsList();
    List<Row> b = loaded.transform(data).orderBy("id").select("prediction").limit(10)
        .collectAsList();
    assertEquals(a, b);
    StokerLinearRegressionModel lr = (StokerLinearRegressionModel) loaded.stages()[1];
    assertEquals(((StokerLinearRegressionModel) fitted.stages()[1]).summary().rank(),
        lr.summary().rank());
    pipeline.write().overwrite().save(dir.resolve("estimator").toString());
    Pipeline again = Pipeline.load(dir.resolve("estimator").toString());
    assertEquals(2, ((StokerPCA) again.getStages()[0]).getK());
    assertTrue(ServerCleanupIT.names(ServerCleanupIT.stats().get("jobs")).stream()
        .noneMatch(n -> n.startsWith("spark-linalg-")));
  }
}

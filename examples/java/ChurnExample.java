import static org.apache.spark.sql.functions.avg;
import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.count;
import static org.apache.spark.sql.functions.expr;
import static org.apache.spark.sql.functions.rand;
import static org.apache.spark.sql.functions.randn;
import static org.apache.spark.sql.functions.sum;
import static org.apache.spark.sql.functions.when;

import dev.stoker.spark.RoundStats;
import dev.stoker.spark.StokerEstimator;
import dev.stoker.spark.StokerModel;
import org.apache.spark.ml.Pipeline;
import org.apache.spark.ml.PipelineModel;
import org.apache.spark.ml.PipelineStage;
import org.apache.spark.ml.feature.StandardScaler;
import org.apache.spark.ml.feature.VectorAssembler;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;

/**
 * stoker from Java with spark-submit: ETL in Spark (a group-by over events, a join with
 * customers), then fit a network with parameter averaging and run batch inference.
 *
 * <pre>
 * spark-submit --jars stoker-spark.jar --conf spark.stoker.server.bin=/path/to/stoker \
 *   --class ChurnExample churn-example.jar [output-dir]
 * </pre>
 */
public final class ChurnExample {
  private ChurnExample() {}

  public static void main(String[] args) {
    String out = args.length > 0 ? args[0] : "target/examples/java-predictions";
    SparkSession spark = SparkSession.builder().appName("stoker-java-example").getOrCreate();

    // Customers with a hidden propensity; events whose amounts and counts depend on it.
    Dataset<Row> customers = spark.range(20_000).toDF("id")
        .withColumn("tenure", rand(1).multiply(60))
        .withColumn("plan", when(rand(2).gt(0.7), 1).otherwise(0));
    Dataset<Row> events = customers.crossJoin(spark.range(10).toDF("k"))
        .select(col("id").as("customer"),
            randn(3).multiply(10).plus(col("tenure")).as("amount"),
            when(rand(4).lt(col("tenure").divide(80)), 1).otherwise(0).as("support_call"));

    // ETL: aggregate events per customer, join, label.
    Dataset<Row> perCustomer = events.groupBy("customer").agg(
        sum("amount").as("spend"), avg("amount").as("avg_amount"),
        sum("support_call").as("calls"), count("*").as("events"));
    Dataset<Row> table = customers.join(perCustomer, col("id").equalTo(col("customer")))
        .withColumn("label", expr(
            "CASE WHEN (calls - 3) * (calls - 3) + (tenure - 30) * (tenure - 30) / 100 < 6 "
                + "THEN 1 ELSE 0 END"))
        .select("id", "tenure", "plan", "spend", "avg_amount", "calls", "label");
    Dataset<Row>[] split = table.randomSplit(new double[] {0.8, 0.2}, 7);
    Dataset<Row> train = split[0].repartition(4);
    Dataset<Row> test = split[1];

    // A Spark ML pipeline: assemble and scale the features, then train with stoker.
    VectorAssembler assemble = new VectorAssembler()
        .setInputCols(new String[] {"tenure", "plan", "spend", "avg_amount", "calls"})
        .setOutputCol("raw");
    StandardScaler scale = new StandardScaler().setInputCol("raw").setOutputCol("features");
    StokerEstimator stoker = new StokerEstimator()
        .setFeaturesCol("features")
        .setLabelCol("label")
        .setModel("{\"type\": \"mlp\", \"hidden\": [64, 64], \"num_classes\": 2}")
        .setLearningRate(0.003)
        .setBatchSize(128)
        .setLocalEpochs(2)
        .setRounds(8);
    PipelineModel pipeline = new Pipeline()
        .setStages(new PipelineStage[] {assemble, scale, stoker})
        .fit(train);
    StokerModel model = (StokerModel) pipeline.stages()[2];
    for (RoundStats round : model.getHistory()) {
      System.out.println(round);
    }

    Dataset<Row> predicted = pipeline.transform(test);
    long right = predicted.filter(col("prediction").equalTo(col("label"))).count();
    long total = predicted.count();
    System.out.printf("held-out accuracy: %.3f on %d customers%n", (double) right / total, total);
    predicted.select("id", "label", "prediction").write().mode("overwrite").parquet(out);
    System.out.println("predictions written to " + out);
    spark.stop();
  }
}

package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.UnauthenticatedException;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkEnv;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A server at a fixed address started with one token, and Spark sending another (or none):
 * fit fails with an error that names {@code spark.stoker.server.token}, and the right token
 * trains.
 */
class ServerTokenIT {
  private static final String TOKEN_CONF = "spark.stoker.server.token";
  private static SparkSession spark;
  private static Dataset<Row> train;
  private static Process server;
  private static String address;

  @BeforeAll
  static void start(@TempDir Path dir) throws IOException {
    spark = SparkCluster.session();
    train = SparkCluster.customers(spark, 600, 17).repartition(2, col("id"))
        .sortWithinPartitions("id").cache();
    train.count();
    Path tokenFile = dir.resolve("token");
    Files.writeString(tokenFile, "the-right-token");
    server = new ProcessBuilder(System.getProperty("stoker.bin"), "serve", "--device", "cpu",
        "--token-file", tokenFile.toString())
        .redirectError(ProcessBuilder.Redirect.DISCARD)
        .start();
    address = new BufferedReader(
        new InputStreamReader(server.getInputStream(), StandardCharsets.UTF_8)).readLine();
    assertTrue(address != null && address.startsWith("grpc://"), "no server: " + address);
  }

  @AfterAll
  static void stop() throws InterruptedException {
    if (server != null) {
      server.destroy();
      server.waitFor();
    }
  }

  /**
   * Fits one round against the fixed server with {@code token} as the driver's Spark conf
   * (null: unset). The token is read from the application's SparkConf, which the shared
   * session fixed at start, so the test sets it there and puts the old value back.
   */
  private static StokerModel fit(String token) {
    SparkConf conf = SparkEnv.get().conf();
    String before = conf.get(TOKEN_CONF, null);
    if (token == null) {
      conf.remove(TOKEN_CONF);
    } else {
      conf.set(TOKEN_CONF, token);
    }
    try {
      return new StokerEstimator()
          .setFeatureCols(new String[] {"x", "y"})
          .setLabelCol("label")
          .setModel("{\"type\": \"mlp\", \"hidden\": [8], \"num_classes\": 2}")
          .setRounds(1)
          .setSeed(1)
          .setServerAddress(address)
          .fit(train);
    } finally {
      if (before == null) {
        conf.remove(TOKEN_CONF);
      } else {
        conf.set(TOKEN_CONF, before);
      }
    }
  }

  /** The UnauthenticatedException in the cause chain of what fit threw. */
  private static UnauthenticatedException cause(Throwable thrown) {
    for (Throwable t = thrown; t != null; t = t.getCause()) {
      if (t instanceof UnauthenticatedException) {
        return (UnauthenticatedException) t;
      }
    }
    return null;
  }

  @Test
  void aWrongOrMissingTokenFailsNamingTheConf() {
    for (String token : new String[] {"a-wrong-token", null}) {
      Exception e = assertThrows(Exception.class, () -> fit(token));
      UnauthenticatedException unauthenticated = cause(e);
      assertNotNull(unauthenticated, "token " + token + ": " + e);
      assertTrue(unauthenticated.getMessage().contains(TOKEN_CONF), unauthenticated.getMessage());
      // Spark's own message (the task's failure) carries it too.
      assertTrue(e.getMessage().contains(TOKEN_CONF), e.getMessage());
      assertTrue(!e.getMessage().contains("the-right-token"), e.getMessage());
    }
    StokerModel model = fit("the-right-token");
    assertEquals(1, model.getHistory().size());
  }
}

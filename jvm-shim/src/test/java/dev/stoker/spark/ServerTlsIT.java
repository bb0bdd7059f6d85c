package dev.stoker.spark;

import static org.apache.spark.sql.functions.col;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.stoker.jni.NativeClient;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.TimeUnit;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkEnv;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.api.io.TempDir;

/**
 * Spark against a {@code stoker serve} with TLS and a token, its certificate signed by a CA
 * made here with openssl (docs/security.md): fit, transform and {@code stoker_predict}
 * through {@code grpc+tls://} with {@code spark.stoker.server.caCert} (a file, or PEM
 * text); and the misconfigurations (a CA that did not sign the certificate, no CA, plain
 * text against the TLS server, TLS against a plain-text server) failing within seconds
 * with errors that name the cause.
 */
class ServerTlsIT {
  private static final String ADDRESS = "spark.stoker.server.address";
  private static final String TOKEN = "spark.stoker.server.token";
  private static final String CA = "spark.stoker.server.caCert";
  private static final String SECRET = "tls-it-token";
  private static SparkSession spark;
  private static Dataset<Row> train;
  private static Dataset<Row> test;
  private static final List<Process> servers = new ArrayList<>();
  /** grpc+tls://127.0.0.1:PORT, with the token; and grpc://, without one. */
  private static String tlsAddress;
  private static String plainAddress;
  private static Path caFile;
  private static Path otherCaFile;

  @BeforeAll
  static void start(@TempDir Path dir) throws Exception {
    spark = SparkCluster.session();
    Dataset<Row>[] parts = SparkCluster.customers(spark, 3000, 41)
        .randomSplit(new double[] {0.8, 0.2}, 5);
    train = parts[0].repartition(2, col("id")).sortWithinPartitions("id").cache();
    test = parts[1].orderBy("id").cache();
    train.count();
    test.count();
    caFile = certificateAuthority(dir, "ca");
    otherCaFile = certificateAuthority(dir, "other-ca");
    Path ext = dir.resolve("server.ext");
    Files.writeString(ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        + "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n");
    openssl(dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1");
    openssl(dir, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.pem", "-extfile", "server.ext");
    Path tokenFile = dir.resolve("token");
    Files.writeString(tokenFile, SECRET);
    tlsAddress = serve("--token-file", tokenFile.toString(),
        "--tls-cert", dir.resolve("server.pem").toString(),
        "--tls-key", dir.resolve("server.key").toString());
    assertTrue(tlsAddress.startsWith("grpc+tls://127.0.0.1:"), tlsAddress);
    plainAddress = serve();
    assertTrue(plainAddress.startsWith("grpc://127.0.0.1:"), plainAddress);
  }

  /** A self-signed CA: NAME.key and NAME.pem in dir; returns the certificate's path. */
  private static Path certificateAuthority(Path dir, String name) throws Exception {
    openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
        "-subj", "/CN=stoker " + name);
    return dir.resolve(name + ".pem");
  }

  private static void openssl(Path dir, String... args) throws Exception {
    List<String> command = new ArrayList<>(List.of("openssl"));
    command.addAll(List.of(args));
    Process p = new ProcessBuilder(command).directory(dir.toFile())
        .redirectErrorStream(true).start();
    String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    assertTrue(p.waitFor(60, TimeUnit.SECONDS) && p.exitValue() == 0,
        String.join(" ", command) + ": " + out);
  }

  /** Starts {@code stoker serve} on 127.0.0.1 with {@code args}; returns its address. */
  private static String serve(String... args) throws IOException {
    List<String> command = new ArrayList<>(
        List.of(System.getProperty("stoker.bin"), "serve", "--device", "cpu"));
    command.addAll(List.of(args));
    Process server = new ProcessBuilder(command)
        .redirectError(ProcessBuilder.Redirect.DISCARD).start();
    servers.add(server);
    String address = new BufferedReader(
        new InputStreamReader(server.getInputStream(), StandardCharsets.UTF_8)).readLine();
    assertTrue(address != null, "the server printed no address: " + command);
    return address;
  }

  @AfterAll
  static void stop() throws InterruptedException {
    for (Process server : servers) {
      server.destroy();
      server.waitFor(30, TimeUnit.SECONDS);
    }
  }

  /**
   * Runs {@code body} with the driver's Spark conf holding {@code settings} (a null value
   * unsets the key), and puts the old values back. The application's SparkConf was fixed
   * when the shared session started, so the test sets keys there, where the driver reads
   * them.
   */
  private static <T> T withConf(Map<String, String> settings, Callable<T> body)
      throws Exception {
    SparkConf conf = SparkEnv.get().conf();
    Map<String, String> before = new HashMap<>();
    for (String key : settings.keySet()) {
      before.put(key, conf.get(key, null));
    }
    settings.forEach((k, v) -> set(conf, k, v));
    try {
      return body.call();
    } finally {
      before.forEach((k, v) -> set(conf, k, v));
    }
  }

  private static void set(SparkConf conf, String key, String value) {
    if (value == null) {
      conf.remove(key);
    } else {
      conf.set(key, value);
    }
  }

  private static Map<String, String> conf(String address, String token, String ca) {
    Map<String, String> m = new HashMap<>();
    m.put(ADDRESS, address);
    m.put(TOKEN, token);
    m.put(CA, ca);
    return m;
  }

  private static StokerModel fit(String address, int rounds) {
    return StokerEstimatorIT.estimator().setRounds(rounds).setServerAddress(address).fit(train);
  }

  private static Map<Long, Double> predictions(Dataset<Row> rows, String column) {
    Map<Long, Double> out = new HashMap<>();
    for (Row r : rows.collectAsList()) {
      out.put(r.getLong(r.fieldIndex("id")), r.getDouble(r.fieldIndex(column)));
    }
    return out;
  }

  @Test
  void fitTransformAndSqlOverTlsWithATokenAndTheCa() throws Exception {
    String caUri = caFile.toUri().toString();
    withConf(conf(tlsAddress, SECRET, caUri), () -> {
      StokerModel model = fit(tlsAddress, 4);
      assertEquals(4, model.getHistory().size());
      assertTrue(model.target().toString().contains("CA certificate set"),
          model.target().toString());
      assertFalse(model.target().toString().contains(SECRET));
      Dataset<Row> predicted = model.transform(test);
      double accuracy = StokerEstimatorIT.accuracy(predicted);
      assertTrue(accuracy > 0.75, "accuracy " + accuracy);
      Map<Long, Double> expected = predictions(predicted, "prediction");
      assertEquals(test.count(), expected.size());

      // stoker_predict of a model this application registered (its tasks connect over TLS).
      model.register("tls_rings");
      test.createOrReplaceTempView("tls_people");
      Map<Long, Double> sql = predictions(spark.sql(
          "SELECT id, stoker_predict('tls_rings', x, y) AS p FROM tls_people"), "p");
      assertEquals(expected, sql);

      // stoker_predict of a model only the server knows: the one transform registered,
      // found by spark.stoker.server.address, with the CA given as PEM text.
      String pem = Files.readString(caFile);
      String name;
      try (NativeClient client = NativeClient.connect(tlsAddress, SECRET, pem)) {
        JsonNode models = new ObjectMapper().readTree(client.action("stats", "{}"))
            .get("models");
        name = null;
        for (JsonNode m : models) {
          if (m.get("name").asText().startsWith("spark-" + model.uid())) {
            name = m.get("name").asText();
          }
        }
      }
      assertTrue(name != null, "transform registered no model on the server");
      String query = "SELECT id, stoker_predict('" + name + "', x, y) AS p FROM tls_people";
      Map<Long, Double> onServer = withConf(Map.of(CA, pem),
          () -> predictions(spark.sql(query), "p"));
      assertEquals(expected, onServer);
      return null;
    });
  }

  /** The messages of {@code thrown} and its causes, in one text. */
  private static String messages(Throwable thrown) {
    StringBuilder out = new StringBuilder();
    for (Throwable t = thrown; t != null; t = t.getCause()) {
      out.append(t.getClass().getName()).append(": ").append(t.getMessage()).append('\n');
    }
    return out.toString();
  }

  /** {@code body} fails within 30 s (every task attempt included) naming each of {@code parts}. */
  private static void failsFast(Executable body, String... parts) {
    long started = System.nanoTime();
    Throwable thrown = assertThrows(Throwable.class, body);
    double seconds = (System.nanoTime() - started) / 1e9;
    String text = messages(thrown);
    assertTrue(seconds < 30, "took " + seconds + " s: " + text);
    System.out.printf("ServerTlsIT: failed in %.2f s: %s%n", seconds, thrown.getMessage());
    for (String part : parts) {
      assertTrue(text.contains(part), "no '" + part + "' in:\n" + text);
    }
    assertFalse(text.contains(SECRET), text);
  }

  @Test
  void aMisconfigurationFailsWithinSecondsNamingTheCause() throws Exception {
    String plainToTls = tlsAddress.replace("grpc+tls://", "grpc://");
    String tlsToPlain = plainAddress.replace("grpc://", "grpc+tls://");
    String otherCa = otherCaFile.toUri().toString();
    String ca = caFile.toUri().toString();
    // A CA that did not sign the server's certificate: fit, and SQL.
    withConf(conf(tlsAddress, SECRET, otherCa), () -> {
      failsFast(() -> fit(tlsAddress, 1), "TLS handshake with " + tlsAddress,
          "not trusted by the CA certificate given", CA);
      failsFast(() -> spark.sql("SELECT stoker_predict('anything', 1.0D, 2.0D)").collect(),
          "not trusted by the CA certificate given");
      return null;
    });
    // No CA: the operating system's roots, which do not hold the test CA.
    withConf(conf(tlsAddress, SECRET, null), () -> {
      failsFast(() -> fit(tlsAddress, 1), "not trusted by the operating system's root", CA);
      return null;
    });
    // Plain text against the TLS server.
    withConf(conf(plainToTls, SECRET, ca), () -> {
      failsFast(() -> fit(plainToTls, 1), "speaks TLS and this client plain text",
          "grpc+tls://");
      return null;
    });
    // TLS against a plain-text server.
    withConf(conf(tlsToPlain, null, ca), () -> {
      failsFast(() -> fit(tlsToPlain, 1), "TLS handshake with " + tlsToPlain,
          "the server speaks plain text, not TLS");
      return null;
    });
    // A CA file that does not exist, or is not PEM: the driver says so before any task.
    Path missing = caFile.resolveSibling("missing.pem");
    withConf(conf(tlsAddress, SECRET, missing.toUri().toString()), () -> {
      failsFast(() -> fit(tlsAddress, 1), CA, "does not exist");
      return null;
    });
    withConf(conf(tlsAddress, SECRET, caFile.resolveSibling("server.ext").toString()), () -> {
      failsFast(() -> fit(tlsAddress, 1), CA, "holds no PEM certificate");
      return null;
    });
  }
}

package dev.stoker.jni;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.CacheMissException;
import dev.stoker.InvalidInputException;
import dev.stoker.NotFoundException;
import dev.stoker.ServerUnavailableException;
import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.BigIntVector;
import org.apache.arrow.vector.Float4Vector;
import org.apache.arrow.vector.Float8Vector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.ipc.ArrowStreamReader;
import org.apache.arrow.vector.ipc.ArrowStreamWriter;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** libstoker_jni's client against a real `stoker serve` process. */
class NativeClientTest {
  private static final String MLP = "{\"type\":\"mlp\",\"hidden\":[16,16],\"num_classes\":2}";
  private static Process server;
  private static String uri;
  private static BufferAllocator allocator;

  @BeforeAll
  static void startServer() throws IOException {
    String bin = System.getProperty("stoker.bin");
    server = new ProcessBuilder(bin, "serve", "--device", "cpu")
        .redirectError(ProcessBuilder.Redirect.DISCARD)
        .start();
    BufferedReader out = new BufferedReader(
        new InputStreamReader(server.getInputStream(), StandardCharsets.UTF_8));
    uri = out.readLine();
    assertTrue(uri != null && uri.startsWith("grpc://"), "server did not start: " + uri);
    allocator = new RootAllocator();
  }

  @AfterAll
  static void stopServer() throws InterruptedException {
    server.destroy();
    assertEquals(0, server.waitFor(), "server exit code after SIGTERM");
    allocator.close();
  }

  /** Two noisy rings (class 0 inside, class 1 outside), as an Arrow IPC stream. */
  static byte[] rings(int rows, long seed) throws IOException {
    Random r = new Random(seed);
    try (Float4Vector a = new Float4Vector("a", allocator);
        Float4Vector b = new Float4Vector("b", allocator);
        BigIntVector y = new BigIntVector("y", allocator);
        BigIntVector id = new BigIntVector("id", allocator)) {
      for (int i = 0; i < rows; i++) {
        int cls = r.nextBoolean() ? 1 : 0;
        double radius = (cls == 1 ? 2.0 : 1.0) + 0.1 * r.nextGaussian();
        double t = r.nextDouble() * 2 * Math.PI;
        a.setSafe(i, (float) (radius * Math.cos(t)));
        b.setSafe(i, (float) (radius * Math.sin(t)));
        y.setSafe(i, cls);
        id.setSafe(i, i);
      }
      VectorSchemaRoot root = VectorSchemaRoot.of(a, b, y, id);
      root.setRowCount(rows);
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      try (ArrowStreamWriter writer = new ArrowStreamWriter(root, null, bytes)) {
        writer.start();
        writer.writeBatch();
        writer.end();
      }
      return bytes.toByteArray();
    }
  }

  /** The one blob of an enveloped action result (docs/protocol.md). */
  static byte[] blob(byte[] envelope) {
    assertEquals("STK1", new String(envelope, 0, 4, StandardCharsets.US_ASCII));
    int length = ByteBuffer.wrap(envelope, 4, 4).order(ByteOrder.LITTLE_ENDIAN).getInt();
    String json = new String(envelope, 8, length, StandardCharsets.UTF_8);
    Matcher m = Pattern.compile("\"size\":(\\d+)").matcher(json);
    assertTrue(m.find(), json);
    int size = Integer.parseInt(m.group(1));
    return Arrays.copyOfRange(envelope, envelope.length - size, envelope.length);
  }

  /** An action body with blobs, as docs/protocol.md describes the envelope. */
  static byte[] envelope(String fields, String[] names, byte[][] blobs) {
    StringBuilder list = new StringBuilder();
    int total = 0;
    for (int i = 0; i < names.length; i++) {
      list.append(i == 0 ? "" : ",")
          .append("{\"name\":\"").append(names[i]).append("\",\"size\":").append(blobs[i].length)
          .append('}');
      total += blobs[i].length;
    }
    byte[] json = ("{" + fields + ",\"blobs\":[" + list + "]}").getBytes(StandardCharsets.UTF_8);
    ByteBuffer out = ByteBuffer.allocate(8 + json.length + total).order(ByteOrder.LITTLE_ENDIAN);
    out.put("STK1".getBytes(StandardCharsets.US_ASCII)).putInt(json.length).put(json);
    for (byte[] b : blobs) {
      out.put(b);
    }
    return out.array();
  }

  @Test
  void trainsAveragesRegistersAndPredictsThroughJni() throws IOException {
    try (NativeClient client = NativeClient.connect(uri, null)) {
      assertTrue(client.health().contains("\"serving\""));
      client.action("create_job", "{\"job\":\"jvm\",\"spec\":" + MLP
          + ",\"features\":[\"a\",\"b\"],\"label\":\"y\","
          + "\"optimizer\":{\"name\":\"adam\",\"lr\":0.02},\"batch_size\":64}");
      for (int p = 0; p < 2; p++) {
        // Partition 1 goes as the first part of a larger array (how the Spark side
        // hands over the streams it writes): only `length` bytes are read.
        IpcBuffer stream = new IpcBuffer(p == 0 ? 16 : 1 << 20);
        stream.write(ByteBuffer.wrap(rings(1500, p)));
        String answer = client.putPartition("jvm", p, "v1", stream);
        assertTrue(answer.contains("\"rows\":1500"), answer);
      }
      byte[] state = null;
      for (int round = 0; round < 3; round++) {
        byte[] mean = null;
        for (int p = 0; p < 2; p++) {
          String fields = "\"job\":\"jvm\",\"partition\":" + p + ",\"version\":\"v1\",\"round\":"
              + round + ",\"epochs\":2";
          byte[] body = state == null
              ? ("{" + fields + "}").getBytes(StandardCharsets.UTF_8)
              : envelope(fields, new String[] {"state"}, new byte[][] {state});
          byte[] out = blob(client.action("train_round", body));
          if (mean == null) {
            mean = out;
          } else {
            NativeBridge.merge(mean, 1500 * p, out, 1500);
          }
        }
        state = NativeBridge.withSamples(mean, 3000);
      }
      client.action("register_model", envelope("\"name\":\"jvm\"",
          new String[] {"model", "state"},
          new byte[][] {MLP.getBytes(StandardCharsets.UTF_8), state}));

      byte[] predictions = client.predict("jvm", -1, List.of("id"), rings(2000, 9));
      int rows = 0;
      int correct = 0;
      Random truth = new Random(9);
      try (ArrowStreamReader reader =
          new ArrowStreamReader(new ByteArrayInputStream(predictions), allocator)) {
        VectorSchemaRoot root = reader.getVectorSchemaRoot();
        while (reader.loadNextBatch()) {
          assertEquals("id", root.getSchema().getFields().get(0).getName());
          Float8Vector prediction = (Float8Vector) root.getVector("prediction");
          BigIntVector id = (BigIntVector) root.getVector("id");
          for (int i = 0; i < root.getRowCount(); i++) {
            assertEquals(rows, id.get(i), "rows come back in order");
            int cls = truth.nextBoolean() ? 1 : 0;
            truth.nextGaussian();
            truth.nextDouble();
            correct += prediction.get(i) == cls ? 1 : 0;
            rows++;
          }
        }
      }
      assertEquals(2000, rows);
      assertTrue(correct > 1800, "accuracy " + correct / 2000.0);
    }
  }

  @Test
  void ipcBuffersGrowAndKeepWhatWasWritten() {
    IpcBuffer buffer = new IpcBuffer(10);
    byte[] want = new byte[1000];
    new Random(3).nextBytes(want);
    for (int at = 0; at < want.length; at += 37) {
      buffer.write(ByteBuffer.wrap(want, at, Math.min(37, want.length - at)));
    }
    assertEquals(1000, buffer.length());
    assertTrue(buffer.array().length >= 1000);
    assertTrue(Arrays.equals(want, buffer.toByteArray()));
    assertTrue(Arrays.equals(want, IpcBuffer.wrap(want).toByteArray()));
  }

  @Test
  void errorsArriveAsTheirExceptionClasses() throws IOException {
    try (NativeClient client = NativeClient.connect(uri, null)) {
      NotFoundException missing = assertThrows(NotFoundException.class,
          () -> client.putPartition("ghost", 0, "v", rings(10, 1)));
      assertTrue(missing.getMessage().contains("no job named 'ghost'"), missing.getMessage());
      client.action("create_job", "{\"job\":\"e\",\"spec\":" + MLP
          + ",\"features\":[\"a\",\"b\"],\"label\":\"y\"}");
      assertThrows(CacheMissException.class, () -> client.action("train_round",
          "{\"job\":\"e\",\"partition\":3,\"version\":\"v\",\"round\":0}"));
      InvalidInputException badIpc = assertThrows(InvalidInputException.class,
          () -> client.putPartition("e", 0, "v", new byte[] {1, 2, 3}));
      assertTrue(badIpc.getMessage().contains("Arrow IPC"), badIpc.getMessage());
      InvalidInputException badJson = assertThrows(InvalidInputException.class,
          () -> client.action("create_job", "{\"job\": 3}"));
      assertTrue(badJson.getMessage().contains("malformed create_job body"), badJson.getMessage());
      assertThrows(NotFoundException.class,
          () -> client.predict("nope", -1, List.of(), rings(5, 1)));
      assertTrue(client.health().contains("\"serving\""), "the server keeps serving");
    }
  }

  @Test
  void closedClientsAndDeadServersAreExceptionsNotCrashes() {
    NativeClient client = NativeClient.connect(uri, null);
    client.close();
    client.close();
    InvalidInputException closed = assertThrows(InvalidInputException.class, client::health);
    assertTrue(closed.getMessage().contains("closed"), closed.getMessage());
    assertThrows(ServerUnavailableException.class,
        () -> NativeClient.connect("grpc://127.0.0.1:1", null));
    assertThrows(InvalidInputException.class, () -> NativeClient.connect("not a uri", null));
    assertThrows(InvalidInputException.class, () -> NativeBridge.close(0));
    assertThrows(InvalidInputException.class,
        () -> NativeBridge.merge(new byte[0], 1, new byte[0], 1));
    assertThrows(InvalidInputException.class,
        () -> NativeBridge.merge(new byte[8], 1, null, 1));
  }
}

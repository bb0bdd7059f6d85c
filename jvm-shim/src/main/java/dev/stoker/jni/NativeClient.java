package dev.stoker.jni;

import dev.stoker.InvalidInputException;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A connection to a stoker server (docs/protocol.md), through libstoker_jni. Thread
 * safe: calls on one client are serialized. Close it once; a closed client throws
 * {@link InvalidInputException} instead of touching freed native memory.
 */
public final class NativeClient implements AutoCloseable {
  private final AtomicLong handle;

  /** Seconds a server may stay silent before calls to it fail; 0: the default (20). */
  private static volatile int livenessSeconds = 0;

  /**
   * How long a server may stay silent (not answering even an HTTP/2 ping) before the calls
   * of clients connected from now on fail with {@link dev.stoker.ServerUnavailableException}
   * (Spark: {@code spark.stoker.server.timeoutSeconds}). A stopped or wedged server then fails
   * its tasks, which Spark retries, instead of hanging them; a long call to a server that is
   * alive (a training round of minutes) is unaffected.
   *
   * @param seconds at least 1; 0 restores the default of 20 s
   */
  public static void setLivenessSeconds(int seconds) {
    if (seconds < 0) {
      throw new InvalidInputException("liveness timeout must be 0 (default) or positive, not "
          + seconds);
    }
    livenessSeconds = seconds;
  }

  private NativeClient(long handle) {
    this.handle = new AtomicLong(handle);
  }

  /**
   * Connects to {@code grpc://host:port}, or to {@code grpc+tls://host:port} trusting the
   * operating system's root certificates.
   *
   * @param token the server's token, or null when it needs none
   * @throws dev.stoker.ServerUnavailableException if nothing answers there
   */
  public static NativeClient connect(String uri, String token) {
    return connect(uri, token, null);
  }

  /**
   * Connects to {@code grpc://host:port} or {@code grpc+tls://host:port}. Fails within
   * seconds, naming the cause, when nothing answers, the server's certificate is not signed
   * by the CA, or one side speaks TLS and the other plain text (docs/security.md).
   *
   * @param token the server's token, or null when it needs none
   * @param caPem for TLS, the PEM text of the CA certificate that signed the server's
   *     certificate, the only one trusted; null: the operating system's root certificates
   * @throws dev.stoker.ServerUnavailableException if the server cannot be reached, or the TLS
   *     handshake fails
   * @throws InvalidInputException if {@code caPem} holds no PEM certificate
   */
  public static NativeClient connect(String uri, String token, String caPem) {
    NativeLoader.ensureLoaded();
    return new NativeClient(NativeBridge.connect(uri, token, caPem, livenessSeconds));
  }

  private long handle() {
    long h = handle.get();
    if (h == 0) {
      throw new InvalidInputException("this stoker client is closed");
    }
    return h;
  }

  /**
   * Runs an action with an encoded body (JSON, or an envelope framed as docs/protocol.md
   * describes); returns the encoded result. {@link #actionParts} frames blobs itself.
   */
  public byte[] action(String type, byte[] body) {
    return NativeBridge.action(handle(), type, body);
  }

  /**
   * Runs an action whose body is {@code json} plus named blobs (docs/protocol.md), each
   * copied once from its array into the request. Returns the result's JSON (UTF-8) as
   * element 0, then its blobs in the order the JSON's {@code blobs} listing names them.
   */
  public byte[][] actionParts(String type, String json, String[] blobNames, byte[][] blobs) {
    return NativeBridge.actionParts(handle(), type, json, blobNames, blobs);
  }

  /** Runs an action with a JSON body and no blobs; returns the result's text. */
  public String action(String type, String json) {
    byte[] out = action(type, json.getBytes(StandardCharsets.UTF_8));
    return new String(out, StandardCharsets.UTF_8);
  }

  /** The server's health JSON. */
  public String health() {
    return action("health", "{}");
  }

  /**
   * Sends one partition of a job (an Arrow IPC stream) to the server's cache.
   *
   * @return the server's answer: {@code {"rows": N, "bytes": B, "replaced": bool}}
   */
  public String putPartition(String job, int partition, String version, byte[] arrowIpcStream) {
    return putPartition(job, partition, version, IpcBuffer.wrap(arrowIpcStream));
  }

  /** {@link #putPartition(String, int, String, byte[])} for a stream in an {@link IpcBuffer}. */
  public String putPartition(String job, int partition, String version, IpcBuffer stream) {
    return NativeBridge.putPartition(
        handle(), job, false, partition, version, stream.array(), stream.length());
  }

  /**
   * Sends one partition of a job's validation rows: cached like a training partition,
   * scored by the {@code evaluate} action, never trained on.
   */
  public String putValidationPartition(String job, int partition, String version,
      IpcBuffer stream) {
    return NativeBridge.putPartition(
        handle(), job, true, partition, version, stream.array(), stream.length());
  }

  /**
   * Predictions for a batch of features (an Arrow IPC stream), as an Arrow IPC stream:
   * the {@code keep} columns, then {@code prediction} and, for classifiers,
   * {@code probability}, in the input's row order.
   *
   * @param version the model version, or a negative number for the latest
   */
  public byte[] predict(String model, int version, List<String> keep, byte[] arrowIpcStream) {
    return predict(model, version, keep, IpcBuffer.wrap(arrowIpcStream));
  }

  /** {@link #predict(String, int, List, byte[])} for features in an {@link IpcBuffer}. */
  public byte[] predict(String model, int version, List<String> keep, IpcBuffer features) {
    return NativeBridge.predict(
        handle(), model, version, String.join(",", keep), features.array(), features.length());
  }

  @Override
  public void close() {
    long h = handle.getAndSet(0);
    if (h != 0) {
      NativeBridge.close(h);
    }
  }
}

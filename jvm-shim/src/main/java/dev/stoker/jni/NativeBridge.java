package dev.stoker.jni;

/**
 * The JVM's calls into libstoker_jni. Errors arrive as {@link dev.stoker.StokerException}
 * subclasses chosen by the native error kind, with the native message. Partitions and
 * batches cross as one Arrow IPC stream buffer each, never row by row.
 *
 * <p>Each public method loads the library, then calls the native of its own name with a
 * {@code 0} suffix; the state methods are named as the native/core functions they call
 * ({@code averaging::average}, {@code running_mean::merge},
 * {@code running_mean::with_samples}, {@code State::without_optimizer},
 * {@code State::meta}).
 */
public final class NativeBridge {
  private NativeBridge() {}

  /** Version of the loaded native library. */
  public static String nativeVersion() {
    NativeLoader.ensureLoaded();
    return nativeVersion0();
  }

  /**
   * Weighted average of serialized stoker states (safetensors bytes with stoker
   * metadata), as serialized state bytes.
   *
   * @throws dev.stoker.InvalidInputException if a state is corrupt, the states are of
   *     different models or shapes, or the counts of states and weights differ
   */
  public static byte[] average(byte[][] states, double[] weights) {
    NativeLoader.ensureLoaded();
    return average0(states, weights);
  }

  /**
   * Merges {@code other} into {@code mean} in place: afterwards {@code mean} holds the
   * weighted mean of both (weight {@code meanWeight + otherWeight}). A trained state is
   * its own partial mean, so a round's aggregation is a chain of these, each one pass
   * over the bytes with nothing allocated (docs/engine.md).
   *
   * @throws dev.stoker.InvalidInputException if a state is corrupt, a weight is not
   *     positive, or the states are of different models or shapes ({@code mean} is then
   *     unchanged)
   */
  public static void merge(byte[] mean, double meanWeight, byte[] other, double otherWeight) {
    NativeLoader.ensureLoaded();
    merge0(mean, meanWeight, other, otherWeight);
  }

  /**
   * Matrix result {@code b} (the moments or product a server's {@code linalg} kernel
   * returned, docs/linalg.md) folded into {@code a}, as new bytes. The caller fixes the
   * order (partition order), so that reruns give the same bits.
   *
   * @throws dev.stoker.InvalidInputException if either is corrupt or they describe
   *     different columns or shapes
   */
  public static byte[] linalgCombine(byte[] a, byte[] b) {
    NativeLoader.ensureLoaded();
    return linalgCombine0(a, b);
  }

  /**
   * The values of a combined matrix product or column sums (row-major), followed by the
   * number of rows they cover.
   */
  public static double[] linalgValues(byte[] product) {
    NativeLoader.ensureLoaded();
    return linalgValues0(product);
  }

  /** The merged mean as a round's state: a copy with its {@code samples} metadata set. */
  public static byte[] withSamples(byte[] mean, long samples) {
    NativeLoader.ensureLoaded();
    return withSamples0(mean, samples);
  }

  /**
   * The state without its optimizer tensors: what is broadcast when optimizer state is
   * not averaged, so each round starts the optimizer afresh.
   */
  public static byte[] withoutOptimizer(byte[] state) {
    NativeLoader.ensureLoaded();
    return withoutOptimizer0(state);
  }

  /**
   * The state's metadata as a JSON object of strings: {@code model_id}, {@code round},
   * {@code samples}, and what the engine records ({@code task}, {@code loss}, ...).
   *
   * @throws dev.stoker.InvalidInputException if the bytes are not a stoker state
   */
  public static String meta(byte[] state) {
    NativeLoader.ensureLoaded();
    return meta0(state);
  }

  /**
   * The validation metrics of a round: the partitions' evaluations (the {@code
   * evaluation} JSON each {@code evaluate} returned) merged in array order, as JSON
   * {@code {"rows": n, "task": "...", "metrics": {"loss": ..., "auc": ...}}}; an
   * undefined metric (AUC of one class) is null.
   *
   * @throws dev.stoker.InvalidInputException if an evaluation is malformed or they are
   *     of different tasks
   */
  public static String evaluationMetrics(String[] evaluations) {
    NativeLoader.ensureLoaded();
    return evaluationMetrics0(evaluations);
  }

  private static native String evaluationMetrics0(String[] evaluations);

  /**
   * The outer optimizer's step (Nesterov momentum on the round's averaged change, as in
   * DiLoCo): from the round's input state {@code previous} and the partitions' mean
   * {@code averaged}, returns {@code {next state, new momentum}}; {@code momentum} is
   * null before the first step. Parameters move; optimizer tensors and buffers keep
   * their averages. lr 1 with momentum 0 is plain averaging.
   */
  public static byte[][] outerStep(byte[] previous, byte[] averaged, byte[] momentum,
      double lr, double momentumFactor) {
    NativeLoader.ensureLoaded();
    return outerStep0(previous, averaged, momentum, lr, momentumFactor);
  }

  private static native byte[][] outerStep0(byte[] previous, byte[] averaged, byte[] momentum,
      double lr, double momentumFactor);

  private static native String nativeVersion0();

  private static native byte[] average0(byte[][] states, double[] weights);

  private static native void merge0(byte[] mean, double meanWeight, byte[] other,
      double otherWeight);

  private static native byte[] withSamples0(byte[] mean, long samples);

  private static native byte[] withoutOptimizer0(byte[] state);

  private static native byte[] linalgCombine0(byte[] a, byte[] b);

  private static native double[] linalgValues0(byte[] product);

  private static native String meta0(byte[] state);

  static native long connect(String uri, String token, String caPem, int livenessSeconds);

  static native void close(long handle);

  static native byte[] action(long handle, String type, byte[] body);

  static native byte[][] actionParts(long handle, String type, String json,
      String[] blobNames, byte[][] blobs);

  /** Sends the first {@code length} bytes of {@code arrowIpcStream}. */
  static native String putPartition(long handle, String job, boolean validation, int partition,
      String version, byte[] arrowIpcStream, int length);

  /** Predicts for the first {@code length} bytes of {@code arrowIpcStream}. */
  static native byte[] predict(long handle, String model, int version, String keepColumns,
      byte[] arrowIpcStream, int length);
}

package dev.stoker.jni;

/**
 * The JVM's calls into libstoker_jni. Errors arrive as {@link dev.stoker.StokerException}
 * subclasses chosen by the native error kind, with the native message. Partitions and
 * batches cross as one Arrow IPC stream buffer each, never row by row.
 */
public final class NativeBridge {
  private NativeBridge() {}

  /** Version of the loaded native library. */
  public static String nativeVersion() {
    NativeLoader.ensureLoaded();
    return version();
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
    return averageStates(states, weights);
  }

  /** {@code weight * state} as a partial sum: what each training task emits. */
  public static byte[] weightedSum(byte[] state, double weight) {
    NativeLoader.ensureLoaded();
    return partialSum(state, weight);
  }

  /** The sum of two partial sums: the combine step of treeAggregate. */
  public static byte[] combine(byte[] a, byte[] b) {
    NativeLoader.ensureLoaded();
    return mergeSums(a, b);
  }

  /** The averaged state of a partial sum: the driver's divide step. */
  public static byte[] average(byte[] partialSum) {
    NativeLoader.ensureLoaded();
    return finishAverage(partialSum);
  }

  /**
   * The state without its optimizer tensors: what is broadcast when optimizer state is
   * not averaged, so each round starts the optimizer afresh.
   */
  public static byte[] withoutOptimizer(byte[] state) {
    NativeLoader.ensureLoaded();
    return stripOptimizer(state);
  }

  private static native String version();

  private static native byte[] stripOptimizer(byte[] state);

  private static native byte[] averageStates(byte[][] states, double[] weights);

  private static native byte[] partialSum(byte[] state, double weight);

  private static native byte[] mergeSums(byte[] a, byte[] b);

  private static native byte[] finishAverage(byte[] partialSum);

  static native long connect(String uri, String token);

  static native void close(long handle);

  static native byte[] action(long handle, String type, byte[] body);

  static native String putPartition(long handle, String job, int partition, String version,
      byte[] arrowIpcStream);

  static native byte[] predict(long handle, String model, int version, String keepColumns,
      byte[] arrowIpcStream);
}

package dev.stoker.jni;

/**
 * The JVM's calls into libstoker_jni. Errors arrive as {@link dev.stoker.StokerException}
 * subclasses chosen by the native error kind, with the native message.
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

  private static native String version();

  private static native byte[] averageStates(byte[][] states, double[] weights);
}

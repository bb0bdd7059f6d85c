package dev.stoker.jni;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;

/** Writes and reads minimal stoker states (safetensors, F32 tensors) for tests. */
final class StateBytes {
  private StateBytes() {}

  /** One F32 tensor named "w" with the given values, model id "m". */
  static byte[] single(float[] values, long samples) {
    String header =
        "{\"__metadata__\":{\"format\":\"stoker.state.v1\",\"model_id\":\"m\",\"round\":\"0\","
            + "\"samples\":\"" + samples + "\"},"
            + "\"w\":{\"dtype\":\"F32\",\"shape\":[" + values.length + "],\"data_offsets\":[0,"
            + (values.length * 4) + "]}}";
    byte[] h = header.getBytes(StandardCharsets.UTF_8);
    ByteBuffer b = ByteBuffer.allocate(8 + h.length + values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
    b.putLong(h.length).put(h);
    for (float v : values) {
      b.putFloat(v);
    }
    return b.array();
  }

  /** Values of the F32 tensor "w" (the only tensor) of a state. */
  static float[] values(byte[] state) {
    ByteBuffer b = ByteBuffer.wrap(state).order(ByteOrder.LITTLE_ENDIAN);
    int headerLength = (int) b.getLong();
    int start = 8 + headerLength;
    int n = (state.length - start) / 4;
    float[] out = new float[n];
    b.position(start);
    for (int i = 0; i < n; i++) {
      out[i] = b.getFloat();
    }
    return out;
  }
}

package dev.stoker.jni;

import java.nio.ByteBuffer;
import java.nio.channels.WritableByteChannel;
import java.util.Arrays;

/**
 * An Arrow IPC stream being written, in one growing array that goes to the native side
 * as it is: the filled part is read straight out of the array, so the stream is never
 * copied into an exactly sized array first ({@code ByteArrayOutputStream.toByteArray}).
 * Arrow's stream writer writes its off-heap buffers into it directly, as a channel,
 * instead of through an {@code OutputStream}'s intermediate chunks. Not thread safe.
 */
public final class IpcBuffer implements WritableByteChannel {
  private byte[] data;
  private int length;

  /** An empty buffer with room for {@code capacity} bytes before it grows. */
  public IpcBuffer(int capacity) {
    this.data = new byte[Math.max(capacity, 64)];
  }

  private IpcBuffer(byte[] data) {
    this.data = data;
    this.length = data.length;
  }

  /** A buffer over a stream already written (not copied). */
  public static IpcBuffer wrap(byte[] stream) {
    return new IpcBuffer(stream);
  }

  /** The array the stream is in; only its first {@link #length()} bytes are the stream. */
  public byte[] array() {
    return data;
  }

  public int length() {
    return length;
  }

  /** The stream in an array of its own size (a copy unless it fills the array exactly). */
  public byte[] toByteArray() {
    return length == data.length ? data : Arrays.copyOf(data, length);
  }

  @Override
  public int write(ByteBuffer src) {
    int n = src.remaining();
    ensure(n);
    src.get(data, length, n);
    length += n;
    return n;
  }

  private void ensure(int more) {
    long needed = (long) length + more;
    if (needed <= data.length) {
      return;
    }
    // Java arrays stop a little short of Integer.MAX_VALUE; a partition past 2 GiB
    // must be split into more partitions.
    long limit = Integer.MAX_VALUE - 8;
    if (needed > limit) {
      throw new IllegalStateException(
          "an Arrow IPC stream over 2 GiB cannot cross into native code in one array; "
              + "repartition the DataFrame into more partitions");
    }
    long grown = Math.max(needed, Math.min(limit, (long) data.length * 2));
    data = Arrays.copyOf(data, (int) grown);
  }

  @Override
  public boolean isOpen() {
    return true;
  }

  @Override
  public void close() {}
}

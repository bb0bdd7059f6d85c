package dev.stoker;

/**
 * Base class of every error stoker raises on the JVM. Native code throws the
 * subclass matching the error's kind (see docs/errors.md); this class itself
 * stands for I/O and internal errors, including a panic in native code.
 */
public class StokerException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public StokerException(String message) {
    super(message);
  }

  public StokerException(String message, Throwable cause) {
    super(message, cause);
  }
}

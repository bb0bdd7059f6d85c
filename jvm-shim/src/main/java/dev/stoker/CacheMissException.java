package dev.stoker;

/** The server no longer holds a partition; send it again and retry. */
public class CacheMissException extends StokerException {
  private static final long serialVersionUID = 1L;

  public CacheMissException(String message) {
    super(message);
  }
}

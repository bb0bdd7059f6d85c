package dev.stoker;

/** Bad input: a missing or mistyped column, a null, NaN or out-of-range value, corrupt model or state bytes. */
public class InvalidInputException extends StokerException {
  private static final long serialVersionUID = 1L;

  public InvalidInputException(String message) {
    super(message);
  }
}

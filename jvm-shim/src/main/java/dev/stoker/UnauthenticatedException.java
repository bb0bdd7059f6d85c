package dev.stoker;

/** Missing or wrong credentials for the stoker server. */
public class UnauthenticatedException extends StokerException {
  private static final long serialVersionUID = 1L;

  public UnauthenticatedException(String message) {
    super(message);
  }
}

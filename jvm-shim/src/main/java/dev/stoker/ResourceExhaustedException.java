package dev.stoker;

/** A byte budget or message limit would be exceeded. */
public class ResourceExhaustedException extends StokerException {
  private static final long serialVersionUID = 1L;

  public ResourceExhaustedException(String message) {
    super(message);
  }
}

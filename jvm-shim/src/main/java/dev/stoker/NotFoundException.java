package dev.stoker;

/** A job, model, file or tensor that does not exist. */
public class NotFoundException extends StokerException {
  private static final long serialVersionUID = 1L;

  public NotFoundException(String message) {
    super(message);
  }
}

package dev.stoker;

/** The stoker server (or the device it needs) is not reachable. */
public class ServerUnavailableException extends StokerException {
  private static final long serialVersionUID = 1L;

  public ServerUnavailableException(String message) {
    super(message);
  }
}

package dev.stoker;

/**
 * Missing or wrong credentials for the stoker server. The message is the server's (a
 * missing or a wrong token), followed by where the JVM's token comes from, so that a Spark
 * job failing this way names the setting to fix.
 */
public class UnauthenticatedException extends StokerException {
  private static final long serialVersionUID = 1L;

  /** What follows the server's message. */
  static final String WHERE_THE_TOKEN_COMES_FROM = "; Spark sends the Spark conf"
      + " spark.stoker.server.token to servers at a fixed address (serverAddress,"
      + " spark.stoker.server.address): set it to the token of the server's --token-file;"
      + " NativeClient.connect takes the token as an argument";

  public UnauthenticatedException(String message) {
    super(message + WHERE_THE_TOKEN_COMES_FROM);
  }
}

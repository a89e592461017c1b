package dev.plum.flink;

/** A record that breaks the watch contract: {@code reason} is one of schema.REASONS. */
public final class Rejection extends Exception {
  public final String reason;

  public Rejection(String reason, String message) {
    super(reason + ": " + message, null, false, false);
    this.reason = reason;
  }

  public String detail() {
    String m = getMessage();
    return m.substring(reason.length() + 2);
  }
}

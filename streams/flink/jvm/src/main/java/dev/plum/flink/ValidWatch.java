package dev.plum.flink;

/** A watch record that passed validation: its user and surface besides the timeline's fields. */
public final class ValidWatch {
  public final Watch watch;
  public final String userId;
  public final String surface;

  ValidWatch(Watch watch, String userId, String surface) {
    this.watch = watch;
    this.userId = userId;
    this.surface = surface;
  }
}

package dev.plum.flink;

/**
 * The small per-user state read and written per record (timeline.py's head): the newest
 * accepted ts, the newest released ts, the session number, the last released ts and the
 * earliest pending ts, and the user id. Nullable numbers: nothing yet. A Flink structured type.
 */
public class Head {
  public Long maxTs;
  public Long releasedMax;
  public int session;
  public Long lastTs;
  public Long minPending;
  /** The user (the partition key), for the examples a timer releases. */
  public String userId;

  public Head() {}
}

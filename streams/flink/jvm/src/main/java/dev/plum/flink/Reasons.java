package dev.plum.flink;

/** The reason codes of streams/contracts/schema.py that the watch path can produce. */
public final class Reasons {
  private Reasons() {}

  public static final String NOT_JSON = "not_json";
  public static final String NOT_OBJECT = "not_object";
  public static final String OVERSIZED_PAYLOAD = "oversized_payload";
  public static final String UNKNOWN_SCHEMA = "unknown_schema";
  public static final String MISSING_FIELD = "missing_field";
  public static final String WRONG_TYPE = "wrong_type";
  public static final String EMPTY_ID = "empty_id";
  public static final String NEGATIVE_DURATION = "negative_duration";
  public static final String WATCH_TIME_EXCEEDS_DURATION = "watch_time_exceeds_duration";
  public static final String FUTURE_TIMESTAMP = "future_timestamp";
  public static final String BAD_SATISFACTION = "bad_satisfaction";
  public static final String LATE = "late";
  public static final String AMBIGUOUS_USER_ID = "ambiguous_user_id";

  /** Every reason the job's dead letters can carry (metrics start them all at 0). */
  public static final String[] WATCH_REASONS = {
    NOT_JSON, NOT_OBJECT, OVERSIZED_PAYLOAD, UNKNOWN_SCHEMA, MISSING_FIELD, WRONG_TYPE, EMPTY_ID,
    NEGATIVE_DURATION, WATCH_TIME_EXCEEDS_DURATION, FUTURE_TIMESTAMP, BAD_SATISFACTION, LATE,
    AMBIGUOUS_USER_ID
  };
}

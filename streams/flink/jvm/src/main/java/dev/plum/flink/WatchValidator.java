package dev.plum.flink;

import java.math.BigInteger;
import java.util.Map;

/**
 * {@code schema.decode_watch} of streams/contracts/schema.py, decision for decision: the same
 * checks in the same order with the same reason codes (the messages say the same in other
 * words). The shared vectors in tests/vectors/flink hold the two to each other.
 */
public final class WatchValidator {
  public static final int SCHEMA_VERSION = 1;
  public static final double MAX_WATCH_TO_DURATION = 1.5;
  public static final long DEFAULT_MAX_FUTURE_MS = 5 * 60 * 1000;
  public static final int DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024;

  private final long maxFutureMs;
  private final int maxPayloadBytes;

  public WatchValidator() {
    this(DEFAULT_MAX_FUTURE_MS, DEFAULT_MAX_PAYLOAD_BYTES);
  }

  public WatchValidator(long maxFutureMs, int maxPayloadBytes) {
    this.maxFutureMs = maxFutureMs;
    this.maxPayloadBytes = maxPayloadBytes;
  }

  /** The watch of a record the job keyed by {@code key}, or the reason it is rejected. */
  public ValidWatch decodeKeyed(String key, byte[] raw, long nowMs) throws Rejection {
    ValidWatch w = decode(raw, nowMs);
    if (!w.userId.equals(key)) {
      throw new Rejection(
          Reasons.AMBIGUOUS_USER_ID,
          "user_id " + PyRepr.str(w.userId) + " was read as " + PyRepr.str(key) + " when the record was keyed");
    }
    return w;
  }

  public ValidWatch decode(byte[] raw, long nowMs) throws Rejection {
    Map<String, Object> obj = parseObject(raw);
    String eventId = id(obj, "event_id");
    String userId = id(obj, "user_id");
    String videoId = id(obj, "video_id");
    long ts = timestamp(obj, nowMs);
    double watchTime = toDouble(require(obj, "watch_time_s", NUMBER, "a number of seconds"), "watch_time_s");
    double duration =
        toDouble(require(obj, "video_duration_s", NUMBER, "a number of seconds"), "video_duration_s");
    Boolean clicked = (Boolean) require(obj, "clicked", BOOL, "true or false");
    String surface = (String) require(obj, "surface", STR, "a string");
    String context = (String) optional(obj, "context_video_id", STR, "a string");
    Object satRaw = optional(obj, "satisfaction", NUMBER, "a number in [0, 1]");
    Double sat = satRaw == null ? null : toDouble(satRaw, "satisfaction");
    if (watchTime < 0) {
      throw new Rejection(Reasons.NEGATIVE_DURATION, "watch_time_s=" + watchTime + " is negative");
    }
    if (duration <= 0) {
      throw new Rejection(
          Reasons.NEGATIVE_DURATION, "video_duration_s=" + duration + " is not positive");
    }
    if (watchTime > duration * MAX_WATCH_TO_DURATION) {
      throw new Rejection(
          Reasons.WATCH_TIME_EXCEEDS_DURATION,
          "watch_time_s=" + watchTime + " > " + MAX_WATCH_TO_DURATION + " x video_duration_s=" + duration);
    }
    if (sat != null && !(0.0 <= sat && sat <= 1.0)) {
      throw new Rejection(Reasons.BAD_SATISFACTION, "satisfaction=" + sat + " is outside [0, 1]");
    }
    return new ValidWatch(
        new Watch(ts, eventId, videoId, watchTime, duration, clicked, context, sat), userId, surface);
  }

  /** schema.parse_object: size, JSON, object, schema version. */
  @SuppressWarnings("unchecked")
  public Map<String, Object> parseObject(byte[] raw) throws Rejection {
    if (raw.length > maxPayloadBytes) {
      throw new Rejection(
          Reasons.OVERSIZED_PAYLOAD, "payload is " + raw.length + " bytes, limit " + maxPayloadBytes);
    }
    Object obj;
    try {
      obj = PyJson.parse(raw);
    } catch (PyJson.Error e) {
      throw new Rejection(Reasons.NOT_JSON, "not UTF-8 JSON: " + e.getMessage());
    }
    if (!(obj instanceof Map)) {
      throw new Rejection(Reasons.NOT_OBJECT, "expected a JSON object, got " + PyRepr.typeName(obj));
    }
    Map<String, Object> m = (Map<String, Object>) obj;
    if (m.containsKey("schema") && !equalsOne(m.get("schema"))) {
      throw new Rejection(
          Reasons.UNKNOWN_SCHEMA,
          "schema=" + PyRepr.repr(m.get("schema")) + ", this code reads " + SCHEMA_VERSION);
    }
    return m;
  }

  /** Python's {@code value == 1}: 1, 1.0 and True. */
  static boolean equalsOne(Object v) {
    if (v instanceof Long) {
      return (Long) v == 1L;
    }
    if (v instanceof Double) {
      return (Double) v == 1.0;
    }
    if (v instanceof Boolean) {
      return (Boolean) v;
    }
    return false; // BigInteger (never 1), strings, null, containers
  }

  // Python types a field may have (the `kinds` of schema._typed).
  private static final int STR = 1;
  private static final int BOOL = 2;
  private static final int INT = 4;
  private static final int NUMBER = 4 | 8;

  private static Object require(Map<String, Object> obj, String name, int kinds, String what)
      throws Rejection {
    Object v = obj.get(name);
    if (v == null) {
      throw new Rejection(Reasons.MISSING_FIELD, "field '" + name + "' is missing");
    }
    return typed(v, name, kinds, what);
  }

  private static Object optional(Map<String, Object> obj, String name, int kinds, String what)
      throws Rejection {
    Object v = obj.get(name);
    return v == null ? null : typed(v, name, kinds, what);
  }

  private static Object typed(Object v, String name, int kinds, String what) throws Rejection {
    boolean ok;
    if (v instanceof String) {
      ok = (kinds & STR) != 0;
    } else if (v instanceof Boolean) {
      ok = (kinds & BOOL) != 0;
    } else if (v instanceof Long || v instanceof BigInteger) {
      ok = (kinds & INT) != 0;
    } else if (v instanceof Double) {
      ok = (kinds & 8) != 0;
      if (ok && !Double.isFinite((Double) v)) {
        throw new Rejection(
            Reasons.WRONG_TYPE, "field '" + name + "' must be finite, got " + PyRepr.repr(v));
      }
    } else {
      ok = false; // dict, list
    }
    if (!ok) {
      throw new Rejection(
          Reasons.WRONG_TYPE, "field '" + name + "' must be " + what + ", got " + PyRepr.repr(v));
    }
    return v;
  }

  private static String id(Map<String, Object> obj, String name) throws Rejection {
    String v = (String) require(obj, name, STR, "a string");
    if (PyStr.isBlank(v)) {
      throw new Rejection(Reasons.EMPTY_ID, "field '" + name + "' is empty");
    }
    return v;
  }

  private long timestamp(Map<String, Object> obj, long nowMs) throws Rejection {
    Object v = require(obj, "ts", INT, "an integer (epoch ms)");
    if (v instanceof BigInteger) {
      BigInteger b = (BigInteger) v;
      if (b.signum() < 0) {
        throw new Rejection(
            Reasons.WRONG_TYPE, "field 'ts' must be a non-negative epoch ms, got " + b);
      }
      throw new Rejection(Reasons.FUTURE_TIMESTAMP, "ts=" + b + " is in the future");
    }
    long ts = (Long) v;
    if (ts < 0) {
      throw new Rejection(Reasons.WRONG_TYPE, "field 'ts' must be a non-negative epoch ms, got " + ts);
    }
    if (ts - nowMs > maxFutureMs) { // ts > now + max_future without overflow (both >= 0)
      throw new Rejection(
          Reasons.FUTURE_TIMESTAMP,
          "ts=" + ts + " is " + ((ts - nowMs) / 1000.0) + " s in the future (limit " + (maxFutureMs / 1000) + " s)");
    }
    return ts;
  }

  /** Python's float(v) of a validated number (int or finite float). */
  private static double toDouble(Object v, String name) throws Rejection {
    if (v instanceof Double) {
      return (Double) v;
    }
    if (v instanceof Long) {
      return (double) (Long) v;
    }
    double d = ((BigInteger) v).doubleValue();
    if (Double.isInfinite(d)) { // Python: OverflowError, decided as wrong_type by the reference
      throw new Rejection(Reasons.WRONG_TYPE, "field '" + name + "' is too large for a float");
    }
    return d;
  }


}

package dev.plum.flink;

import java.util.Arrays;
import java.util.Map;

/**
 * What the job's SQL reads from a raw record before the operator: its `ts` (for watermarks
 * and the backfill's range) and its `user_id` (the partition key), read with the reference's
 * JSON rules ({@link PyJson}) rather than SQL's JSON_VALUE (a Jackson parse per call, the
 * source's largest cost, and not the reference's reading). Both functions are called on the
 * same record one after the other, so the last record's parse is kept per thread.
 */
final class WatchProbe {
  private static final ThreadLocal<WatchProbe> LAST = ThreadLocal.withInitial(WatchProbe::new);

  private byte[] raw;
  private Map<?, ?> obj; // null: not a JSON object

  private WatchProbe() {}

  static Map<?, ?> object(byte[] raw) {
    WatchProbe p = LAST.get();
    if (p.raw == null || !Arrays.equals(p.raw, raw)) {
      Object parsed;
      try {
        parsed = raw.length > WatchValidator.DEFAULT_MAX_PAYLOAD_BYTES ? null : PyJson.parse(raw);
      } catch (PyJson.Error e) {
        parsed = null;
      }
      p.raw = raw;
      p.obj = parsed instanceof Map ? (Map<?, ?>) parsed : null;
    }
    return p.obj;
  }

  /** The record's `ts` when it is a JSON integer that fits a long, else null. */
  static Long ts(byte[] raw) {
    if (raw == null) {
      return null;
    }
    Map<?, ?> obj = object(raw);
    Object ts = obj == null ? null : obj.get("ts");
    return ts instanceof Long ? (Long) ts : null;
  }

  /** The record's `user_id` when it is a string, else '' (such a record is dead-lettered). */
  static String userKey(byte[] raw) {
    if (raw == null) {
      return "";
    }
    Map<?, ?> obj = object(raw);
    Object user = obj == null ? null : obj.get("user_id");
    return user instanceof String ? (String) user : "";
  }
}

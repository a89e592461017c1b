package dev.plum.flink;

import java.nio.charset.StandardCharsets;
import java.util.Base64;

/**
 * The job's output records as JSON: the SFT example (the fields, key order and values of
 * schema.SftExample as streams/flink/job.py's _encode_example writes it) and the dead letter
 * (schema.DeadLetter). Text is UTF-8; floats are written so that Python's json reads back the
 * same double (every float here is finite).
 */
public final class JsonOut {
  private JsonOut() {}

  public static byte[] example(Watch ev, String userId, Released.Example ex) {
    StringBuilder sb = new StringBuilder(256 + 96 * ex.history.size());
    sb.append("{\"event_id\":");
    str(sb, ev.eventId);
    sb.append(",\"user_id\":");
    str(sb, userId);
    sb.append(",\"history\":[");
    boolean first = true;
    for (Released.HistoryItem h : ex.history) {
      if (!first) {
        sb.append(',');
      }
      first = false;
      sb.append("{\"video_id\":");
      str(sb, h.videoId);
      sb.append(",\"watch_ratio\":");
      num(sb, h.watchRatio);
      sb.append(",\"watch_time_s\":");
      num(sb, h.watchTimeS);
      sb.append(",\"hours_since\":");
      num(sb, h.hoursSince);
      sb.append('}');
    }
    sb.append("],\"context_video_id\":");
    if (ev.contextVideoId == null) {
      sb.append("null");
    } else {
      str(sb, ev.contextVideoId);
    }
    sb.append(",\"target_video_id\":");
    str(sb, ev.videoId);
    sb.append(",\"reward\":");
    num(sb, ex.reward);
    sb.append(",\"ts\":").append(ev.ts);
    sb.append(",\"schema\":").append(WatchValidator.SCHEMA_VERSION).append('}');
    return sb.toString().getBytes(StandardCharsets.UTF_8);
  }

  public static byte[] deadLetter(
      String sourceTopic, int partition, long offset, Rejection err, byte[] raw, long ts) {
    StringBuilder sb = new StringBuilder(160 + raw.length * 4 / 3);
    sb.append("{\"source_topic\":");
    str(sb, sourceTopic);
    sb.append(",\"partition\":").append(partition);
    sb.append(",\"offset\":").append(offset);
    sb.append(",\"reason\":");
    str(sb, err.reason);
    sb.append(",\"error\":");
    str(sb, err.detail());
    sb.append(",\"raw_b64\":\"").append(Base64.getEncoder().encodeToString(raw)).append('"');
    sb.append(",\"ts\":").append(ts);
    sb.append(",\"schema\":").append(WatchValidator.SCHEMA_VERSION).append('}');
    return sb.toString().getBytes(StandardCharsets.UTF_8);
  }

  /** A finite double as a JSON number that parses back to the same double. */
  static void num(StringBuilder sb, double d) {
    if (!Double.isFinite(d)) {
      throw new IllegalArgumentException("not a finite number: " + d);
    }
    sb.append(Double.toString(d)); // always has '.' or 'E': read back as a float
  }

  /**
   * A JSON string: quotes, backslash and control characters escaped, a lone surrogate as a
   * \\uXXXX escape (Python's json reads it back as that surrogate), the rest as is.
   */
  static void str(StringBuilder sb, String s) {
    sb.append('"');
    for (int i = 0, n = s.length(); i < n; i++) {
      char c = s.charAt(i);
      if (c == '"' || c == '\\') {
        sb.append('\\').append(c);
      } else if (c < 0x20) {
        switch (c) {
          case '\n':
            sb.append("\\n");
            break;
          case '\r':
            sb.append("\\r");
            break;
          case '\t':
            sb.append("\\t");
            break;
          default:
            sb.append(String.format("\\u%04x", (int) c));
        }
      } else if (Character.isSurrogate(c)) {
        if (Character.isHighSurrogate(c) && i + 1 < n && Character.isLowSurrogate(s.charAt(i + 1))) {
          sb.append(c).append(s.charAt(i + 1));
          i++;
        } else {
          sb.append(String.format("\\u%04x", (int) c));
        }
      } else {
        sb.append(c);
      }
    }
    sb.append('"');
  }
}

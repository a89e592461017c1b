package dev.plum.flink;

import java.io.Serializable;
import java.util.Map;

/**
 * The co-occurrence windows of the job's pairs: which event-time windows a pair belongs to
 * (the ends of the epoch-aligned tumbling or sliding windows holding its ts, as
 * streams/flink/reference.py {@code _windows}), the shard its count is kept in, and the
 * smallest count emitted.
 *
 * <p>A pair's count lives under the partition key (window end, shard): one timer per key and
 * window instead of one per pair and window, and a window's pairs spread over {@link #shards}
 * keys so the count scales out with the job's parallelism. The shard is part of the state's
 * layout: changing it for a job with retained checkpoints needs a backfill.
 */
public final class PairWindows implements Serializable {
  public final boolean tumbling;
  public final long sizeMs;
  public final long slideMs;
  public final long minCount;
  public final int shards;

  public PairWindows(boolean tumbling, long sizeMs, long slideMs, long minCount, int shards) {
    if (sizeMs <= 0 || slideMs <= 0 || minCount < 1 || shards < 1) {
      throw new IllegalArgumentException(
          "bad pair windows: size " + sizeMs + ", slide " + slideMs + ", min_count " + minCount + ", shards " + shards);
    }
    this.tumbling = tumbling;
    this.sizeMs = sizeMs;
    this.slideMs = slideMs;
    this.minCount = minCount;
    this.shards = shards;
  }

  /** Ends of the windows holding {@code ts}, ascending. */
  public long[] ends(long ts) {
    if (tumbling) {
      return new long[] {ts - Math.floorMod(ts, sizeMs) + sizeMs};
    }
    long lastStart = ts - Math.floorMod(ts, slideMs);
    int n = 0;
    for (long start = lastStart; start > ts - sizeMs; start -= slideMs) {
      n++;
    }
    long[] out = new long[n];
    long start = lastStart;
    for (int i = n - 1; i >= 0; i--, start -= slideMs) {
      out[i] = start + sizeMs;
    }
    return out;
  }

  /** The shard of pair (a, b): a function of the strings alone, the same in every JVM. */
  public int shard(String a, String b) {
    return Math.floorMod(31 * a.hashCode() + b.hashCode(), shards);
  }

  /** From the job parameter's "pair_windows" object. */
  public static PairWindows fromMap(Map<String, Object> m) {
    Object kind = m.get("window");
    if (!"tumbling".equals(kind) && !"sliding".equals(kind)) {
      throw new IllegalArgumentException("pair window must be tumbling or sliding, got " + kind);
    }
    return new PairWindows(
        "tumbling".equals(kind),
        JobParams.number(m, "window_size_ms", "pair window").longValue(),
        JobParams.number(m, "window_slide_ms", "pair window").longValue(),
        JobParams.number(m, "min_count", "pair window").longValue(),
        JobParams.number(m, "shards", "pair window").intValue());
  }
}

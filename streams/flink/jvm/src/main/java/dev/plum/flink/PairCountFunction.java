package dev.plum.flink;

import java.util.Map;
import org.apache.flink.metrics.Counter;
import org.apache.flink.table.annotation.ArgumentHint;
import org.apache.flink.table.annotation.ArgumentTrait;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.annotation.StateHint;
import org.apache.flink.table.api.dataview.MapView;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ProcessTableFunction;
import org.apache.flink.types.Row;

/**
 * Counts co-occurrence pairs per event-time window (streams/flink/job.py calls it from SQL on
 * the pair rows of {@link UserTimelineFunction}), and emits each pair seen at least
 * {@code min_count} times in a window when the watermark passes the window's end, as the
 * reference does (streams/flink/reference.py: {@code end - 1 <= watermark}).
 *
 * <p>Input, partitioned by {@code (window_end, shard)} ({@link PairWindows}): {@code window_end,
 * shard, a, b, rowtime}. Output after the partition key: {@code a, b, n}. State per key: the
 * window's pair counts (a MapView: a row adds one to one entry), and one timer at
 * {@code window_end - 1}; firing emits and clears the key's state. The state has no TTL (the
 * job's {@code table.exec.state.ttl} is for its per-user state): the window's end clears it,
 * and a TTL on a MapState scans the whole map on access, which cost half this operator's time.
 *
 * <p>A pair row for a window the watermark has already passed cannot be counted (its window
 * was emitted); it is dropped and counted in {@code plum_flink_pairs_late_total}. It does not
 * happen when records keep the source's out-of-orderness promise (streams/flink/timeline.py).
 */
@FunctionHint(output = @DataTypeHint("ROW<a STRING, b STRING, n BIGINT>"))
public class PairCountFunction extends ProcessTableFunction<Row> {
  private transient PairWindows windows;
  private transient Counter mLate;

  @Override
  @SuppressWarnings("unchecked")
  public void open(FunctionContext context) throws Exception {
    windows = PairWindows.fromMap((Map<String, Object>) JobParams.read(context).get("pair_windows"));
    mLate = context.getMetricGroup().counter("plum_flink_pairs_late_total");
  }

  public void eval(
      Context ctx,
      @StateHint(ttl = "0") MapView<String, Long> counts,
      @ArgumentHint({ArgumentTrait.SET_SEMANTIC_TABLE, ArgumentTrait.REQUIRE_ON_TIME}) Row input)
      throws Exception {
    long end = (Long) input.getField(0);
    TimeContext<Long> time = ctx.timeContext(Long.class);
    Long wm = time.currentWatermark();
    if (wm != null && end - 1 <= wm) {
      mLate.inc();
      return;
    }
    String key = pairKey((String) input.getField(2), (String) input.getField(3));
    Long n = counts.get(key);
    counts.put(key, n == null ? 1L : n + 1);
    if (n == null) { // the first row of this pair: the key's timer (registering it again is a no-op)
      time.registerOnTime(end - 1);
    }
  }

  public void onTimer(OnTimerContext ctx, MapView<String, Long> counts) throws Exception {
    for (Map.Entry<String, Long> e : counts.entries()) {
      if (e.getValue() >= windows.minCount) {
        String key = e.getKey();
        int colon = key.indexOf(':');
        int aLen = Integer.parseInt(key.substring(0, colon));
        collect(Row.of(key.substring(colon + 1, colon + 1 + aLen), key.substring(colon + 1 + aLen), e.getValue()));
      }
    }
    // The timer has fired; clear the key's state only. ctx.clearAll() here (state and timers)
    // lost other keys' timers in Flink 2.3.0: windows went unemitted at the final watermark.
    ctx.clearAllState();
  }

  /** (a, b) as one unambiguous map key: the length of a, ':', a, b. */
  static String pairKey(String a, String b) {
    return a.length() + ":" + a + b;
  }
}

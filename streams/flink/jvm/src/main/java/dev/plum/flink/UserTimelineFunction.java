package dev.plum.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.table.annotation.ArgumentHint;
import org.apache.flink.table.annotation.ArgumentTrait;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.annotation.StateHint;
import org.apache.flink.table.api.dataview.ListView;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ProcessTableFunction;
import org.apache.flink.types.Row;

/**
 * The job's per-user operator (streams/flink/job.py calls it from SQL): validation of each
 * watch record ({@link WatchValidator}), then the per-user timeline ({@link Timeline}): late
 * watches are dead-lettered, accepted ones buffered until the watermark passes them and then
 * released in (ts, event_id) order as pairs and sampled examples.
 *
 * <p>Input (partitioned by the user key SQL read from the JSON): {@code k, raw, partition,
 * offset, rt}. Output rows after the partition key: {@code kind, v, a, b, window_end, shard}:
 * kind 0 = a sampled example (v = its JSON), 1 = a dead letter (v = its JSON), 2 = one pair
 * (a &lt; b by code point) in one of its windows ({@link PairWindows}: the window's end and the
 * shard its count is kept in; {@link PairCountFunction} counts them).
 *
 * <p>State per user: {@code head} (a few numbers, read and written per record), {@code pending}
 * (a list a record only appends to) and {@code history} (the last keep_len released watches,
 * read and written only on release), so a record's cost does not grow with what its user has
 * buffered. One event-time timer per user at its earliest pending ts; a firing releases every
 * pending watch up to max(timer, watermark).
 *
 * <p>Settings come from the global job parameter {@value #PARAMS_KEY}: base64 of a JSON object
 * with the timeline params (TimelineParams) and {@code source_topic}.
 */
@FunctionHint(output = @DataTypeHint("ROW<kind INT, v BYTES, a STRING, b STRING, window_end BIGINT, shard INT>"))
public class UserTimelineFunction extends ProcessTableFunction<Row> {
  public static final String PARAMS_KEY = "plum.flink.timeline";
  public static final int EXAMPLE = 0;
  public static final int DEAD = 1;
  public static final int PAIR = 2;
  private static final byte[] EMPTY = new byte[0];

  private transient TimelineParams params;
  private transient PairWindows windows;
  private transient String sourceTopic;
  private transient double rMax;
  private transient WatchValidator validator;
  private transient Counter mIn;
  private transient Counter mAccepted;
  private transient Counter mOut;
  private transient Counter mSampled;
  private transient Counter mPairs;
  private transient Counter mUsers;
  private transient Map<String, Counter> mDead;
  private transient long pendingNow;
  private transient long lagMs;
  private transient long lagAt;

  @Override
  @SuppressWarnings("unchecked")
  public void open(FunctionContext context) throws Exception {
    Map<String, Object> m = JobParams.read(context);
    configure(
        TimelineParams.fromMap(m),
        PairWindows.fromMap((Map<String, Object>) m.get("pair_windows")),
        (String) m.get("source_topic"));
    MetricGroup g = context.getMetricGroup();
    mIn = g.counter("plum_flink_records_in_total");
    mAccepted = g.counter("plum_flink_records_accepted_total");
    mOut = g.counter("plum_flink_records_out_total");
    mSampled = g.counter("plum_flink_examples_sampled_total");
    mPairs = g.counter("plum_flink_pairs_total");
    mUsers = g.counter("plum_flink_state_users_created_total");
    g.gauge("plum_flink_pending_watches", () -> pendingNow);
    g.gauge("plum_flink_watermark_lag_ms", () -> lagMs);
    mDead = new HashMap<>();
    for (String reason : Reasons.WATCH_REASONS) {
      mDead.put(reason, g.addGroup("reason", reason).counter("plum_deadletter_total"));
    }
  }

  void configure(TimelineParams p, PairWindows w, String topic) {
    params = p;
    windows = w;
    sourceTopic = topic;
    rMax = p.maxReward();
    validator = new WatchValidator();
    lagAt = Long.MIN_VALUE;
  }

  public void eval(
      Context ctx,
      @StateHint Head head,
      @StateHint ListView<Watch> pending,
      @StateHint ListView<HistoryEntry> history,
      @ArgumentHint({ArgumentTrait.SET_SEMANTIC_TABLE, ArgumentTrait.REQUIRE_ON_TIME}) Row input)
      throws Exception {
    mIn.inc();
    String key = (String) input.getField(0);
    byte[] raw = (byte[]) input.getField(1);
    if (raw == null) {
      raw = EMPTY;
    }
    ValidWatch vw;
    try {
      vw = validator.decodeKeyed(key, raw, System.currentTimeMillis());
    } catch (Rejection r) {
      dead(input, r, raw);
      return;
    }
    Watch w = vw.watch;
    boolean newUser = head.maxTs == null && head.releasedMax == null;
    Long minBefore = head.minPending;
    if (!Timeline.accept(head, w, params.allowedLatenessMs)) {
      dead(
          input,
          new Rejection(
              Reasons.LATE,
              "ts=" + w.ts + " of user '" + key + "' is late: newest accepted ts " + head.maxTs
                  + ", allowed lateness " + params.allowedLatenessMs + " ms, released up to " + head.releasedMax),
          raw);
      return;
    }
    if (newUser) {
      mUsers.inc();
      head.userId = vw.userId;
    }
    mAccepted.inc();
    pendingNow++;
    pending.add(w);
    TimeContext<Long> time = ctx.timeContext(Long.class);
    if (minBefore == null || w.ts < minBefore) { // a new earliest pending ts: its timer
      time.registerOnTime(w.ts);
    }
    if (lagAt == Long.MIN_VALUE || w.ts > lagAt + 1000) { // sampled
      lagAt = w.ts;
      Long wm = time.currentWatermark();
      if (wm != null && wm > Long.MIN_VALUE / 2) {
        lagMs = w.ts - wm;
      }
    }
  }

  private void dead(Row input, Rejection r, byte[] raw) {
    Counter c = mDead.get(r.reason);
    if (c != null) {
      c.inc();
    }
    int partition = (Integer) input.getField(2);
    long offset = (Long) input.getField(3);
    byte[] json = JsonOut.deadLetter(sourceTopic, partition, offset, r, raw, System.currentTimeMillis());
    collect(Row.of(DEAD, json, null, null, null, null));
  }

  public void onTimer(
      OnTimerContext ctx, Head head, ListView<Watch> pending, ListView<HistoryEntry> history)
      throws Exception {
    if (head.minPending == null) { // expired by TTL, or nothing left
      return;
    }
    TimeContext<Long> time = ctx.timeContext(Long.class);
    long upto = time.time();
    Long wm = time.currentWatermark();
    if (wm != null && wm > upto) {
      upto = wm;
    }
    if (head.minPending > upto) { // a stale timer: its watches were released earlier
      return;
    }
    List<Watch> buffered = new ArrayList<>();
    for (Watch w : pending.get()) {
      buffered.add(w);
    }
    List<HistoryEntry> hist = new ArrayList<>();
    for (HistoryEntry h : history.get()) {
      hist.add(h);
    }
    List<Released> released = Timeline.release(head, buffered, hist, upto, params, rMax);
    pending.clear();
    if (!buffered.isEmpty()) {
      pending.addAll(buffered);
      time.registerOnTime(head.minPending);
    }
    history.clear();
    history.addAll(hist);
    pendingNow -= released.size();
    long pairs = 0;
    long examples = 0;
    for (Released r : released) {
      if (r.example != null) {
        collect(Row.of(EXAMPLE, JsonOut.example(r.watch, head.userId, r.example), null, null, null, null));
        examples++;
      }
      if (r.others.isEmpty()) {
        continue;
      }
      long[] ends = windows.ends(r.watch.ts);
      String video = r.watch.videoId;
      for (String other : r.others) {
        boolean first = PyStr.compare(video, other) < 0;
        String a = first ? video : other;
        String b = first ? other : video;
        Integer shard = windows.shard(a, b);
        for (long end : ends) {
          collect(Row.of(PAIR, null, a, b, end, shard));
        }
      }
      pairs += r.others.size();
    }
    mPairs.inc(pairs);
    mSampled.inc(examples);
    mOut.inc(examples);
  }
}

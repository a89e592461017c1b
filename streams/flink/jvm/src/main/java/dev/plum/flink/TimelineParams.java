package dev.plum.flink;

import java.io.Serializable;
import java.util.Map;

/** streams/flink/timeline.py TimelineParams with its RewardWeights, from the job's JSON. */
public final class TimelineParams implements Serializable {
  public final long allowedLatenessMs;
  public final long sessionGapMs;
  public final int historyLen;
  public final int pairPrevK;
  public final double wClick;
  public final double wRatio;
  public final double wSatisfaction;
  public final double ratioCap;
  public final double satisfactionDefault;
  public final String sampleSalt;

  public TimelineParams(
      long allowedLatenessMs,
      long sessionGapMs,
      int historyLen,
      int pairPrevK,
      double wClick,
      double wRatio,
      double wSatisfaction,
      double ratioCap,
      double satisfactionDefault,
      String sampleSalt) {
    if (allowedLatenessMs < 0 || sessionGapMs <= 0 || historyLen < 0 || pairPrevK < 0) {
      throw new IllegalArgumentException("bad timeline params");
    }
    this.allowedLatenessMs = allowedLatenessMs;
    this.sessionGapMs = sessionGapMs;
    this.historyLen = historyLen;
    this.pairPrevK = pairPrevK;
    this.wClick = wClick;
    this.wRatio = wRatio;
    this.wSatisfaction = wSatisfaction;
    this.ratioCap = ratioCap;
    this.satisfactionDefault = satisfactionDefault;
    this.sampleSalt = sampleSalt;
  }

  public double maxReward() {
    return wClick + wRatio * ratioCap + wSatisfaction;
  }

  public int keepLen() {
    return Math.max(historyLen, pairPrevK);
  }

  /** From a JSON object with the keys of the vectors' "params" (and the job's). */
  @SuppressWarnings("unchecked")
  public static TimelineParams fromJson(String json) {
    try {
      return fromMap((Map<String, Object>) PyJson.parse(json));
    } catch (PyJson.Error e) {
      throw new IllegalArgumentException("timeline params are not JSON: " + e.getMessage());
    }
  }

  public static TimelineParams fromMap(Map<String, Object> m) {
    return new TimelineParams(
        num(m, "allowed_lateness_ms").longValue(),
        num(m, "session_gap_ms").longValue(),
        num(m, "history_len").intValue(),
        num(m, "pair_prev_k").intValue(),
        num(m, "w_click").doubleValue(),
        num(m, "w_ratio").doubleValue(),
        num(m, "w_satisfaction").doubleValue(),
        num(m, "ratio_cap").doubleValue(),
        num(m, "satisfaction_default").doubleValue(),
        (String) m.getOrDefault("sample_salt", ""));
  }

  private static Number num(Map<String, Object> m, String key) {
    Object v = m.get(key);
    if (!(v instanceof Number)) {
      throw new IllegalArgumentException("timeline param " + key + " missing or not a number: " + v);
    }
    return (Number) v;
  }
}

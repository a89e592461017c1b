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
        JobParams.number(m, "allowed_lateness_ms", "timeline").longValue(),
        JobParams.number(m, "session_gap_ms", "timeline").longValue(),
        JobParams.number(m, "history_len", "timeline").intValue(),
        JobParams.number(m, "pair_prev_k", "timeline").intValue(),
        JobParams.number(m, "w_click", "timeline").doubleValue(),
        JobParams.number(m, "w_ratio", "timeline").doubleValue(),
        JobParams.number(m, "w_satisfaction", "timeline").doubleValue(),
        JobParams.number(m, "ratio_cap", "timeline").doubleValue(),
        JobParams.number(m, "satisfaction_default", "timeline").doubleValue(),
        (String) m.getOrDefault("sample_salt", ""));
  }
}

package dev.plum.flink;

import java.util.List;

/** One released watch: the videos it pairs with and, when sampled, its example. */
public final class Released {
  public final Watch watch;
  public final List<String> others;
  /** null: not sampled. */
  public final Example example;

  Released(Watch watch, List<String> others, Example example) {
    this.watch = watch;
    this.others = others;
    this.example = example;
  }

  /** A sampled watch's reward and history (oldest first). */
  public static final class Example {
    public final double reward;
    public final List<HistoryItem> history;

    Example(double reward, List<HistoryItem> history) {
      this.reward = reward;
      this.history = history;
    }
  }

  /** schema.HistoryItem. */
  public static final class HistoryItem {
    public final String videoId;
    public final double watchRatio;
    public final double watchTimeS;
    public final double hoursSince;

    HistoryItem(String videoId, double watchRatio, double watchTimeS, double hoursSince) {
      this.videoId = videoId;
      this.watchRatio = watchRatio;
      this.watchTimeS = watchTimeS;
      this.hoursSince = hoursSince;
    }
  }
}

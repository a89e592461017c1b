package dev.plum.flink;

/** A released watch as the history keeps it: (video, ratio, watch time, ts, session). */
public class HistoryEntry {
  public String videoId;
  public double ratio;
  public double watchTimeS;
  public long ts;
  public int session;

  public HistoryEntry() {}

  public HistoryEntry(String videoId, double ratio, double watchTimeS, long ts, int session) {
    this.videoId = videoId;
    this.ratio = ratio;
    this.watchTimeS = watchTimeS;
    this.ts = ts;
    this.session = session;
  }
}

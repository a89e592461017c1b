package dev.plum.flink;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;

/**
 * streams/flink/timeline.py: lateness on arrival, release in (ts, event_id) order (code-point
 * order, ties keep their arrival order), sessions, pairs, history and sampled examples. Pure
 * logic on a user's head, pending watches and history; nothing here knows about Flink.
 */
public final class Timeline {
  private static final double HOUR_MS = 3_600_000.0;

  /** (ts, event_id) with event ids in code-point order, as Python sorts the tuples. */
  public static final Comparator<Watch> RELEASE_ORDER =
      (a, b) -> a.ts != b.ts ? Long.compare(a.ts, b.ts) : PyStr.compare(a.eventId, b.eventId);

  private Timeline() {}

  /** timeline.accept: whether the watch is on time; if so head records it (else unchanged). */
  public static boolean accept(Head head, Watch ev, long allowedLatenessMs) {
    long ts = ev.ts;
    if (head.maxTs != null && ts < head.maxTs - allowedLatenessMs) {
      return false;
    }
    if (head.releasedMax != null && ts <= head.releasedMax) {
      return false;
    }
    if (head.maxTs == null || ts > head.maxTs) {
      head.maxTs = ts;
    }
    if (head.minPending == null || ts < head.minPending) {
      head.minPending = ts;
    }
    return true;
  }

  /**
   * timeline.release_ready: releases the pending watches with ts <= uptoTs. {@code pending} is
   * sorted in place (stable) and left holding only what is still pending; {@code history} is
   * updated in place (at most keep_len entries).
   */
  public static List<Released> release(
      Head head, List<Watch> pending, List<HistoryEntry> history, long uptoTs, TimelineParams p, double rMax) {
    pending.sort(RELEASE_ORDER);
    int n = 0;
    while (n < pending.size() && pending.get(n).ts <= uptoTs) {
      n++;
    }
    if (n == 0) {
      return List.of();
    }
    List<Released> out = new ArrayList<>(n);
    int k = p.pairPrevK;
    int hl = p.historyLen;
    int keep = p.keepLen();
    for (int i = 0; i < n; i++) {
      Watch ev = pending.get(i);
      long ts = ev.ts;
      String video = ev.videoId;
      if (head.lastTs == null || ts - head.lastTs > p.sessionGapMs) {
        head.session += 1;
      }
      int session = head.session;
      List<String> others = new ArrayList<>(k);
      if (k > 0) {
        for (int h = Math.max(0, history.size() - k); h < history.size(); h++) {
          HistoryEntry e = history.get(h);
          if (e.session == session && !e.videoId.equals(video)) {
            others.add(e.videoId);
          }
        }
      }
      double ratio = ev.videoDurationS > 0 ? ev.watchTimeS / ev.videoDurationS : 0.0;
      Released.Example example = null;
      if (ev.clicked) {
        double r = Reward.reward(true, ratio, ev.satisfaction, p);
        if (Reward.keepExample(ev.eventId, r, rMax, p.sampleSalt)) {
          List<Released.HistoryItem> hist = new ArrayList<>(Math.min(hl, history.size()));
          if (hl > 0) {
            for (int h = Math.max(0, history.size() - hl); h < history.size(); h++) {
              HistoryEntry e = history.get(h);
              hist.add(new Released.HistoryItem(e.videoId, e.ratio, e.watchTimeS, (double) (ts - e.ts) / HOUR_MS));
            }
          }
          example = new Released.Example(r, hist);
        }
      }
      out.add(new Released(ev, others, example));
      history.add(new HistoryEntry(video, ratio, ev.watchTimeS, ts, session));
      if (history.size() > keep) {
        history.subList(0, history.size() - keep).clear();
      }
      head.lastTs = ts;
      head.releasedMax = ts;
    }
    pending.subList(0, n).clear();
    head.minPending = pending.isEmpty() ? null : pending.get(0).ts;
    return out;
  }
}

package dev.plum.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import org.junit.jupiter.api.Test;

/** The Java operator's logic against the Python reference's decisions: 0 disagreements. */
class VectorsTest {
  private static final int SHOW = 10;

  @Test
  @SuppressWarnings("unchecked")
  void everyPairWindowMatchesThePythonReference() throws Exception {
    List<Map<String, Object>> vectors = Vectors.read("windows");
    List<String> disagreements = new ArrayList<>();
    for (Map<String, Object> vec : vectors) {
      PairWindows w = PairWindows.fromMap(Map.of(
          "window", vec.get("window"),
          "window_size_ms", vec.get("window_size_ms"),
          "window_slide_ms", vec.get("window_slide_ms"),
          "min_count", 1L,
          "shards", 1L));
      List<Long> got = new ArrayList<>();
      for (long end : w.ends(((Number) vec.get("ts")).longValue())) {
        got.add(end);
      }
      List<Long> want = new ArrayList<>();
      for (Object end : (List<Object>) vec.get("expect")) {
        want.add(((Number) end).longValue());
      }
      if (!got.equals(want)) {
        disagreements.add(vec.get("id") + ": java " + got + ", python " + want);
      }
    }
    assertTrue(vectors.size() >= 300, "only " + vectors.size() + " window vectors");
    assertEquals(
        List.of(), disagreements.subList(0, Math.min(SHOW, disagreements.size())),
        disagreements.size() + " of " + vectors.size() + " windows disagree");
  }

  @Test
  @SuppressWarnings("unchecked")
  void everyRecordDecisionMatchesThePythonReference() throws Exception {
    List<Map<String, Object>> vectors = Vectors.read("records");
    WatchValidator v = new WatchValidator();
    List<String> disagreements = new ArrayList<>();
    int generated = 0;
    for (Map<String, Object> vec : vectors) {
      String id = (String) vec.get("id");
      generated += id.startsWith("gen/") ? 1 : 0;
      Map<String, Object> expect = (Map<String, Object>) vec.get("expect");
      Object got = decide(v, (String) vec.get("key"), Vectors.raw(vec.get("raw_b64")), ((Number) vec.get("now_ms")).longValue());
      Object want = Boolean.TRUE.equals(expect.get("valid")) ? expect.get("watch") : expect.get("reason");
      if (!Objects.equals(got, want)) {
        disagreements.add(id + ": java " + got + ", python " + want);
      }
    }
    assertTrue(vectors.size() > 0, "no record vectors");
    assertTrue(generated >= 10_000, "only " + generated + " generated record vectors");
    assertEquals(
        List.of(), disagreements.subList(0, Math.min(SHOW, disagreements.size())),
        disagreements.size() + " of " + vectors.size() + " records disagree");
  }

  /** The reason, or the watch as the vectors write it. */
  static Object decide(WatchValidator v, String key, byte[] raw, long nowMs) {
    try {
      ValidWatch vw = v.decodeKeyed(key, raw, nowMs);
      Watch w = vw.watch;
      Map<String, Object> m = new LinkedHashMap<>();
      m.put("event_id", w.eventId);
      m.put("user_id", vw.userId);
      m.put("video_id", w.videoId);
      m.put("ts", w.ts);
      m.put("watch_time_s", w.watchTimeS);
      m.put("video_duration_s", w.videoDurationS);
      m.put("clicked", w.clicked);
      m.put("surface", vw.surface);
      m.put("context_video_id", w.contextVideoId);
      m.put("satisfaction", w.satisfaction);
      return m;
    } catch (Rejection r) {
      return r.reason;
    }
  }

  @Test
  @SuppressWarnings("unchecked")
  void everyTimelineMatchesThePythonReference() throws Exception {
    List<Map<String, Object>> vectors = Vectors.read("timelines");
    List<String> disagreements = new ArrayList<>();
    for (Map<String, Object> vec : vectors) {
      String id = (String) vec.get("id");
      TimelineParams p = TimelineParams.fromMap((Map<String, Object>) vec.get("params"));
      List<Object> steps = (List<Object>) vec.get("steps");
      List<Object> expect = (List<Object>) vec.get("expect");
      UserState user = new UserState(p);
      for (int s = 0; s < steps.size(); s++) {
        List<Object> got = user.step((Map<String, Object>) steps.get(s));
        if (!Objects.equals(got, expect.get(s))) {
          disagreements.add(id + " step " + s + ": java " + got + ", python " + expect.get(s));
          break;
        }
      }
    }
    assertTrue(vectors.size() > 0, "no timeline vectors");
    assertEquals(
        List.of(), disagreements.subList(0, Math.min(SHOW, disagreements.size())),
        disagreements.size() + " of " + vectors.size() + " timelines disagree");
  }

  /** One user's state driven as the vectors describe (record and watermark steps). */
  static final class UserState {
    final TimelineParams p;
    final WatchValidator validator = new WatchValidator();
    final Head head = new Head();
    final List<Watch> pending = new ArrayList<>();
    final List<HistoryEntry> history = new ArrayList<>();
    String user;

    UserState(TimelineParams p) {
      this.p = p;
    }

    @SuppressWarnings("unchecked")
    List<Object> step(Map<String, Object> step) throws PyJson.Error {
      List<Object> out = new ArrayList<>();
      if (step.containsKey("record")) {
        Map<String, Object> rec = (Map<String, Object>) step.get("record");
        try {
          ValidWatch vw =
              validator.decodeKeyed(
                  (String) rec.get("key"), Vectors.raw(rec.get("raw_b64")), ((Number) rec.get("now_ms")).longValue());
          if (!Timeline.accept(head, vw.watch, p.allowedLatenessMs)) {
            out.add(Map.of("dead", Reasons.LATE));
          } else {
            user = vw.userId;
            pending.add(vw.watch);
          }
        } catch (Rejection r) {
          out.add(Map.of("dead", r.reason));
        }
        return out;
      }
      long w = ((Number) step.get("watermark")).longValue();
      for (Released r : Timeline.release(head, pending, history, w, p, p.maxReward())) {
        Map<String, Object> rel = new LinkedHashMap<>();
        rel.put("event_id", r.watch.eventId);
        rel.put("video_id", r.watch.videoId);
        rel.put("ts", r.watch.ts);
        rel.put("others", new ArrayList<Object>(r.others));
        rel.put(
            "example",
            r.example == null
                ? null
                : PyJson.parse(new String(JsonOut.example(r.watch, user, r.example), java.nio.charset.StandardCharsets.UTF_8)));
        out.add(Map.of("released", rel));
      }
      return out;
    }
  }
}

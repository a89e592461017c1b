package dev.plum.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** A few cases written out by hand (the shared vectors hold the thousands). */
class HandWrittenTest {
  private static final long NOW = 1_764_000_000_000L;
  private static final WatchValidator V = new WatchValidator();

  private static Object decide(String json) {
    return VectorsTest.decide(V, "u1", json.getBytes(StandardCharsets.UTF_8), NOW);
  }

  private static String watch(String extra) {
    return "{\"event_id\":\"e1\",\"user_id\":\"u1\",\"video_id\":\"v1\",\"ts\":" + NOW
        + ",\"watch_time_s\":10.5,\"video_duration_s\":20,\"clicked\":true,\"surface\":\"home\"" + extra + "}";
  }

  @Test
  void validWatchDecodesWithPythonNumberRules() {
    Object got = decide(watch(",\"schema\":1.0,\"satisfaction\":1"));
    assertTrue(got instanceof Map, String.valueOf(got));
    Map<?, ?> m = (Map<?, ?>) got;
    assertEquals(20.0, m.get("video_duration_s"));
    assertEquals(1.0, m.get("satisfaction"));
    assertNull(m.get("context_video_id"));
  }

  @Test
  void reasonsFollowTheReferenceOrder() {
    assertEquals("not_json", decide("{\"a\":1} x"));
    assertEquals("not_json", VectorsTest.decide(V, "u1", new byte[] {(byte) 0xEF, (byte) 0xBB, (byte) 0xBF, '{', '}'}, NOW));
    assertEquals("not_json", decide("{\"a\":\"\\ud800\"}"));
    assertEquals("not_json", VectorsTest.decide(V, "", new byte[0], NOW));
    assertEquals("not_object", decide("[1]"));
    assertEquals("unknown_schema", decide(watch(",\"schema\":2")));
    assertEquals("unknown_schema", decide(watch(",\"schema\":null")));
    assertEquals("missing_field", decide("{\"event_id\":null}"));
    assertEquals("wrong_type", decide("{\"event_id\":true}"));
    assertEquals("empty_id", decide("{\"event_id\":\"\\u00a0\\u0085 \"}"));
    assertFalse("empty_id".equals(decide("{\"event_id\":\"\\u200b\"}")));
    assertEquals("wrong_type", decide(watch(",\"satisfaction\":NaN")));
    assertEquals("wrong_type", decide(watch(",\"satisfaction\":1" + "0".repeat(400))));
    assertEquals("bad_satisfaction", decide(watch(",\"satisfaction\":1.5")));
    assertEquals("future_timestamp", decide(watch("").replace("\"ts\":" + NOW, "\"ts\":" + (NOW + 300_001))));
    assertEquals("wrong_type", decide(watch("").replace("\"ts\":" + NOW, "\"ts\":1.0")));
    assertEquals("ambiguous_user_id", VectorsTest.decide(V, "u2", watch("").getBytes(StandardCharsets.UTF_8), NOW));
  }

  @Test
  void blake2bCoinMatchesPythonsHashlib() {
    // values from streams.flink.reward.unit_hash
    assertEquals(0.20192254932748266, Reward.unitHash("e1", "test"));
    assertEquals(0.8466046359861451, Reward.unitHash("abc", ""));
    assertEquals(0.9764962560129912, Reward.unitHash("\u00e9\uD83D\uDE00", "salt"));
  }

  @Test
  void releaseOrderIsCodePointOrderAndSessionGapIsStrict() {
    TimelineParams p = new TimelineParams(10, 100, 5, 3, 1, 1, 0.5, 1, 0.5, "");
    Head head = new Head();
    List<Watch> pending = new ArrayList<>();
    List<HistoryEntry> history = new ArrayList<>();
    // U+FF61 sorts before U+1F600 by code point, after it by UTF-16 unit
    Watch a = new Watch(1000, "\uD83D\uDE00", "va", 1, 10, false, null, null);
    Watch b = new Watch(1000, "\uFF61", "vb", 1, 10, false, null, null);
    Watch c = new Watch(1100, "c", "vc", 1, 10, false, null, null); // exactly the gap: same session
    Watch d = new Watch(1201, "d", "vd", 1, 10, false, null, null); // gap + 1: a new session
    for (Watch w : List.of(a, b, c, d)) {
      assertTrue(Timeline.accept(head, w, p.allowedLatenessMs));
      pending.add(w);
    }
    List<Released> out = Timeline.release(head, pending, history, 2000, p, p.maxReward());
    assertEquals(List.of("vb", "va", "vc", "vd"), out.stream().map(r -> r.watch.videoId).toList());
    assertEquals(List.of("vb", "va"), out.get(2).others);
    assertEquals(List.of(), out.get(3).others);
    // exactly allowed_lateness behind the newest accepted ts is on time; one more ms is late
    Head h = new Head();
    assertTrue(Timeline.accept(h, new Watch(5000, "x", "v", 1, 10, false, null, null), 10));
    assertTrue(Timeline.accept(h, new Watch(4990, "y", "v", 1, 10, false, null, null), 10));
    assertFalse(Timeline.accept(h, new Watch(4989, "z", "v", 1, 10, false, null, null), 10));
  }

  @Test
  void theSqlProbesReadTsAndUserIdWithTheReferenceRules() {
    byte[] w = watch("").getBytes(StandardCharsets.UTF_8);
    assertEquals(NOW, new WatchTs().eval(w));
    assertEquals("u1", new WatchKey().eval(w));
    byte[] dup = "{\"user_id\":\"a\",\"ts\":1.0,\"user_id\":\"b\"}".getBytes(StandardCharsets.UTF_8);
    assertNull(new WatchTs().eval(dup)); // a float ts is not an integer ts
    assertEquals("b", new WatchKey().eval(dup)); // the last duplicate wins, as in Python
    byte[] bad = "{\"user_id\":\"a\",".getBytes(StandardCharsets.UTF_8);
    assertEquals("", new WatchKey().eval(bad));
    assertNull(new WatchTs().eval(bad));
    assertEquals("", new WatchKey().eval(null));
  }

  @Test
  void pairsCountInTheWindowsOfTheirTsUnderAStableShard() {
    PairWindows tumbling = new PairWindows(true, 30_000, 10_000, 2, 128);
    assertEquals(List.of(30_000L), boxed(tumbling.ends(0)));
    assertEquals(List.of(30_000L), boxed(tumbling.ends(29_999)));
    assertEquals(List.of(60_000L), boxed(tumbling.ends(30_000))); // the end is exclusive
    PairWindows sliding = new PairWindows(false, 30_000, 10_000, 2, 128);
    assertEquals(List.of(30_000L, 40_000L, 50_000L), boxed(sliding.ends(29_999)));
    assertEquals(List.of(10_000L, 20_000L, 30_000L), boxed(sliding.ends(0)));
    int shard = tumbling.shard("v1", "v2");
    assertTrue(shard >= 0 && shard < 128);
    assertEquals(shard, new PairWindows(false, 60_000, 20_000, 5, 128).shard("v1", "v2"));
    // a pair's map key cannot be another pair's
    assertFalse(PairCountFunction.pairKey("ab", "c").equals(PairCountFunction.pairKey("a", "bc")));
  }

  private static List<Long> boxed(long[] values) {
    List<Long> out = new ArrayList<>();
    for (long v : values) {
      out.add(v);
    }
    return out;
  }
}

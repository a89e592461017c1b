package dev.plum.flink;

import java.nio.charset.StandardCharsets;
import org.bouncycastle.crypto.digests.Blake2bDigest;

/** streams/flink/reward.py: the reward of a watch and the deterministic sampling coin. */
public final class Reward {
  private static final double TWO_64 = 18446744073709551616.0;

  private Reward() {}

  /** reward(clicked, watch_ratio, satisfaction, w), with Python's min/max on floats. */
  public static double reward(boolean clicked, double watchRatio, Double satisfaction, TimelineParams w) {
    double sat = satisfaction == null ? w.satisfactionDefault : satisfaction;
    double ratio = pyMin(pyMax(watchRatio, 0.0), w.ratioCap);
    return w.wClick * (clicked ? 1.0 : 0.0) + w.wRatio * ratio + w.wSatisfaction * sat;
  }

  /** Python's max(a, b): the first argument unless the second is greater. */
  static double pyMax(double a, double b) {
    return b > a ? b : a;
  }

  /** Python's min(a, b): the first argument unless the second is smaller. */
  static double pyMin(double a, double b) {
    return b < a ? b : a;
  }

  /** blake2b(salt + event_id, digest_size=8) as a big-endian uint64 / 2**64. */
  public static double unitHash(String eventId, String salt) {
    byte[] data = (salt + eventId).getBytes(StandardCharsets.UTF_8);
    Blake2bDigest d = new Blake2bDigest(64);
    d.update(data, 0, data.length);
    byte[] out = new byte[8];
    d.doFinal(out, 0);
    long x = 0;
    for (byte b : out) {
      x = (x << 8) | (b & 0xFF);
    }
    return unsignedToDouble(x) / TWO_64;
  }

  /** The uint64 in x as the nearest double (ties to even), as Python's float(int) rounds. */
  static double unsignedToDouble(long x) {
    if (x >= 0) {
      return (double) x;
    }
    // halve keeping a sticky bit so the one rounding step stays correct
    return ((double) ((x >>> 1) | (x & 1))) * 2.0;
  }

  public static double keepProbability(double r, double rMax) {
    return pyMin(1.0, pyMax(0.0, r / rMax));
  }

  public static boolean keepExample(String eventId, double r, double rMax, String salt) {
    return unitHash(eventId, salt) < keepProbability(r, rMax);
  }
}

package dev.plum.flink;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.zip.GZIPInputStream;

/** Reads the shared conformance vectors (tests/vectors/flink, written by the Python generator). */
final class Vectors {
  private Vectors() {}

  static Path dir() {
    String prop = System.getProperty("plum.vectors.dir");
    return prop != null ? Paths.get(prop) : Paths.get("../../../tests/vectors/flink");
  }

  /** Every line of NAME.jsonl or NAME.jsonl.gz as a parsed object; fails when neither exists. */
  @SuppressWarnings("unchecked")
  static List<Map<String, Object>> read(String name) throws IOException, PyJson.Error {
    Path plain = dir().resolve(name + ".jsonl");
    Path gz = dir().resolve(name + ".jsonl.gz");
    InputStream in;
    if (Files.exists(plain)) {
      in = Files.newInputStream(plain);
    } else if (Files.exists(gz)) {
      in = new GZIPInputStream(Files.newInputStream(gz), 1 << 16);
    } else {
      throw new IOException("no " + plain + "[.gz]: the vectors are written by python -m tests.vectors.flink_vectors");
    }
    List<Map<String, Object>> out = new ArrayList<>();
    try (BufferedReader r = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8))) {
      String line;
      while ((line = r.readLine()) != null) {
        if (!line.isBlank()) {
          out.add((Map<String, Object>) PyJson.parse(line, true));
        }
      }
    }
    return out;
  }

  /** raw_b64 -> bytes; null (a record with no value) reads as empty bytes, as in the job. */
  static byte[] raw(Object b64) {
    return b64 == null ? new byte[0] : Base64.getDecoder().decode((String) b64);
  }
}

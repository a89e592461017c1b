package dev.plum.flink;

import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * JSON parsing with exactly the rules of Python's {@code json.loads} on strictly decoded UTF-8
 * (the reference, streams/contracts/schema.py; decisions in tests/vectors/flink and
 * /tmp/plum/vectors-format.md): NaN, Infinity and -Infinity are numbers; a number with no '.',
 * 'e' or 'E' is an integer of any size ({@link Long} when it fits, else {@link BigInteger});
 * other numbers are {@link Double} (1e400 is infinity); duplicate keys: the last wins; only
 * " \t\n\r" is whitespace; control characters inside strings are errors; \\uXXXX escapes may
 * form surrogate pairs; an unpaired surrogate (escaped or not), nesting deeper than 512
 * levels and integers of more than 4300 digits are errors. JSON null is Java null.
 */
public final class PyJson {
  /** Not valid JSON (or not valid UTF-8). */
  public static final class Error extends Exception {
    public Error(String message) {
      super(message, null, false, false);
    }
  }

  private static final int MAX_DEPTH = 512;
  /** Longer integer literals are not JSON (Python's int_max_str_digits). */
  private static final int MAX_INT_DIGITS = 4300;

  private final String s;
  private final boolean loneSurrogates;
  private int i;
  private int depth;

  private PyJson(String s, boolean loneSurrogates) {
    this.s = s;
    this.loneSurrogates = loneSurrogates;
  }

  /** Strict UTF-8 (no replacement) then {@link #parse(String)}. */
  public static Object parse(byte[] raw) throws Error {
    return parse(decodeUtf8(raw));
  }

  public static String decodeUtf8(byte[] raw) throws Error {
    CharsetDecoder dec =
        StandardCharsets.UTF_8
            .newDecoder()
            .onMalformedInput(CodingErrorAction.REPORT)
            .onUnmappableCharacter(CodingErrorAction.REPORT);
    try {
      CharBuffer chars = dec.decode(ByteBuffer.wrap(raw));
      return chars.toString();
    } catch (CharacterCodingException e) {
      throw new Error("not UTF-8: " + e);
    }
  }

  public static Object parse(String text) throws Error {
    return parse(text, false);
  }

  /** {@code loneSurrogates}: keep unpaired surrogate escapes as Python's json.loads does
   * (for reading JSON that Python wrote, e.g. the vectors), instead of refusing them. */
  public static Object parse(String text, boolean loneSurrogates) throws Error {
    PyJson p = new PyJson(text, loneSurrogates);
    p.skipWs();
    Object v = p.value();
    p.skipWs();
    if (p.i != text.length()) {
      throw p.err("Extra data");
    }
    return v;
  }

  private Error err(String what) {
    return new Error(what + " at char " + i);
  }

  private void skipWs() {
    final String t = s;
    int n = t.length();
    while (i < n) {
      char c = t.charAt(i);
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        i++;
      } else {
        break;
      }
    }
  }

  private Object value() throws Error {
    if (i >= s.length()) {
      throw err("Expecting value");
    }
    char c = s.charAt(i);
    switch (c) {
      case '{':
        return object();
      case '[':
        return array();
      case '"':
        i++;
        return string();
      case 'n':
        return literal("null", null);
      case 't':
        return literal("true", Boolean.TRUE);
      case 'f':
        return literal("false", Boolean.FALSE);
      case 'N':
        return literal("NaN", Double.NaN);
      case 'I':
        return literal("Infinity", Double.POSITIVE_INFINITY);
      case '-':
        if (s.startsWith("-Infinity", i)) {
          i += 9;
          return Double.NEGATIVE_INFINITY;
        }
        return number();
      default:
        if (c >= '0' && c <= '9') {
          return number();
        }
        throw err("Expecting value");
    }
  }

  private Object literal(String word, Object v) throws Error {
    if (!s.startsWith(word, i)) {
      throw err("Expecting value");
    }
    i += word.length();
    return v;
  }

  private Object number() throws Error {
    final int start = i;
    final int n = s.length();
    if (s.charAt(i) == '-') {
      i++;
    }
    if (i >= n) {
      throw err("Expecting value");
    }
    char c = s.charAt(i);
    if (c == '0') {
      i++;
    } else if (c >= '1' && c <= '9') {
      while (i < n && isDigit(s.charAt(i))) {
        i++;
      }
    } else {
      i = start;
      throw err("Expecting value");
    }
    boolean isFloat = false;
    if (i + 1 < n && s.charAt(i) == '.' && isDigit(s.charAt(i + 1))) {
      isFloat = true;
      i += 2;
      while (i < n && isDigit(s.charAt(i))) {
        i++;
      }
    }
    if (i < n && (s.charAt(i) == 'e' || s.charAt(i) == 'E')) {
      int j = i + 1;
      if (j < n && (s.charAt(j) == '+' || s.charAt(j) == '-')) {
        j++;
      }
      if (j < n && isDigit(s.charAt(j))) {
        while (j < n && isDigit(s.charAt(j))) {
          j++;
        }
        isFloat = true;
        i = j;
      }
    }
    String text = s.substring(start, i);
    if (isFloat) {
      return Double.parseDouble(text);
    }
    if (text.length() - (text.charAt(0) == '-' ? 1 : 0) > MAX_INT_DIGITS) {
      throw err("an integer of more than " + MAX_INT_DIGITS + " digits");
    }
    if (text.length() <= 18) {
      return Long.parseLong(text);
    }
    BigInteger big = new BigInteger(text);
    return big.bitLength() < 64 ? (Object) big.longValue() : big;
  }

  private static boolean isDigit(char c) {
    return c >= '0' && c <= '9';
  }

  private String string() throws Error {
    final String t = s;
    final int n = t.length();
    int start = i;
    // fast path: no escapes
    while (i < n) {
      char c = t.charAt(i);
      if (c == '"') {
        String out = t.substring(start, i);
        i++;
        return out;
      }
      if (c == '\\') {
        break;
      }
      if (c < 0x20) {
        throw err("Invalid control character");
      }
      i++;
    }
    StringBuilder sb = new StringBuilder(i - start + 16);
    sb.append(t, start, i);
    while (true) {
      if (i >= n) {
        throw err("Unterminated string");
      }
      char c = t.charAt(i++);
      if (c == '"') {
        return sb.toString();
      }
      if (c < 0x20) {
        i--;
        throw err("Invalid control character");
      }
      if (c != '\\') {
        sb.append(c);
        continue;
      }
      if (i >= n) {
        throw err("Unterminated string");
      }
      char e = t.charAt(i++);
      switch (e) {
        case '"':
          sb.append('"');
          break;
        case '\\':
          sb.append('\\');
          break;
        case '/':
          sb.append('/');
          break;
        case 'b':
          sb.append('\b');
          break;
        case 'f':
          sb.append('\f');
          break;
        case 'n':
          sb.append('\n');
          break;
        case 'r':
          sb.append('\r');
          break;
        case 't':
          sb.append('\t');
          break;
        case 'u':
          {
            int u = hex4();
            if (u >= 0xD800 && u <= 0xDBFF && i + 1 < n && t.charAt(i) == '\\' && t.charAt(i + 1) == 'u') {
              i += 2;
              int u2 = hex4();
              if (u2 >= 0xDC00 && u2 <= 0xDFFF) {
                sb.append((char) u).append((char) u2);
              } else if (loneSurrogates) {
                sb.append((char) u);
                i -= 6;
              } else {
                throw err("a string holds an unpaired surrogate escape");
              }
            } else if (u >= 0xD800 && u <= 0xDFFF && loneSurrogates) {
              sb.append((char) u);
            } else if (u >= 0xD800 && u <= 0xDFFF) {
              throw err("a string holds an unpaired surrogate escape");
            } else {
              sb.append((char) u);
            }
            break;
          }
        default:
          throw err("Invalid \\escape");
      }
    }
  }

  private int hex4() throws Error {
    if (i + 4 > s.length()) {
      throw err("Invalid \\uXXXX escape");
    }
    int v = 0;
    for (int k = 0; k < 4; k++) {
      char c = s.charAt(i + k);
      int d;
      if (c >= '0' && c <= '9') {
        d = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10;
      } else {
        throw err("Invalid \\uXXXX escape");
      }
      v = (v << 4) | d;
    }
    i += 4;
    return v;
  }

  private Map<String, Object> object() throws Error {
    if (++depth > MAX_DEPTH) {
      throw err("nested too deeply");
    }
    i++; // '{'
    Map<String, Object> out = new HashMap<>();
    skipWs();
    if (i < s.length() && s.charAt(i) == '}') {
      i++;
      depth--;
      return out;
    }
    while (true) {
      if (i >= s.length() || s.charAt(i) != '"') {
        throw err("Expecting property name enclosed in double quotes");
      }
      i++;
      String key = string();
      skipWs();
      if (i >= s.length() || s.charAt(i) != ':') {
        throw err("Expecting ':' delimiter");
      }
      i++;
      skipWs();
      Object v = value();
      out.put(key, v);
      skipWs();
      if (i < s.length() && s.charAt(i) == '}') {
        i++;
        depth--;
        return out;
      }
      if (i >= s.length() || s.charAt(i) != ',') {
        throw err("Expecting ',' delimiter");
      }
      i++;
      skipWs();
    }
  }

  private List<Object> array() throws Error {
    if (++depth > MAX_DEPTH) {
      throw err("nested too deeply");
    }
    i++; // '['
    List<Object> out = new ArrayList<>();
    skipWs();
    if (i < s.length() && s.charAt(i) == ']') {
      i++;
      depth--;
      return out;
    }
    while (true) {
      out.add(value());
      skipWs();
      if (i < s.length() && s.charAt(i) == ']') {
        i++;
        depth--;
        return out;
      }
      if (i >= s.length() || s.charAt(i) != ',') {
        throw err("Expecting ',' delimiter");
      }
      i++;
      skipWs();
    }
  }
}

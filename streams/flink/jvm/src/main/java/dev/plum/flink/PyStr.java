package dev.plum.flink;

/** Python str semantics the reference relies on. */
public final class PyStr {
  private PyStr() {}

  /** Python's {@code str.isspace()} for one UTF-16 unit (every such character is in the BMP). */
  public static boolean isSpace(char c) {
    if (c <= 0x20) {
      return c == 0x20 || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
    }
    if (c < 0x85) {
      return false;
    }
    return c == 0x85
        || c == 0xA0
        || c == 0x1680
        || (c >= 0x2000 && c <= 0x200A)
        || c == 0x2028
        || c == 0x2029
        || c == 0x202F
        || c == 0x205F
        || c == 0x3000;
  }

  /** {@code not s.strip()}: empty or only Python whitespace. */
  public static boolean isBlank(String s) {
    for (int i = 0, n = s.length(); i < n; i++) {
      if (!isSpace(s.charAt(i))) {
        return false;
      }
    }
    return true;
  }

  /** Python's {@code a < b} on str: code point order (Java's compareTo is UTF-16 unit order). */
  public static int compare(String a, String b) {
    int n = Math.min(a.length(), b.length());
    for (int i = 0; i < n; i++) {
      char x = a.charAt(i);
      char y = b.charAt(i);
      if (x != y) {
        if (x >= 0xD800 && y >= 0xD800) { // surrogates sort above U+E000..U+FFFF
          x = fix(x);
          y = fix(y);
        }
        return x - y;
      }
    }
    return a.length() - b.length();
  }

  private static char fix(char c) {
    return (char) (c >= 0xE000 ? c - 0x800 : c + 0x2000);
  }
}

package dev.plum.flink;

import java.util.List;
import java.util.Map;

/** Short Python-like renderings of values for error messages (not compared by the vectors). */
final class PyRepr {
  private PyRepr() {}

  static String typeName(Object v) {
    if (v == null) {
      return "NoneType";
    }
    if (v instanceof String) {
      return "str";
    }
    if (v instanceof Boolean) {
      return "bool";
    }
    if (v instanceof Double) {
      return "float";
    }
    if (v instanceof Map) {
      return "dict";
    }
    if (v instanceof List) {
      return "list";
    }
    return "int";
  }

  static String str(String s) {
    return "'" + s + "'";
  }

  static String repr(Object v) {
    if (v == null) {
      return "None";
    }
    if (v instanceof String) {
      return str((String) v);
    }
    if (v instanceof Boolean) {
      return (Boolean) v ? "True" : "False";
    }
    if (v instanceof Double) {
      double d = (Double) v;
      return Double.isNaN(d) ? "nan" : Double.isInfinite(d) ? (d > 0 ? "inf" : "-inf") : Double.toString(d);
    }
    String s = String.valueOf(v);
    return s.length() > 200 ? s.substring(0, 200) + "..." : s;
  }
}

package dev.plum.flink;

import org.apache.flink.table.functions.ScalarFunction;

/** SQL {@code plum_watch_key(raw BYTES) -> STRING}: the record's string `user_id`, else ''. */
public class WatchKey extends ScalarFunction {
  public String eval(byte[] raw) {
    return WatchProbe.userKey(raw);
  }
}

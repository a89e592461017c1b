package dev.plum.flink;

import org.apache.flink.table.functions.ScalarFunction;

/** SQL {@code plum_watch_ts(raw BYTES) -> BIGINT}: the record's integer `ts`, else NULL. */
public class WatchTs extends ScalarFunction {
  public Long eval(byte[] raw) {
    return WatchProbe.ts(raw);
  }
}

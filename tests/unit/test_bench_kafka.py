"""`bench kafka` reads ConsumerPerformance's whole-run and fetch-only rates."""

from bench.kafka import parse_consumer_performance

# The last lines of a real ConsumerPerformance run (Kafka 4.1.2, this repository's bench).
OUTPUT = """\
WARNING: some log line the tool may print first
start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, \
rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
2026-11-30 13:42:53:333, 2026-11-30 13:42:54:695, 85.8307, 63.0181, 300000, 220264.3172, \
476, 886, 96.8744, 338600.4515
"""


def test_whole_run_and_fetch_only_rates_are_both_read():
    got = parse_consumer_performance(OUTPUT)
    assert got["records"] == 300_000
    assert got["records_per_s"] == 220_264  # the run, the group's rebalance included
    assert got["fetch_records_per_s"] == 338_600  # the run minus the 476 ms rebalance
    assert got["rebalance_ms"] == 476
    assert got["mb_per_s"] == round(63.0181 * 1.048576, 2)

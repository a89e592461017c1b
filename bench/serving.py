"""`plum bench serving`: retrieval latency and QPS of `plum serve` under a real HTTP load
generator (wrk, from Debian's packages: `apt-get install wrk`, or `make bench-tools`).

What runs: the real server process (`plum serve`, exactly as deployed: uvicorn, the
dynamic batcher, the jitted trie-constrained beam search) on a model repository, twice:

    unbatched   batch_sizes = [1]: every request is searched alone (the baseline)
    batched     batch_sizes = --batch-sizes (default 1,4,16): requests that arrive
                within max_wait_ms share one search, padded to a compiled shape

and for each beam width wrk opens `--connections` keep-alive connections (each one a
client sending its next request when the last is answered: closed-loop) for
`--duration` seconds, POSTing /v1/retrieve bodies that cycle through `--bodies`
distinct requests (histories of 5-30 random videos of the index). wrk runs in its own
process on the same 2 cores as the server, so its own CPU use is part of what is
measured (stated in the result).

Before any ratio is reported the two servers must agree: the same fixed probe requests
answered by both give the same items in the same order with scores within 1e-3
(batching pads with dummy rows and must not change any real row's result).

The model: `--model-repo DIR` (e.g. state/serving/models after `make demo`: the newest
version is served), else a demo-size model written for the run: configs/demo.toml
[trainer_model] (d_model 256, 4 layers) with random weights, the demo vocabulary size
and `--items` videos with random SIDs in the demo's 256/128/64 (+ disambiguation)
space. Latency does not depend on the weights' values, only on the shapes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import write_result
from bench.mfu import matmul_flops_per_s, retrieve_flops
from plum.config import REPO_ROOT
from trainer.config import ModelConfig
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

# Each wrk thread counts its answers by status class in `response` (globals, so `done`,
# in wrk's main Lua state, can read them with thread:get); `done` prints one JSON line.
WRK_SCRIPT = """
local path = os.getenv("PLUM_BENCH_BODIES")
local bodies = {}
for line in io.lines(path) do bodies[#bodies + 1] = line end
local i = math.random(#bodies)
local headers = {["Content-Type"] = "application/json"}
local threads = {}
s2xx, s4xx, s5xx, sother = 0, 0, 0, 0
setup = function(thread) threads[#threads + 1] = thread end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/retrieve", headers, bodies[i])
end
response = function(status, headers, body)
  if status >= 200 and status < 300 then s2xx = s2xx + 1
  elseif status >= 400 and status < 500 then s4xx = s4xx + 1
  elseif status >= 500 and status < 600 then s5xx = s5xx + 1
  else sother = sother + 1 end
end
done = function(summary, latency, requests)
  local c = {s2xx = 0, s4xx = 0, s5xx = 0, sother = 0}
  for _, t in ipairs(threads) do
    for name, _ in pairs(c) do c[name] = c[name] + t:get(name) end
  end
  io.write(string.format(
    "PLUM_WRK {\\"requests\\": %d, \\"duration_us\\": %d, \\"status_errors\\": %d, " ..
    "\\"connect_errors\\": %d, \\"read_errors\\": %d, \\"write_errors\\": %d, " ..
    "\\"timeouts\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, " ..
    "\\"max_us\\": %d, \\"mean_us\\": %.1f, \\"status_2xx\\": %d, \\"status_4xx\\": %d, " ..
    "\\"status_5xx\\": %d, \\"status_other\\": %d}\\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, c.s2xx, c.s4xx, c.s5xx, c.sother))
end
"""


DEMO_CONFIG = REPO_ROOT / "configs" / "demo.toml"


def demo_size_repository(
    directory: Path, items: int, seed: int = 0, config: Path = DEMO_CONFIG
) -> Path:
    """A model repository holding one version with random weights in `config`'s shapes:
    demo-size by default (see module doc); configs/test.toml gives the tiny model."""
    import jax

    from serving.artifact import ModelRepository, snapshot_of
    from streams.contracts.sid import load_sid_config
    from streams.simulator.config import load_config
    from streams.simulator.stream import generate
    from tokenizer.config import load_tokenizer_config
    from trainer.config import load_model_config, load_vocab_config
    from trainer.data import load_data_config
    from trainer.model import init_params
    from trainer.vocab import build_vocab

    sim = load_config(config, bad_fraction=0.0, out_of_order_fraction=0.0)
    texts = []
    for rec in generate(sim):
        if rec.topic.endswith("uploads.v1"):
            event = json.loads(rec.value)
            texts.append(f"{event['title']} {event['description']}")
            if len(texts) >= 3000:
                break
    level_sizes = load_tokenizer_config(config).level_sizes
    disamb = load_sid_config(config).disambiguation_size
    vocab = build_vocab(texts, load_vocab_config(config), level_sizes)
    vocab_dir = directory / "vocab-src"
    vocab.save(vocab_dir)
    model_cfg = load_model_config(config).with_vocab(vocab.size)
    params = jax.device_get(init_params(model_cfg, jax.random.PRNGKey(seed)))
    rng = random.Random(seed)
    sids: set[tuple[int, ...]] = set()
    while len(sids) < items:
        sids.add((*(rng.randrange(s) for s in level_sizes), rng.randrange(min(disamb, 4))))
    rows = [(f"video-{i:06d}", sid, 0) for i, sid in enumerate(sorted(sids))]
    repo = directory / "models"
    ModelRepository(repo).write(
        params,
        vocab_dir,
        snapshot_of("bench-sid-v1", len(rows), rows),
        step=0,
        model_config=model_cfg.to_dict(),
        max_prompt_len=load_data_config(config).max_prompt_len,
        newest_event_ts_ms=0,
        source={"kind": f"bench: random weights, {config.name} shapes"},
    )
    return repo


def request_bodies(video_ids: list[str], n: int, k: int, beam: int, seed: int) -> list[str]:
    """`n` distinct /v1/retrieve bodies: histories of 5-30 random videos, the last as context."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        history = rng.sample(video_ids, rng.randint(5, min(30, len(video_ids))))
        body = {
            "history": [
                {"video_id": v, "watch_ratio": round(rng.random(), 3), "watch_time_s": 30.0}
                for v in history
            ],
            "context_video_id": history[-1],
            "k": k,
            "beam": beam,
        }
        bodies.append(json.dumps(body))
    return bodies


class ServerProcess:
    """`plum serve` as a child process on a free port; SIGTERM on exit. Its settings are
    `config`'s [serving] (demo.toml by default) with `env_overrides` on top."""

    def __init__(
        self,
        repo: Path,
        env_overrides: dict[str, str],
        log_path: Path,
        config: Path = DEMO_CONFIG,
    ) -> None:
        self.port_file = log_path.with_suffix(".port")
        self.port_file.unlink(missing_ok=True)
        env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            PLUM_SERVING__PORT="0",
            PLUM_SERVING__PORT_FILE=str(self.port_file),
            PLUM_SERVING__METRICS_PORT="-1",
            PLUM_SERVING__MODEL_REPO=str(repo),
            **env_overrides,
        )
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "plum.cli",
                "serve",
                "--config",
                str(config),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.url = ""

    def wait_ready(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plum serve exited {self.proc.returncode}; see {self.log_path}")
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.url = f"http://127.0.0.1:{int(self.port_file.read_text())}"
                try:
                    if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                        return self.url
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        raise TimeoutError(f"plum serve not ready after {timeout_s} s; see {self.log_path}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def run_wrk(url: str, bodies_path: Path, duration_s: int, connections: int, threads: int) -> dict:
    """One wrk run; its Lua `done` hook prints the summary as one JSON line."""
    script = bodies_path.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=dict(os.environ, PLUM_BENCH_BODIES=str(bodies_path)),
        timeout=duration_s + 60,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PLUM_WRK ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("PLUM_WRK "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors"))
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 2),
        "qps": round(raw["requests"] / seconds, 2),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": round(raw["mean_us"] / 1000, 3),
        "errors": errors,
        "socket_errors": sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors")),
        "timeouts": raw["timeouts"],
        "status_classes": {
            c: raw[f"status_{c}"] for c in ("2xx", "4xx", "5xx", "other") if raw[f"status_{c}"]
        },
    }


def probe(url: str, bodies: list[str]) -> list[list[tuple[str, float]]]:
    """The answers to fixed requests, one at a time (the outputs the two servers must share)."""
    out = []
    with httpx.Client(timeout=60) as client:
        for body in bodies:
            r = client.post(
                f"{url}/v1/retrieve", content=body, headers={"content-type": "application/json"}
            )
            r.raise_for_status()
            out.append([(it["video_id"], float(it["score"])) for it in r.json()["items"]])
    return out


def same_answers(a: list, b: list, tol: float = 1e-3) -> tuple[bool, str]:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if [v for v, _ in x] != [v for v, _ in y]:
            return False, f"probe {i}: items differ: {x[:3]} vs {y[:3]}"
        worst = max((abs(s - t) for (_, s), (_, t) in zip(x, y, strict=True)), default=0.0)
        if worst > tol:
            return False, f"probe {i}: scores differ by {worst}"
    return True, ""


def compute_ceiling(
    cfg: ModelConfig,
    prompt_len: int,
    sid_slots: int,
    beams: list[int],
    batched: dict[str, Any],
    matmul_flops: float,
    connections: int,
    p99_target_ms: float = 50.0,
) -> dict[str, Any]:
    """Per beam: model GFLOP per request, the GFLOP/s the batched server reached, the QPS
    this machine's matrix rate allows at most, and whether `connections` closed-loop
    clients can see p99 <= target at all (they need connections / p99 requests/s)."""
    needed = connections / (p99_target_ms / 1000)
    out: dict[str, Any] = {
        "matmul_gflops_per_s": round(matmul_flops / 1e9, 1),
        f"qps_needed_for_p99_{p99_target_ms:g}ms_at_{connections}_clients": needed,
    }
    for b in beams:
        flops = retrieve_flops(cfg, prompt_len, b, sid_slots)
        qps = batched.get(f"beam_{b}", {}).get("qps")
        ceiling = matmul_flops / flops
        out[f"beam_{b}"] = {
            "gflop_per_request": round(flops / 1e9, 4),
            "achieved_model_gflops_per_s": round(qps * flops / 1e9, 1) if qps else None,
            "share_of_matmul_rate": round(qps * flops / matmul_flops, 3) if qps else None,
            "ceiling_qps": round(ceiling, 1),
            "p99_target_reachable": ceiling >= needed,
        }
    return out


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum bench serving", description=__doc__)
    parser.add_argument("--model-repo", help="serve the newest version of this repository")
    parser.add_argument("--items", type=int, default=3000, help="videos of the generated index")
    parser.add_argument("--beams", default="10,20,50")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-sizes", default="1,4,16", help="the batched server's shapes")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--single-duration", type=int, default=10, help="seconds, one client")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--bodies", type=int, default=500)
    parser.add_argument("--probes", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("plum bench serving: wrk not found: apt-get install wrk (or make bench-tools)")
        return 2
    beams = [int(b) for b in args.beams.split(",")]
    with tempfile.TemporaryDirectory(prefix="plum-bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        if args.model_repo:
            repo, model_kind = Path(args.model_repo), f"published model from {args.model_repo}"
        else:
            log.info("writing a demo-size model with %d videos", args.items)
            repo, model_kind = (
                demo_size_repository(tmp, args.items, args.seed),
                "demo-size, random weights",
            )
        from serving.artifact import ModelRepository

        models = ModelRepository(repo)
        version = models.latest()
        if version is None:
            print(f"plum bench serving: no version in {repo}")
            return 2
        manifest = models.manifest(version)
        artifact = models.load(version)
        video_ids = list(artifact.snapshot.video_ids)
        sid_slots = Vocab.load(artifact.vocab_dir).num_sid_slots
        log.info("the machine's float32 matrix rate (the compute ceiling), before the servers")
        matmul_before = matmul_flops_per_s()
        modes = {
            "unbatched": {"PLUM_SERVING__BATCH_SIZES": "1"},
            "batched": {"PLUM_SERVING__BATCH_SIZES": args.batch_sizes},
        }
        widths = ",".join(map(str, beams))
        results: dict[str, dict[str, Any]] = {}
        answers: dict[str, dict[int, list]] = {}
        for mode, env in modes.items():
            env = dict(
                env,
                PLUM_SERVING__BEAM_WIDTHS=widths,
                PLUM_SERVING__MAX_WAIT_MS=str(args.max_wait_ms),
            )
            server = ServerProcess(repo, env, tmp / f"serve-{mode}.log")
            started = time.monotonic()
            try:
                url = server.wait_ready(timeout_s=900)
                log.info("%s server ready in %.0f s at %s", mode, time.monotonic() - started, url)
                results[mode] = {"startup_s": round(time.monotonic() - started, 1)}
                answers[mode] = {}
                for beam in beams:
                    bodies = request_bodies(video_ids, args.bodies, args.k, beam, args.seed + beam)
                    answers[mode][beam] = probe(url, bodies[: args.probes])
                    path = tmp / f"bodies-{beam}.jsonl"
                    path.write_text("\n".join(bodies) + "\n")
                    run_wrk(url, path, 3, args.connections, args.threads)  # warm: caches, pools
                    got = run_wrk(url, path, args.duration, args.connections, args.threads)
                    log.info("%s beam %d: %s", mode, beam, got)
                    results[mode][f"beam_{beam}"] = got
                    # one client: the latency of a request that waits for no other
                    alone = run_wrk(url, path, args.single_duration, 1, 1)
                    log.info("%s beam %d, one client: %s", mode, beam, alone)
                    results[mode][f"beam_{beam}_one_client"] = alone
            finally:
                code = server.stop()
                if code not in (0, None):
                    log.warning(
                        "%s server exited %s; log:\n%s",
                        mode,
                        code,
                        server.log_path.read_text()[-3000:],
                    )
        for beam in beams:
            ok, why = same_answers(answers["unbatched"][beam], answers["batched"][beam])
            if not ok:
                print(
                    f"plum bench serving: batched and unbatched answers differ at beam {beam}: {why}"
                )
                return 1
    matmul_after = matmul_flops_per_s()
    ceiling = compute_ceiling(
        ModelConfig.from_dict(manifest.model_config),
        manifest.max_prompt_len,
        sid_slots,
        beams,
        results["batched"],
        (matmul_before + matmul_after) / 2,
        args.connections,
    )
    log.info("compute ceiling: %s", ceiling)
    ratio = {
        f"batched_qps_over_unbatched_beam_{b}": round(
            results["batched"][f"beam_{b}"]["qps"] / results["unbatched"][f"beam_{b}"]["qps"], 3
        )
        for b in beams
    }
    b20 = results["batched"].get("beam_20")
    targets = {
        "p99_ms_at_beam_20_k_10_50_clients": {"target": 50.0, "measured": b20 and b20["p99_ms"]},
        "p99_ms_at_beam_20_k_10_one_client": {
            "target": 50.0,
            "measured": results["batched"].get("beam_20_one_client", {}).get("p99_ms"),
        },
        "batched_over_unbatched_qps": {
            "target": 2.0,
            "measured": ratio.get("batched_qps_over_unbatched_beam_20"),
        },
    }
    path = write_result(
        "serving",
        {
            "model": model_kind,
            "model_version": version,
            "model_config": manifest.model_config,
            "max_prompt_len": manifest.max_prompt_len,
            "index_items": len(video_ids),
            "k": args.k,
            "beams": beams,
            "batch_sizes": args.batch_sizes,
            "max_wait_ms": args.max_wait_ms,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "duration_s": args.duration,
            "distinct_bodies": args.bodies,
            "load_generator": "wrk 4.1 (Debian), closed loop, same machine as the server",
        },
        {"batched": results["batched"], "targets": targets, "compute_ceiling": ceiling},
        {"unbatched": results["unbatched"]},
        ratio,
        notes=(
            "Both servers answered the same probe requests identically (items and order; "
            "scores within 1e-3) before the ratio was computed. compute_ceiling: model FLOPs "
            "per retrieval (bench/mfu.py retrieve_flops) against this machine's float32 "
            "matrix rate through XLA, measured before and after the servers in the same run; "
            "qps_needed = connections / p99 target (Little's law for closed-loop clients: "
            "mean latency <= p99 needs throughput >= connections / p99)."
        ),
    )
    print(json.dumps({"results": str(path), "ratio": ratio, "targets": targets}, indent=1))
    return 0

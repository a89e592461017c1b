"""Train the SID-v2 tokenizer: `plum tokenizer train --config PATH --data SPEC --out CKPT_DIR`.

The core is the in-memory `train_tokenizer(item_embeddings, pairs, config)`; the CLI only
loads data (tokenizer.data), calls it and saves the result with orbax. The loop:

    init      standardise inputs, init the networks, k-means the codebooks on the first batch
    step      jitted: sample items and co-occurring pairs, loss, adam update, code usage
    maintain  every `dead_code_window` steps, re-seed codes no item used in the window
    log       losses (each term unweighted), steps/s and ETA every `log_every` steps
              (plum.runtime.Progress)
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from plum.runtime import Progress
from tokenizer.codebook import init_codebooks, reseed_dead_codes
from tokenizer.config import TokenizerConfig, load_tokenizer_config
from tokenizer.frozen import TrainedTokenizer, build_model, normalize
from tokenizer.losses import info_nce, reconstruction_loss, rq_loss
from tokenizer.model import SidAutoencoder, progressive_mask, residual_quantize

log = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """Item embeddings or pairs that cannot be trained on."""


def input_stats(item_embeddings: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Per-dimension mean and std of each input (std of a constant dimension taken as 1)."""
    stats = {}
    for name, x in item_embeddings.items():
        std = x.std(axis=0)
        stats[name] = {
            "mean": x.mean(axis=0).astype(np.float32),
            "std": np.where(std > 1e-6, std, 1.0).astype(np.float32),
        }
    return stats


def check_training_data(
    item_embeddings: Mapping[str, np.ndarray], pairs: np.ndarray | None
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    if not item_embeddings:
        raise TrainingDataError("no item embeddings given")
    data, sizes = {}, {}
    for name, x in item_embeddings.items():
        x = np.asarray(x, np.float32)
        if x.ndim != 2:
            raise TrainingDataError(f"embedding {name!r} has shape {x.shape}, expected [N, d]")
        if not np.all(np.isfinite(x)):
            raise TrainingDataError(f"embedding {name!r} holds NaN or inf")
        data[name], sizes[name] = x, x.shape[0]
    if len(set(sizes.values())) != 1:
        raise TrainingDataError(f"modalities disagree on the number of items: {sizes}")
    n = next(iter(sizes.values()))
    if n < 2:
        raise TrainingDataError(f"need at least 2 items, got {n}")
    pairs = np.zeros((0, 2), np.int32) if pairs is None else np.asarray(pairs, np.int32)
    if pairs.size and (pairs.ndim != 2 or pairs.shape[1] != 2):
        raise TrainingDataError(f"pairs have shape {pairs.shape}, expected [P, 2]")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise TrainingDataError(
            f"pair indices span [{pairs.min()}, {pairs.max()}], items are [0, {n})"
        )
    return data, pairs.reshape(-1, 2), n


def make_train_step(
    model: SidAutoencoder, config: TokenizerConfig, optimizer, num_items: int, num_pairs: int
):
    """The jitted step: (trainable, opt_state, usage, data, pairs, key) -> updated + metrics."""
    use_contrastive = num_pairs > 0 and config.contrastive_weight > 0
    level_sizes = config.level_sizes

    def loss_fn(trainable, data, pairs, key):
        k_items, k_mask, k_pairs = jax.random.split(key, 3)
        idx = jax.random.randint(k_items, (config.batch_size,), 0, num_items)
        if use_contrastive:
            pidx = pairs[jax.random.randint(k_pairs, (config.pair_batch_size,), 0, num_pairs)]
            # one encoder pass over items and both sides of the pairs keeps the graph small
            idx = jnp.concatenate([idx, pidx[:, 0], pidx[:, 1]])
        inputs_all = {n: x[idx] for n, x in data.items()}
        z_all = model.apply({"params": trainable["net"]}, inputs_all, method=SidAutoencoder.encode)
        b = config.batch_size
        z = z_all[:b]
        inputs = {n: x[:b] for n, x in inputs_all.items()}
        mask = progressive_mask(k_mask, b, config.num_levels, config.progressive_masking)
        rq = residual_quantize(z, trainable["codebooks"], mask)
        recons = model.apply({"params": trainable["net"]}, rq.z_hat, method=SidAutoencoder.decode)
        recon, per_input = reconstruction_loss(inputs, recons)
        rq_total, codebook_term, commitment_term = rq_loss(
            rq.residuals, rq.codewords, mask, config.beta
        )
        if use_contrastive:
            pb = config.pair_batch_size
            contrastive = info_nce(z_all[b : b + pb], z_all[b + pb :], config.temperature)
        else:
            contrastive = jnp.zeros(())
        total = (
            config.recon_weight * recon
            + config.rq_weight * rq_total
            + config.contrastive_weight * contrastive
        )
        metrics = {
            "loss": total,
            "recon": recon,
            "rq": rq_total,
            "rq_codebook": codebook_term,
            "rq_commitment": commitment_term,
            "contrastive": contrastive,
            **{f"recon_{n}": v for n, v in per_input.items()},
        }
        return total, (metrics, rq.codes, rq.residuals)

    @jax.jit
    def step(trainable, opt_state, usage, data, pairs, key):
        (_, (metrics, codes, residuals)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, data, pairs, key
        )
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        usage = tuple(
            u + jnp.bincount(codes[:, lvl], length=k)
            for lvl, (u, k) in enumerate(zip(usage, level_sizes, strict=True))
        )
        return trainable, opt_state, usage, metrics, residuals

    return step


def train_tokenizer(
    item_embeddings: Mapping[str, np.ndarray],
    pairs: np.ndarray | None,
    config: TokenizerConfig,
) -> TrainedTokenizer:
    """Train SID-v2 on in-memory data.

    item_embeddings: {modality name: [N, d_m]} float arrays, row i = item i in every one.
    pairs: [P, 2] int indices of co-occurring items (None or empty: no contrastive term).
    """
    raw, pairs, n = check_training_data(item_embeddings, pairs)
    modalities = tuple(sorted((name, x.shape[1]) for name, x in raw.items()))
    stats = input_stats(raw)
    data = {name: jnp.asarray(normalize(x, stats[name])) for name, x in raw.items()}
    pairs_dev = jnp.asarray(pairs if len(pairs) else np.zeros((1, 2), np.int32))
    if len(pairs) == 0 and config.contrastive_weight > 0:
        log.warning("no co-occurrence pairs: training without the contrastive term")

    rng = np.random.default_rng(config.seed)
    key = jax.random.PRNGKey(config.seed)
    key, init_key = jax.random.split(key)
    model = build_model(config, modalities)
    # jitted: eager flax init and apply dispatch op by op and are slow on a busy CPU
    net = jax.jit(model.init)(init_key, {name: x[:2] for name, x in data.items()})["params"]

    # k-means on the first batch; paper-size codebooks need more rows than one batch.
    init_rows = min(n, max(config.batch_size, 4 * config.codebook_base))
    first = rng.choice(n, size=init_rows, replace=False)
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=SidAutoencoder.encode))
    z0 = encode(net, {k: x[first] for k, x in data.items()})
    t0 = time.perf_counter()
    books = init_codebooks(np.asarray(z0), config.level_sizes, config.kmeans_iters, rng)
    log.info(
        "k-means init of codebooks %s on %d items took %.1fs",
        config.level_sizes,
        init_rows,
        time.perf_counter() - t0,
    )

    trainable = {"net": net, "codebooks": tuple(jnp.asarray(b) for b in books)}
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(trainable)
    zero_usage = tuple(jnp.zeros((k,), jnp.int32) for k in config.level_sizes)
    usage = zero_usage
    step_fn = make_train_step(model, config, optimizer, n, len(pairs))

    history: list[dict[str, float]] = []
    sums: dict[str, Any] | None = None
    window_start = t_start = time.perf_counter()
    reseeded_total = 0
    progress = Progress("tokenizer train", "steps", total=config.steps, logger=log)
    for step in range(1, config.steps + 1):
        trainable, opt_state, usage, metrics, residuals = step_fn(
            trainable, opt_state, usage, data, pairs_dev, jax.random.fold_in(key, step)
        )
        sums = metrics if sums is None else jax.tree_util.tree_map(jnp.add, sums, metrics)

        if step % config.dead_code_window == 0 and step < config.steps:
            usage_np = [np.asarray(u) for u in usage]
            residuals_np = np.asarray(residuals)  # [batch, L, D]
            books = list(trainable["codebooks"])
            for lvl, book in enumerate(books):
                new, dead = reseed_dead_codes(
                    np.asarray(book), usage_np[lvl], residuals_np[:, lvl], rng
                )
                if dead.size:
                    books[lvl] = jnp.asarray(new)
                    reseeded_total += int(dead.size)
            trainable = {**trainable, "codebooks": tuple(books)}
            usage = zero_usage

        if step % config.log_every == 0 or step == config.steps:
            count = config.log_every if step % config.log_every == 0 else step % config.log_every
            means = {k: float(v) / count for k, v in jax.device_get(sums).items()}
            sums = None
            now = time.perf_counter()
            rate = count / max(now - window_start, 1e-9)
            window_start = now
            history.append({"step": step, **means, "steps_per_s": rate})
            progress.add(count)
            progress.report(
                detail=f"loss {means['loss']:.4f} recon {means['recon']:.4f} rq {means['rq']:.4f} "
                f"contrastive {means['contrastive']:.4f}, {rate * config.batch_size:.0f} items/s, "
                f"reseeded {reseeded_total}"
            )
    progress.close()
    log.info("trained %d steps in %.1fs", config.steps, time.perf_counter() - t_start)
    return TrainedTokenizer(
        config,
        modalities,
        trainable["net"],
        trainable["codebooks"],
        stats,
        step=config.steps,
        history=tuple(history),
    )


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum tokenizer train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=None, help="TOML with a [tokenizer] section")
    parser.add_argument(
        "--data",
        required=True,
        help="simulator:UPLOADS_JSONL (or a folder holding uploads.jsonl) | movielens:DIR",
    )
    parser.add_argument(
        "--pairs",
        default=None,
        help="co-occurrence pairs file (JSONL of {a, b[, count]} or 'a b' lines); "
        "default: the data source's own pairs when it has them",
    )
    parser.add_argument("--out", required=True, help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=None, help="override [tokenizer].steps")
    args = parser.parse_args(argv)

    from streams.datasets.movielens import load_movielens_config
    from tokenizer.checkpoint import save_tokenizer
    from tokenizer.data import load_items

    config = load_tokenizer_config(args.config, steps=args.steps)
    items = load_items(args.data, args.pairs, load_movielens_config(args.config))
    log.info(
        "training on %d items (%s), %d pairs",
        len(items.ids),
        ", ".join(f"{k}[{v.shape[1]}]" for k, v in items.embeddings.items()),
        len(items.pairs),
    )
    tok = train_tokenizer(items.embeddings, items.pairs, config)
    save_tokenizer(tok, args.out)
    print(tok.sid_version)
    return 0

"""Predicting which blocks to transfer before training: LogME, relative gradient norms, ranks.

Two published predictors, each cheap next to a sweep's trials:

- **LogME** (You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning", ICML 2021): the log marginal evidence of a Bayesian linear model on frozen
  features, maximised over its prior precision `alpha` and noise precision `beta`, per target
  column, divided by the number of samples. Features that suit the target score higher. Used here
  for the cut points of `prefix` configurations: transfer the first n blocks, train the rest.
- **Relative gradient norms** (Auto-RGN; Lee, Chen, Tajwar, Kumar, Yao, Liang, Finn, "Surgical
  Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR 2023): `||g|| / ||theta||` per
  block on a few batches of target data, taken on the all-tuned model (every block transferred).
  The block whose parameters the target data pulls hardest is the one to tune. Used here for
  `surgical` configurations: transfer everything, tune one block.

`rank_configurations` turns the scores into one predicted order of configurations, and
`kendall_tau` compares it with measured results.

Example:

```python
from keras_blockreuse.sweep.predict import (cut_features, logme, rank_configurations,
                                            relative_gradient_norms)

features = cut_features(source_model, data.x_train)           # block -> (n, d) array
scores = {block: logme(f, data.y_train) for block, f in features.items()}
rgn = relative_gradient_norms(all_tuned_model, data.x_train, data.y_train)
for p in rank_configurations(list(scores), logme_scores=scores, rgn=rgn)[:3]:
    print(p.rank, p.key, p.predictor, p.score)
```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from keras_blockreuse.sweep.space import (
    Configuration,
    SweepError,
    configuration,
    decode_policy,
    scratch,
)

__all__ = ["Evidence", "Prediction", "Ranking", "Tau", "cut_features", "evidence_maximization",
           "kendall_tau", "logme", "predict_ranking", "rank_configurations",
           "relative_gradient_norms", "predicted_vs_measured", "rank_for_sweep",
           "top_configurations"]


@dataclasses.dataclass(frozen=True)
class Evidence:
    """The maximised evidence of a Bayesian linear model, one entry per target column.

    Attributes:
        evidence: `log p(y_c | F, alpha_c, beta_c) / n` for each target column c, shape `(C,)`.
        alpha: the prior precision of the weights at the maximum, shape `(C,)`.
        beta: the noise precision at the maximum, shape `(C,)`.
        iterations: fixed-point iterations until every column converged.
    """

    evidence: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    iterations: int


def evidence_maximization(
    features: np.ndarray, targets: np.ndarray, tol: float = 1e-7, max_iter: int = 50_000
) -> Evidence:
    """LogME's evidence maximisation (You et al., ICML 2021, Algorithm 1), every column at once.

    The model: `y = F w + noise`, `w ~ N(0, alpha^-1 I)`, `noise ~ N(0, beta^-1 I)`. With the
    singular values `sigma_i` of `F` (`s_i = sigma_i^2`) and `z = U^T y`, the fixed point is

        gamma = sum_i beta s_i / (alpha + beta s_i)
        m = V diag(beta sigma_i / (alpha + beta s_i)) z,
        alpha <- gamma / ||m||^2,   beta <- (n - gamma) / ||F m - y||^2,

    iterated until `alpha` and `beta` change by less than `tol` (relative) in every column. The
    evidence is then

        n/2 log beta + D/2 log alpha - n/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 ||m||^2
        - 1/2 log det(alpha I + beta F^T F),

    where the determinant counts the `D - rank` zero singular values as `alpha`. The SVD of `F`
    is computed once; every iteration is `O(rank x C)`. Where the features explain nothing of a
    column, the maximum lies at `alpha -> infinity` (`gamma -> 0`): that column stops once
    `gamma` is below 1e-9 and `beta` has settled, at the limit's evidence. Convergence is
    linear and can be slow where features outnumber samples (thousands of iterations, each
    `O(rank x C)`: milliseconds).

    Args:
        features: `(n, D)` array.
        targets: `(n,)` or `(n, C)` array of real targets (one-hot columns for classes).
        tol: relative change of `alpha` and `beta` below which a column has converged.
        max_iter: iterations allowed before giving up.

    Returns:
        An `Evidence`.

    Raises:
        ValueError: shapes that do not match, fewer than 2 samples, non-finite values, or no
            convergence within `max_iter` iterations (the message says by how much).
    """
    f = _as_matrix(features, "features")
    y = np.asarray(targets, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != f.shape[0]:
        raise ValueError(f"Expected targets of shape ({f.shape[0]},) or ({f.shape[0]}, C) to match "
                         f"features {f.shape}; received {np.shape(targets)}.")
    if not np.all(np.isfinite(y)):
        raise ValueError("Targets contain NaN or infinite values.")
    empty = np.flatnonzero(np.sum(y**2, axis=0) == 0.0)
    if empty.size:
        raise ValueError(f"Target column(s) {empty.tolist()} are all zeros: their evidence is "
                         "unbounded (a class without samples?).")
    n, dim = f.shape
    u, sigma, _ = np.linalg.svd(f, full_matrices=False)
    keep = sigma > sigma.max(initial=0.0) * max(n, dim) * np.finfo(np.float64).eps
    u, sigma = u[:, keep], sigma[keep]
    s = sigma**2                                        # (k,) eigenvalues of F^T F
    z = u.T @ y                                         # (k, C)
    outside = np.sum(y**2, axis=0) - np.sum(z**2, axis=0)   # ||y||^2 outside F's column space
    outside = np.maximum(outside, 0.0)
    columns = y.shape[1]
    alpha, beta = np.ones(columns), np.ones(columns)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        m2, residual, gamma = _posterior_terms(s, z, outside, alpha, beta)
        new_alpha = gamma / np.maximum(m2, np.finfo(np.float64).tiny)
        new_beta = (n - gamma) / np.maximum(residual, np.finfo(np.float64).tiny)
        # A column whose features explain nothing has its maximum at alpha -> infinity (w = 0):
        # once gamma, the effective number of parameters, is ~0 only beta has to settle.
        alpha_change = np.where(gamma < _NO_SIGNAL, 0.0, np.abs(new_alpha - alpha) / alpha)
        change = max(np.max(alpha_change), np.max(np.abs(new_beta - beta) / beta))
        alpha, beta = new_alpha, new_beta
        if change < tol:
            break
    else:
        raise ValueError(f"LogME's fixed point did not converge in {max_iter} iterations "
                         f"(last relative change {change:.3g}, tolerance {tol:g}).")
    m2, residual, _ = _posterior_terms(s, z, outside, alpha, beta)
    # D/2 log alpha - 1/2 log det(alpha I + beta F^T F), written to stay finite as alpha grows.
    log_ratio = np.sum(np.log1p(beta[None, :] * s[:, None] / alpha[None, :]), axis=0)
    evidence = (n / 2 * np.log(beta) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * residual - alpha / 2 * m2 - log_ratio / 2) / n
    return Evidence(evidence=evidence, alpha=alpha, beta=beta, iterations=iterations)


_NO_SIGNAL = 1e-9
"""Effective number of parameters below which a column counts as explained by no feature."""


def _posterior_terms(s, z, outside, alpha, beta):
    """`||m||^2`, `||F m - y||^2` and `gamma` of the posterior mean at `alpha`, `beta`."""
    denominator = alpha[None, :] + beta[None, :] * s[:, None]            # (k, C)
    m2 = np.sum((beta[None, :] * np.sqrt(s)[:, None] * z / denominator) ** 2, axis=0)
    residual = outside + np.sum((alpha[None, :] * z / denominator) ** 2, axis=0)
    gamma = np.sum(beta[None, :] * s[:, None] / denominator, axis=0)
    return m2, residual, gamma


def logme(
    features: np.ndarray, labels: np.ndarray, regression: bool = False, num_classes: int | None = None
) -> float:
    """LogME score of features for a target task (You et al., ICML 2021); higher suits better.

    Classification: the evidence of each class's one-hot column, averaged over classes.
    Regression: the evidence of each target column, averaged (standardise targets first when
    their scales differ: the evidence depends on the scale).

    Args:
        features: `(n, D)` array of frozen features (pool spatial features first).
        labels: `(n,)` integer class ids in `[0, num_classes)`, or for `regression=True`
            `(n,)` / `(n, C)` real targets.
        regression: treat `labels` as real targets.
        num_classes: the number of classes (default `max(labels) + 1`).

    Returns:
        The mean per-sample log evidence, a float (comparable across features of one task).

    Raises:
        ValueError: labels that are not non-negative integers, shapes that do not match, or
            no convergence.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(200, 5)); y = (x[:, 0] > 0).astype(int)
    >>> logme(x, y) > logme(np.random.default_rng(1).normal(size=(200, 5)), y)
    True
    """
    if regression:
        return float(np.mean(evidence_maximization(features, labels).evidence))
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ValueError("Expected class labels as a 1-D array of non-negative integers; received "
                         f"shape {y.shape}, dtype {y.dtype}.")
    classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if y.size and y.max() >= classes:
        raise ValueError(f"Label {int(y.max())} is out of range for num_classes={classes}.")
    absent = sorted(set(range(classes)) - set(y.tolist()))
    if absent:
        raise ValueError(f"Classes {absent} of {classes} have no samples; LogME averages over "
                         "classes present in the labels (pass num_classes to match them).")
    one_hot = np.zeros((len(y), classes))
    one_hot[np.arange(len(y)), y] = 1.0
    return float(np.mean(evidence_maximization(features, one_hot).evidence))


def cut_features(
    model, x: np.ndarray, blocks=None, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """The features after each block of `model` on inputs `x`, spatial ones global-pooled.

    The features after a block are what the next block receives: the input of the next block's
    first layer (so the activations, pooling and dropout between blocks are included), and the
    model's output after the last block. Where the next block's first layer has several inputs
    or is used more than once, the output of the block's last layer is taken instead. Features
    of rank > 2 are averaged over every axis but the first and the last (global average
    pooling); features the model itself flattens stay flat (`seed_cnn`'s `block_2`: the
    2 x 2 x 64 = 256 values `dense_1` receives). Layers run in inference mode.

    Args:
        model: a built functional or Sequential `keras.Model` (usually the source model).
        x: inputs, `(n, ...)`.
        blocks: the block rule (see `keras_blockreuse.blocks.get_blocks`).
        batch_size: samples per forward pass.

    Returns:
        An ordered dict `block name -> (n, d) float64 array`.

    Raises:
        SweepError: a model whose layers have no symbolic outputs (a subclassed model).
    """
    import keras

    from keras_blockreuse.blocks import get_blocks

    found = list(get_blocks(model, blocks).values())
    try:
        outputs = []
        for i, block in enumerate(found):
            if i + 1 == len(found):
                outputs.append(model.outputs[0])
                continue
            first = found[i + 1].layers[0]
            try:
                tensor = first.input
            except (AttributeError, ValueError):
                tensor = None
            if tensor is None or isinstance(tensor, (list, tuple, dict)):
                tensor = block.layers[-1].output
            outputs.append(tensor)
        extractor = keras.Model(model.inputs, outputs)
    except (AttributeError, ValueError, TypeError) as error:
        raise SweepError(f"Cannot take features after each block of model {model.name!r}: it "
                         f"needs a functional or Sequential model ({error}).") from None
    parts: list[list[np.ndarray]] = [[] for _ in found]
    for start in range(0, len(x), batch_size):
        values = extractor.predict_on_batch(x[start: start + batch_size])
        values = values if isinstance(values, (list, tuple)) else [values]
        for part, value in zip(parts, values, strict=True):
            value = np.asarray(value, dtype=np.float64)
            if value.ndim > 2:
                value = value.mean(axis=tuple(range(1, value.ndim - 1)))
            part.append(value.reshape(len(value), -1))
    return {block.name: np.concatenate(part) for block, part in zip(found, parts, strict=True)}


def relative_gradient_norms(
    model,
    x: np.ndarray,
    y: np.ndarray,
    loss="sparse_categorical_crossentropy",
    batch_size: int = 32,
    batches: int = 4,
    blocks=None,
    seed: int = 0,
) -> dict[str, float]:
    """Auto-RGN's relative gradient norm `||g|| / ||theta||` per block (Lee et al., ICLR 2023).

    For each of `batches` batches of `batch_size` samples drawn without replacement (fixed by
    `seed`), the gradient of the mean loss with respect to each block's trainable variables;
    the norm of a block is taken over all its variables together. The result is the ratio's
    mean over the batches. The model runs in inference mode (dropout off, BatchNormalization on
    its moving statistics), so nothing in the model changes.

    Args:
        model: the all-tuned model: every block transferred and trainable. TensorFlow backend.
        x, y: target training inputs and labels.
        loss: a Keras loss (name or callable) on `(y, model(x))`.
        batch_size, batches: how much data; fewer batches when `x` is short.
        blocks: the block rule.
        seed: the sampling seed.

    Returns:
        An ordered dict `block name -> mean relative gradient norm` (blocks without trainable
        variables are left out).

    Raises:
        SweepError: a frozen block (the predictor is defined on the all-tuned model), a
            backend other than TensorFlow, or a zero parameter norm.
    """
    import keras

    from keras_blockreuse.blocks import get_blocks

    if keras.backend.backend() != "tensorflow":
        raise SweepError("relative_gradient_norms needs the TensorFlow backend; received "
                         f"{keras.backend.backend()!r}.")
    import tensorflow as tf

    found = get_blocks(model, blocks)
    frozen = [name for name, block in found.items() if not block.trainable]
    if frozen:
        raise SweepError(f"Relative gradient norms are taken on the all-tuned model; blocks "
                         f"{frozen} are frozen. Unfreeze them first.")
    weights = {name: [v for layer in block.layers for v in layer.trainable_weights]
               for name, block in found.items()}
    weights = {name: vs for name, vs in weights.items() if vs}
    loss_fn = keras.losses.get(loss)
    order = np.random.default_rng(seed).permutation(len(x))
    count = max(1, min(int(batches), len(x) // int(batch_size)))
    ratios = {name: [] for name in weights}
    for b in range(count):
        index = np.sort(order[b * batch_size: (b + 1) * batch_size])
        flat = [v for vs in weights.values() for v in vs]
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss_fn(y[index], model(x[index], training=False)))
        grads = tape.gradient(value, [v.value for v in flat])
        position = 0
        for name, vs in weights.items():
            g2 = sum(float(tf.reduce_sum(tf.square(g))) for g in grads[position: position + len(vs)]
                     if g is not None)
            t2 = sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in vs)
            position += len(vs)
            if t2 == 0.0:
                raise SweepError(f"Block {name!r} has all-zero parameters: its relative gradient "
                                 "norm is undefined.")
            ratios[name].append(math.sqrt(g2) / math.sqrt(t2))
    return {name: float(np.mean(r)) for name, r in ratios.items()}


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One configuration in the predicted order.

    Attributes:
        key: the configuration's policy key (`keras_blockreuse.sweep.space`).
        label: its readable name (`"surgical: tune block_1"`, `"prefix 2 tuned"`).
        predictor: `"rgn"` (surgical) or `"logme"` (prefix).
        score: the predictor's value (higher is predicted better).
        rank: 1-based position in the combined order.
    """

    key: str
    label: str
    predictor: str
    score: float
    rank: int


def rank_configurations(
    blocks: Sequence[str],
    logme_scores: Mapping[str, float] | None = None,
    rgn: Mapping[str, float] | None = None,
    head_trained: bool = True,
) -> list[Prediction]:
    """Candidate configurations in predicted order, best first.

    - `surgical: tune b` (everything transferred, block `b` tuned, the rest frozen) scores
      `rgn[b]`: the block with the largest relative gradient norm first.
    - `prefix n frozen` and `prefix n tuned` (the first n blocks transferred) score the LogME of
      the features after block n; at equal score the tuned one comes first (Yosinski et al.
      2014: fine-tuned transfer is at or above frozen). Prefix n = all blocks tuned is the
      all-tuned baseline and is left out, like scratch: both always run.
    - `prefix n frozen` with n = all blocks is ranked only when `head_trained`: LogME scores
      features for a newly trained linear head (You et al. 2021); when the swept blocks are the
      whole model, that configuration trains nothing and LogME says nothing about it
      (`unranked_configurations` names it).

    The two families' scores are not on one scale, so the combined order alternates between
    them by rank within each family (surgical first), the rest of the longer family at the end.

    Args:
        blocks: the swept blocks in computation order.
        logme_scores: block -> LogME of the features after it (every block), or None.
        rgn: block -> relative gradient norm (every block), or None.
        head_trained: whether blocks outside `blocks` (a new head) train in every
            configuration.

    Returns:
        A list of `Prediction` with ranks 1, 2, ...

    Raises:
        SweepError: neither predictor given, or a predictor that misses a block.
    """
    blocks = list(blocks)
    families = []
    if rgn is not None:
        _check_covers(rgn, blocks, "relative gradient norms")
        surgical = []
        for b in blocks if len(blocks) > 1 else ():  # one block: "tune it" is all tuned
            policy = dict.fromkeys(blocks, "frozen")
            policy[b] = "tuned"
            c = configuration(policy, blocks, label=f"surgical: tune {b}")
            surgical.append((float(rgn[b]), blocks.index(b), c, "rgn"))
        families.append(sorted(surgical, key=lambda t: (-t[0], t[1])))
    if logme_scores is not None:
        _check_covers(logme_scores, blocks, "LogME scores")
        prefix = []
        for n, b in enumerate(blocks, start=1):
            for tie, mode in ((0, "tuned"), (1, "frozen")):
                if n == len(blocks) and (mode == "tuned" or not head_trained):
                    continue
                c = configuration(dict.fromkeys(blocks[:n], mode), blocks,
                                  label=f"prefix {n} {mode}")
                prefix.append((float(logme_scores[b]), tie, c, "logme", n))
        families.append([t[:4] for t in sorted(prefix, key=lambda t: (-t[0], t[1], t[4]))])
    if not families:
        raise SweepError("rank_configurations needs LogME scores, relative gradient norms, "
                         "or both; received neither.")
    out, seen = [], set()
    for position in range(max(len(f) for f in families)):
        for family in families:
            if position < len(family):
                score, _, c, predictor = family[position]
                if c.key not in seen:
                    seen.add(c.key)
                    out.append(Prediction(c.key, c.label, predictor, score, len(out) + 1))
    return out


def _check_covers(scores: Mapping[str, float], blocks: Sequence[str], what: str) -> None:
    missing = [b for b in blocks if b not in scores]
    bad = {b: scores[b] for b in blocks if b in scores and not math.isfinite(float(scores[b]))}
    if missing or bad:
        raise SweepError(f"The {what} must give a finite value for every block {list(blocks)}; "
                         f"missing {missing}, not finite {bad}.")


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Both predictors for a sweep's blocks and the configurations in predicted order.

    Attributes:
        predictions: `Prediction`s, best first (see `rank_configurations`).
        logme: block -> LogME of the target features after it.
        rgn: block -> relative gradient norm on the all-tuned model.
        seconds: the time both predictors took.
        samples: target training samples used for LogME.
        unranked: configuration key -> label of the candidates no predictor can score (see
            `unranked_configurations`).
    """

    predictions: list
    logme: dict
    rgn: dict
    seconds: float
    samples: int
    unranked: dict = dataclasses.field(default_factory=dict)


def unranked_configurations(blocks: Sequence[str], head_trained: bool) -> dict[str, str]:
    """Candidates `rank_configurations` leaves out: `{key: label}` of "prefix n frozen" with
    n = all blocks when nothing else in the model trains (it trains no parameter)."""
    if head_trained or not blocks:
        return {}
    c = configuration(dict.fromkeys(blocks, "frozen"), list(blocks),
                      label=f"prefix {len(blocks)} frozen")
    return {c.key: c.label}


def predict_ranking(
    model,
    x: np.ndarray,
    y: np.ndarray,
    blocks: Sequence[str],
    loss="sparse_categorical_crossentropy",
    batches: int = 4,
    batch_size: int = 32,
    max_samples: int = 2000,
    seed: int = 0,
) -> Ranking:
    """Score `blocks` with LogME and relative gradient norms, and rank their configurations.

    Args:
        model: the all-tuned target model: the swept `blocks` loaded from the source, every
            block trainable (the other blocks as the sweep fixes them).
        x, y: target training inputs and integer class labels.
        blocks: the swept blocks, in computation order.
        loss: the loss for the gradient norms.
        batches, batch_size, seed: see `relative_gradient_norms`.
        max_samples: LogME uses at most this many samples (a seeded random subset).

    Returns:
        A `Ranking`.

    Raises:
        SweepError: a block the model lacks, or anything the predictors refuse.
    """
    import time

    started = time.perf_counter()
    y = np.asarray(y)
    order = np.random.default_rng(seed).permutation(len(x))[: int(max_samples)]
    features = cut_features(model, x[np.sort(order)])
    missing = [b for b in blocks if b not in features]
    if missing:
        raise SweepError(f"Blocks {missing} are not blocks of the model {list(features)}.")
    labels = y[np.sort(order)]
    try:
        scores = {b: logme(features[b], labels, num_classes=int(y.max()) + 1) for b in blocks}
    except ValueError as error:
        raise SweepError(f"LogME cannot score the target task: {error}") from None
    norms = relative_gradient_norms(model, x, y, loss=loss, batch_size=batch_size,
                                    batches=batches, seed=seed)
    norms = {b: norms[b] for b in blocks}
    head_trained = any(b not in blocks for b in features)  # blocks the sweep always trains
    return Ranking(predictions=rank_configurations(blocks, scores, norms, head_trained),
                   logme=scores, rgn=norms, seconds=time.perf_counter() - started,
                   samples=len(order), unranked=unranked_configurations(blocks, head_trained))


def rank_for_sweep(model: str, data, source: bytes | str, blocks: Sequence[str]) -> Ranking:
    """`predict_ranking` as a sweep runs it: the zoo model `model` for the target task with the
    swept `blocks` loaded from the source block file (bytes or path), seeded with 0.

    Example:

    >>> ranking = rank_for_sweep("seed_cnn", make_task(), blob, ["block_1", "block_2"])
    """
    import keras

    from keras_blockreuse.sweep.trial import block_file
    from keras_blockreuse.sweep.zoo import build_model

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    target = build_model(model, data.input_shape, data.target_classes, name="target")
    try:
        with block_file(source) as path:
            target.load_blocks(path, only=list(blocks))
        return predict_ranking(target, data.x_train, data.y_train, blocks)
    finally:
        keras.backend.clear_session()


def top_configurations(
    ranking: Ranking, blocks: Sequence[str], top_k: int = 3
) -> list[Configuration]:
    """What `--strategy predicted` runs: scratch, the top `top_k` predictions, all tuned.

    Raises:
        SweepError: `top_k < 1`.
    """
    if int(top_k) < 1:
        raise SweepError(f"Expected top_k >= 1; received {top_k}.")
    chosen = [configuration(decode_policy(p.key, blocks), blocks, label=p.label)
              for p in ranking.predictions[: int(top_k)]]
    everything = configuration(dict.fromkeys(blocks, "tuned"), blocks, label="all tuned")
    out = [scratch(blocks)] + chosen
    if everything.key not in {c.key for c in out}:
        out.append(everything)
    return out


@dataclasses.dataclass(frozen=True)
class Tau:
    """Kendall's tau between a predicted order and measured scores.

    Attributes:
        tau: Kendall's tau-b in [-1, 1]; NaN when fewer than 2 configurations were measured or
            every measured score is equal (then `reason` says so).
        pvalue: the two-sided p-value of scipy's test (NaN with `tau`).
        n: configurations both predicted and measured.
        reason: why `tau` is NaN, else "".
    """

    tau: float
    pvalue: float
    n: int
    reason: str = ""


def kendall_tau(predicted: Sequence[str], measured: Mapping[str, float]) -> Tau:
    """Kendall's tau between the predicted order of keys and their measured scores.

    Only keys in both count. Agreement means: a configuration predicted better (earlier in
    `predicted`) measured higher.

    Args:
        predicted: configuration keys, best predicted first.
        measured: key -> measured score (higher is better, e.g. mean validation accuracy).

    Returns:
        A `Tau`.

    Example:

    >>> kendall_tau(["a", "b", "c"], {"a": 0.9, "b": 0.8, "c": 0.5}).tau
    1.0
    """
    from scipy.stats import kendalltau

    keys = [k for k in predicted if k in measured]
    if len(keys) < 2:
        return Tau(math.nan, math.nan, len(keys),
                   f"only {len(keys)} predicted configuration(s) measured; tau needs 2")
    values = [float(measured[k]) for k in keys]
    if len(set(values)) == 1:
        return Tau(math.nan, math.nan, len(keys), "every measured score is equal")
    result = kendalltau(-np.arange(len(keys)), values)
    return Tau(float(result.statistic), float(result.pvalue), len(keys))


def _as_matrix(features, what: str) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"Expected {what} of shape (n, D) with n >= 2 and D >= 1; received "
                         f"shape {np.shape(features)}.")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"The {what} contain NaN or infinite values.")
    return f


def predicted_vs_measured(
    predictions: Sequence[Prediction], measured: Mapping[str, float], metric: str = "val_accuracy",
    unranked: Mapping[str, str] | None = None,
) -> tuple[str, list[dict]]:
    """A markdown section: each predicted configuration's rank beside its measured rank, and
    Kendall's tau over those measured.

    Args:
        predictions: `Prediction`s in predicted order.
        measured: configuration key -> measured mean score (higher is better); keys not
            predicted (scratch, all tuned) are ignored.
        metric: the measured score's name, for the table's header.
        unranked: key -> label of candidates no predictor scored (`Ranking.unranked`); the
            section names them.

    Returns:
        `(markdown, rows)`; each row has `key`, `label`, `predictor`, `score`,
        `predicted_rank`, `measured_rank` (None when not measured) and `measured`.
    """
    ran = [p for p in predictions if p.key in measured]
    order = sorted(ran, key=lambda p: -float(measured[p.key]))
    measured_rank = {p.key: i + 1 for i, p in enumerate(order)}
    tau = kendall_tau([p.key for p in predictions], measured)
    rows = [{"key": p.key, "label": p.label, "predictor": p.predictor, "score": p.score,
             "predicted_rank": p.rank, "measured_rank": measured_rank.get(p.key),
             "measured": measured.get(p.key)} for p in predictions]
    lines = ["## Predicted vs measured", "",
             "Predicted before training: surgical configurations by relative gradient norm "
             "(Lee et al. 2023), prefix configurations by the LogME of the features after the "
             "last transferred block (You et al. 2021); the two orders alternate. Measured: "
             f"mean {metric} over seeds, ranked among the predicted configurations that ran.", "",
             f"| predicted rank | configuration | predictor | score | measured rank | {metric} |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        got = "not run" if r["measured"] is None else f"{float(r['measured']):.4f}"
        lines.append(f"| {r['predicted_rank']} | {r['label']} | {r['predictor']} | "
                     f"{r['score']:.4g} | {r['measured_rank'] or '-'} | {got} |")
    lines.append("")
    if unranked:
        lines.append(f"Not ranked: {', '.join(unranked.values())} (trains no parameter: LogME "
                     "scores features for a newly trained head, and no predictor scores a "
                     "configuration that trains nothing).")
        lines.append("")
    lines.append(f"Kendall's tau over {tau.n} measured configurations: "
                 + (f"{tau.tau:.2f} (p = {tau.pvalue:.2g})." if not tau.reason
                    else f"n/a ({tau.reason})."))
    return "\n".join(lines) + "\n", rows

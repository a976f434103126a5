"""The ISBI 2012 challenge's metrics for binary membrane segmentation (:class:`MembraneMetric`):
the foreground-restricted Rand error, the information-theoretic score V_info and the pixel
error, each at the model's prediction and as the best over thresholds of the cell probability.

Class 1 is the cell interior, class 0 the membrane (ISBI 2012's label PNGs: 255 = cell). For one
image, a threshold ``t`` turns the cell probability ``p`` into the binary map ``p > t``; then:

- **Segments.** The segments are the 4-connected components of the cell pixels
  (``skimage.measure.label(..., connectivity=1)``), of the ground truth and of the thresholded map
  alike. This is the connectivity of the challenge's own code (Fiji's
  ``trainableSegmentation.metrics.RandError`` and ``VariationOfInformation`` label both images
  with ``Utils.connectedComponents(image, 4)``): two cells touching only at a corner are two cells.
- **Foreground restriction.** Only the ground truth's cell pixels are scored: a pixel on a true
  membrane is in no pair and no distribution (``ignore_labels=(0,)`` in scikit-image's metrics).
  A pixel the prediction puts on a membrane inside a true cell is a segment of its own, as in the
  Fiji code, which prunes the prediction's zero component: it joins no pair and adds its own
  ``1/n`` to the prediction's distribution.
- **Rand error** = 1 - the Rand F-score. With ``n_ij`` the scored pixels in true segment ``i``
  and predicted segment ``j``, and ``a_i``, ``b_j`` the segments' sizes,
  ``F = 2 TP / (P_true + P_pred)``, where ``TP = sum_ij C(n_ij, 2)`` (pairs together in both),
  ``P_true = sum_i C(a_i, 2)`` and ``P_pred = sum_j C(b_j, 2)``: the harmonic mean of the Rand
  split and merge scores, computed by ``skimage.metrics.adapted_rand_error`` (``alpha = 0.5``).
  When neither segmentation holds a pair, every pair agrees: ``F = 1``.
- **V_info** = ``2 I(S; T) / (H(S) + H(T))``: the harmonic mean of the information-theoretic
  split score ``I / H(S)`` and merge score ``I / H(T)`` (``V^Info`` with ``alpha = 1/2`` in
  Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation algorithms for
  connectomics", Front. Neuroanat. 2015), ``S`` the predicted and ``T`` the true segments, as
  distributions over the scored pixels. ``H(T | S)`` comes from
  ``skimage.metrics.variation_of_information`` (whose sum ``H(S | T) + H(T | S)`` is the variation
  of information), and ``I = H(T) - H(T | S)``. A score: higher is better, 1 is perfect. When
  ``H(S) + H(T) = 0`` (both one segment) it is 1.
- **Pixel error** = the fraction of scored pixels, membrane and cell, where ``p > t`` disagrees
  with the ground truth: 1 - pixel accuracy of the binary map.

Pixels whose target is ``ignore_index`` count nowhere: not in the pixel error, not in the Rand
error or V_info, and they separate the true segments (they are no cell pixel); the prediction is
thresholded everywhere, so its segments are where it puts them. An image whose ground truth holds
fewer than two cell pixels has no pair to score and is left out of the Rand error and V_info; one
with no scored pixel is left out of the pixel error.

**Averaging and the best threshold.** Each metric is computed per image and averaged over the
images, as the challenge averaged over the slices of its stack. The *best over thresholds* is the
best of those averages over a grid of thresholds (default 0.05, 0.10, ..., 0.95; ties to the
lowest threshold): one threshold for the whole data set, as the challenge scored a submitted
probability stack. The values "at the prediction" use ``t = 0.5``, at which ``p > t`` is the
argmax of a two-class softmax (a tie goes to the membrane in both).

The challenge's revised leaderboard (2016) scores ``V_rand`` and ``V_info`` *after thinning*: the
predicted segments are first grown over the predicted membrane. That is not done here; these are
the foreground-restricted scores on the segments as predicted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.errors import InputError

# The thresholds of the best-over-thresholds scores: 0.05, 0.10, ..., 0.95.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * step, 2) for step in range(1, 20))
# The threshold of the model's own prediction: p > 0.5 is the argmax of two classes.
PREDICTION_THRESHOLD = 0.5
# The metrics, in the order of MembraneMetric's rows, and whether lower is better.
METRICS: tuple[str, ...] = ("rand_error", "v_info", "pixel_error")
LOWER_IS_BETTER = {"rand_error": True, "v_info": False, "pixel_error": True}
_RAND, _INFO, _PIXEL = range(3)


def summary_direction(key: str) -> bool:
    """Whether lower is better for a value of :meth:`MembraneMetric.summary` that ranks models:
    a metric at the prediction (``"rand_error"``) or at its best threshold (``"best_rand_error"``).

    Raises:
        KeyError: ``key`` is neither.
    """
    return LOWER_IS_BETTER[key.removeprefix("best_")]


# The summary values that rank models: each metric at the prediction and at its best threshold.
RANKING_KEYS: tuple[str, ...] = tuple(prefix + name for name in METRICS for prefix in ("", "best_"))


# -- label images ---------------------------------------------------------------------------------

def cell_segments(cells: np.ndarray) -> np.ndarray:
    """The 4-connected components of a boolean cell map: ``1 .. K`` on cells, 0 elsewhere (int64)."""
    # Imported here: scikit-image (with scipy.ndimage and scipy.sparse) adds about 0.2 s to every
    # `import pixelwise`, and only these metrics need it.
    from skimage.measure import label

    return label(np.asarray(cells, dtype=bool), connectivity=1).astype(np.int64)


def rand_error(true_labels: np.ndarray, predicted_labels: np.ndarray) -> float:
    """1 - the Rand F-score of two label images, true label 0 ignored (scikit-image's
    ``adapted_rand_error``; 0.0 when neither holds two pixels of one segment).

    Args:
        true_labels: ground-truth segment ids, 0 where nothing is scored.
        predicted_labels: predicted segment ids (0 is an ordinary segment), the same shape.
    """
    return _rand_error(_contingency(true_labels, predicted_labels))


def v_info(true_labels: np.ndarray, predicted_labels: np.ndarray) -> float:
    """The information-theoretic score ``2 I(S; T) / (H(S) + H(T))`` of two label images, true
    label 0 ignored (1.0 when both are one segment, or nothing is scored).

    Args:
        true_labels: ground-truth segment ids ``T``, 0 where nothing is scored.
        predicted_labels: predicted segment ids ``S`` (0 is an ordinary segment), the same shape.
    """
    return _v_info(true_labels, predicted_labels, _contingency(true_labels, predicted_labels))


def _contingency(true_labels: np.ndarray, predicted_labels: np.ndarray):
    """The sparse table of pixel counts, rows true ids, columns predicted ids, true 0 dropped."""
    from skimage.metrics import contingency_table  # imported here: see cell_segments

    true_labels, predicted_labels = np.asarray(true_labels), np.asarray(predicted_labels)
    if true_labels.shape != predicted_labels.shape:
        raise InputError(f"label images of shapes {true_labels.shape} and {predicted_labels.shape}")
    return contingency_table(true_labels, predicted_labels, ignore_labels=(0,), sparse_type="array")


def _rand_error(table) -> float:
    """1 - the Rand F-score of a contingency table of counts."""
    from skimage.metrics import adapted_rand_error  # imported here: see cell_segments

    true_pairs, predicted_pairs = (table.sum(axis=1) > 1).any(), (table.sum(axis=0) > 1).any()
    if not (true_pairs and predicted_pairs):
        # No pair together on one side: no pair together on both (F = 0), unless neither has one
        # (every pair agrees, F = 1). scikit-image would divide 0 by 0 for its precision or recall.
        return 1.0 if true_pairs or predicted_pairs else 0.0
    return float(adapted_rand_error(table=table)[0])


def _v_info(true_labels: np.ndarray, predicted_labels: np.ndarray, table) -> float:
    """``2 I(S; T) / (H(S) + H(T))`` of two label images and their contingency table of counts."""
    from skimage.metrics import variation_of_information  # imported here: see cell_segments

    total = table.sum()
    if total == 0:
        return 1.0
    joint = table / total
    true_entropy, predicted_entropy = _entropy(joint.sum(axis=1)), _entropy(joint.sum(axis=0))
    if true_entropy + predicted_entropy == 0:
        return 1.0  # both are one segment
    # The images only pass its shape check: given a table, it computes from the table alone.
    _, true_given_predicted = variation_of_information(true_labels, predicted_labels, table=joint)  # bits
    information = max(true_entropy - float(true_given_predicted), 0.0)
    return min(2 * information / (true_entropy + predicted_entropy), 1.0)


def _entropy(probabilities: np.ndarray) -> float:
    """Shannon entropy in bits of a distribution given as an array of probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    probabilities = probabilities[probabilities > 0]
    return float(-(probabilities * np.log2(probabilities)).sum())


# -- one image ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MembraneScores:
    """The metrics of one image at each threshold (arrays aligned with ``thresholds``); the Rand
    error and V_info are NaN when the image has fewer than two scored cell pixels, the pixel
    error when it has no scored pixel."""

    thresholds: tuple[float, ...]
    rand_error: np.ndarray
    v_info: np.ndarray
    pixel_error: np.ndarray


def membrane_scores(cell_probability: np.ndarray | Tensor, target: np.ndarray | Tensor,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    ignore_index: int | None = IGNORE_INDEX) -> MembraneScores:
    """The Rand error, V_info and pixel error of one image at each threshold (see the module).

    Args:
        cell_probability: ``H x W`` probabilities of class 1 (cell interior).
        target: ``H x W`` ground truth: 0 membrane, 1 cell, or ``ignore_index``.
        thresholds: a pixel is predicted cell where its probability is above the threshold.
        ignore_index: target value of pixels that count nowhere; ``None`` for none.
    """
    probability, target = _check_image(cell_probability, target, ignore_index)
    thresholds = _check_thresholds(thresholds)
    scored = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    true_cells = target == 1
    scores = np.full((3, len(thresholds)), np.nan)
    if scored.any():
        scores[_PIXEL] = [np.count_nonzero(((probability > t) != true_cells) & scored) / np.count_nonzero(scored)
                          for t in thresholds]
    if np.count_nonzero(true_cells) >= 2:
        true_ids = cell_segments(true_cells)[true_cells]
        for column, threshold in enumerate(thresholds):
            predicted_ids = _predicted_ids(probability > threshold, true_cells)
            table = _contingency(true_ids, predicted_ids)
            scores[_RAND, column] = _rand_error(table)
            scores[_INFO, column] = _v_info(true_ids, predicted_ids, table)
    return MembraneScores(thresholds, *scores)


def _predicted_ids(predicted_cells: np.ndarray, scored_cells: np.ndarray) -> np.ndarray:
    """The predicted segment of each scored cell pixel (flat), each predicted membrane pixel a
    segment of its own."""
    ids = cell_segments(predicted_cells)[scored_cells]
    membrane = ids == 0
    ids[membrane] = ids.max(initial=0) + 1 + np.arange(np.count_nonzero(membrane))
    return ids


def _check_image(cell_probability: np.ndarray | Tensor, target: np.ndarray | Tensor,
                 ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as numpy arrays, after checking shapes, dtypes and values."""
    probability, target = _as_numpy(cell_probability), _as_numpy(target)
    if probability.ndim != 2 or probability.shape != target.shape:
        raise InputError(f"cell probability {probability.shape} and target {target.shape} must be one H x W shape")
    if not np.issubdtype(probability.dtype, np.floating):
        raise InputError(f"cell probability must be floating point, got {probability.dtype}")
    if not np.issubdtype(target.dtype, np.integer):
        raise InputError(f"target must hold integer class indices, got {target.dtype}")
    if not ((probability >= 0) & (probability <= 1)).all():
        raise InputError("cell probability must lie in [0, 1] (NaN neither)")
    target = target.astype(np.int64)
    legal = (target == 0) | (target == 1)
    if ignore_index is not None:
        legal |= target == ignore_index
    if not legal.all():
        allowed = "" if ignore_index is None else f" or ignore_index {ignore_index}"
        raise InputError(f"target of a membrane metric must be 0 (membrane), 1 (cell){allowed}; got values "
                         f"{np.unique(target[~legal])[:10].tolist()} in {np.count_nonzero(~legal)} pixels")
    return probability, target


def _as_numpy(values: np.ndarray | Tensor) -> np.ndarray:
    """A CPU numpy array of a tensor (bfloat16 and float16 as float32) or of an array."""
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        return (values.float() if values.is_floating_point() else values).numpy()
    return np.asarray(values)


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """The thresholds as a tuple of floats, after checking they are distinct and in ``[0, 1)``."""
    values = tuple(float(threshold) for threshold in thresholds)
    if not values or len(set(values)) != len(values) or not all(0 <= value < 1 for value in values):
        raise InputError(f"thresholds must be distinct values in [0, 1), at least one; got {list(thresholds)}")
    return values


# -- streaming over a data set ------------------------------------------------------------------

class MembraneMetric:
    """Streaming ISBI 2012 metrics over a data set (defined in :mod:`pixelwise.metrics.membrane`):
    per-image Rand error, V_info and pixel error at each threshold, averaged over images.

    It holds per-threshold sums over images (``sums``, float64 ``3 x T``, rows as :data:`METRICS`)
    and how many images each metric counted (``images``, int64 ``3``), so metrics of several data
    loaders or processes add up (:meth:`merge`, :meth:`all_reduce`) to the average of all their
    images. The per-image values are float, so it is not a :class:`SummedCounts`, but it combines
    the same way. Each image is scored on the CPU with scikit-image.

    Args:
        ignore_index: target value of pixels that count nowhere; ``None`` for none. Not 0 or 1.
        thresholds: the grid of the best-over-thresholds scores (default 0.05, ..., 0.95). The
            prediction's threshold 0.5 is scored too, and is a candidate only if in the grid.
        device: where ``sums`` and ``images`` live (CUDA for an NCCL :meth:`all_reduce`).

    Example:
        >>> metric = MembraneMetric()
        >>> target = torch.tensor([[1, 1, 0, 1, 1]] * 3)
        >>> metric.update(target, target.float())
        >>> metric.summary()["rand_error"], metric.summary()["pixel_error"]
        (0.0, 0.0)
    """

    def __init__(self, ignore_index: int | None = IGNORE_INDEX, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 device: torch.device | str | None = None) -> None:
        if ignore_index in (0, 1):
            raise InputError(f"ignore_index {ignore_index} is a class index of a membrane metric; use e.g. 255")
        self.ignore_index = ignore_index
        self.thresholds = _check_thresholds(thresholds)
        # Scored: the grid, with the prediction's threshold added where the grid lacks it.
        self.scored_thresholds = tuple(sorted({*self.thresholds, PREDICTION_THRESHOLD}))
        self.sums = torch.zeros(3, len(self.scored_thresholds), dtype=torch.float64, device=device)
        self.images = torch.zeros(3, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, target: Tensor, cell_probability: Tensor) -> None:
        """Score images and add them up.

        Args:
            target: ground truth ``H x W`` or ``N x H x W`` (leading dimensions are images): 0
                membrane, 1 cell, or ``ignore_index``.
            cell_probability: the probability of class 1, the same shape.
        """
        if target.shape != cell_probability.shape or target.dim() < 2:
            raise InputError(f"target {tuple(target.shape)} and cell probability {tuple(cell_probability.shape)} "
                             "must be one H x W or N x H x W shape")
        height, width = target.shape[-2:]
        for image_target, probability in zip(target.reshape(-1, height, width),
                                              cell_probability.reshape(-1, height, width)):
            scores = membrane_scores(probability, image_target, self.scored_thresholds, self.ignore_index)
            values = torch.from_numpy(np.stack([scores.rand_error, scores.v_info, scores.pixel_error]))
            counted = ~values[:, 0].isnan()
            self.sums += torch.where(counted[:, None], values, 0.0).to(self.sums.device)
            self.images += counted.to(self.images.device)

    @torch.no_grad()
    def update_logits(self, target: Tensor, logits: Tensor) -> None:
        """Score images from two-class scores ``N x 2 x H x W``: class 1's softmax probability."""
        if logits.dim() != 4 or logits.shape[1] != 2:
            raise InputError(f"logits of a membrane metric must be N x 2 x H x W, got shape {tuple(logits.shape)}")
        self.update(target, logits.float().softmax(dim=1)[:, 1])

    def reset(self) -> None:
        """Forget every image."""
        self.sums.zero_()
        self.images.zero_()

    def merge(self, other: Self) -> Self:
        """Add another metric's images to this one (the same settings); returns this metric."""
        if not isinstance(other, MembraneMetric) or other._settings() != self._settings():
            raise InputError(f"cannot merge {other!r} into {self!r}")
        self.sums += other.sums.to(self.sums.device)
        self.images += other.images.to(self.images.device)
        return self

    def all_reduce(self) -> Self:
        """Sum over every process (``torch.distributed``); a no-op when not initialised."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums, op=dist.ReduceOp.SUM)
            dist.all_reduce(self.images, op=dist.ReduceOp.SUM)
        return self

    def _settings(self) -> dict[str, Any]:
        """What two metrics must share to be merged."""
        return {"ignore_index": self.ignore_index, "thresholds": self.thresholds}

    def curves(self) -> dict[str, list]:
        """Per scored threshold, each metric averaged over images (None when no image counted)."""
        means = (self.sums.cpu() / self.images.cpu()[:, None]).tolist()
        return {"thresholds": list(self.scored_thresholds),
                **{name: [None if value != value else value for value in row] for name, row in zip(METRICS, means)}}

    def best(self, name: str) -> tuple[float | None, float | None]:
        """A metric's best average over the grid and its threshold (None, None before any image)."""
        curve = self.curves()[name]
        candidates = [(value, threshold) for value, threshold in zip(curve, self.scored_thresholds)
                      if threshold in self.thresholds and value is not None]
        if not candidates:
            return None, None
        sign = 1 if LOWER_IS_BETTER[name] else -1
        return min(candidates, key=lambda pair: (sign * pair[0], pair[1]))

    def summary(self) -> dict:
        """The metrics, JSON-able, without NaN.

        Returns:
            ``rand_error``, ``v_info`` and ``pixel_error`` at the prediction (threshold 0.5);
            ``best_NAME`` and ``best_NAME_threshold`` for each; ``membrane_images`` (images in
            the Rand error and V_info) and ``pixel_error_images``. Averages of no image are None.
        """
        curves = self.curves()
        column = self.scored_thresholds.index(PREDICTION_THRESHOLD)
        stats: dict[str, Any] = {name: curves[name][column] for name in METRICS}
        for name in METRICS:
            stats[f"best_{name}"], stats[f"best_{name}_threshold"] = self.best(name)
        stats["membrane_images"], stats["pixel_error_images"] = int(self.images[_RAND]), int(self.images[_PIXEL])
        return stats

    def __repr__(self) -> str:
        stats = self.summary()
        return (f"MembraneMetric(ignore_index={self.ignore_index}, thresholds={len(self.thresholds)}, "
                f"images={stats['membrane_images']}, rand_error={stats['rand_error']})")


def membrane_rows(stats: dict) -> list[tuple[str, str, str, str]]:
    """The cells of a table of the metrics in a summary: metric, at the prediction, best over
    thresholds, the best's threshold (4 decimals; '-' where undefined)."""
    def cell(value: float | None, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    labels = {"rand_error": "Rand error", "v_info": "V_info (higher is better)", "pixel_error": "pixel error"}
    return [(labels[name], cell(stats[name]), cell(stats[f"best_{name}"]), cell(stats[f"best_{name}_threshold"], 2))
            for name in METRICS]

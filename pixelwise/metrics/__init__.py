"""Streaming confusion matrix for semantic segmentation, every metric derived from it, and
boundary metrics (:class:`BoundaryMetric`: Boundary IoU and trimap accuracy near class edges).
Both are :class:`SummedCounts`: int64 counts that add up over batches, processes and runs.
For binary membrane data, :class:`MembraneMetric` scores the ISBI 2012 challenge's metrics (Rand
error, V_info, pixel error, per image and over thresholds; :mod:`pixelwise.metrics.membrane`).

:class:`ConfusionMatrix` counts pixels: ``matrix[i, j]`` is the number of pixels whose ground
truth is class ``i`` and whose prediction is class ``j`` (rows = ground truth, columns =
prediction), in int64. The metrics are functions of that matrix alone, so a matrix summed over
batches, processes or saved runs gives exactly the metric of all their pixels together.

The rules, stated once:

- **Ignore pixels never count.** A pixel whose target is ``ignore_index`` adds nothing to the
  matrix, whatever was predicted there. Predictions have no ignore value: every prediction must
  be a class in ``[0, num_classes)``. Any other target or prediction value is an error (a
  ``ValueError`` naming the values and their pixel counts), never silently dropped.
- **Absent classes are skipped, not scored.** A class is *present* when its union is non-zero,
  i.e. it occurs in the ground truth or in the prediction (of counted pixels). Per-class IoU and
  Dice are NaN for an absent class; mean IoU and mean Dice average over present classes only. A
  class that is predicted but absent from the ground truth is present: its IoU is 0 and it
  lowers the mean (those are real false positives). Mean class accuracy (mean recall) averages
  over the classes present in the *ground truth*, since recall has no denominator otherwise.
- **Nothing is NaN in a summary.** When no pixel has been counted (a fresh matrix, or only
  ignore pixels so far) the means and pixel accuracy are 0.0, and :meth:`summary` writes
  ``None`` (JSON ``null``) for undefined per-class values; ``num_pixels`` says how much was
  counted.
- **Background is an ordinary class.** Class 0 is averaged like any other; to leave a class out
  of training and evaluation, relabel it to the ignore index in the data.

Compared with torchmetrics 1.9 (``MulticlassJaccardIndex``, ``MulticlassAccuracy``,
``MulticlassF1Score`` with ``ignore_index=255``, which also drop ignore pixels entirely):

- ``average="macro"`` Jaccard and F1 also skip classes with ``tp + fp + fn == 0``: they equal
  our mean IoU and mean Dice. ``average="weighted"`` Jaccard equals our frequency-weighted IoU,
  and ``MulticlassAccuracy(average="micro")`` our pixel accuracy.
- ``average="none"`` gives 0 (``zero_division``) for an absent class where we give NaN, so a
  mean taken over its output counts absent classes as failures.
- ``MulticlassAccuracy(average="macro")`` averages recall over classes present in the ground
  truth *or the prediction*: a class that is only predicted counts as recall 0. Our mean class
  accuracy skips it (the FCN paper's definition, over ground-truth classes).
- With nothing counted, macro and weighted Jaccard return NaN; we return 0.0.
- An ``ignore_index`` inside ``[0, num_classes)`` makes torchmetrics drop that class's target
  pixels and leave it out of the Jaccard averages, while its predictions still count against
  other classes; here such an ``ignore_index`` is refused (as in
  :class:`~pixelwise.data.classes.ClassInfo`).

torchvision's ``references/segmentation/utils.ConfusionMatrix`` counts the same way but takes a
plain mean of per-class IoU, so one absent class makes its mean IoU NaN.

``update`` is built for speed on the CPU: the matrix cell of each pixel is
``target * num_classes + prediction`` and ``torch.bincount`` counts them, in cache-sized chunks
on one core (see ``confusion.CPU_CHUNK``). Ignore pixels
are not removed first (boolean-mask compaction copies both tensors); their index falls into
extra bins that are dropped afterwards, and out-of-range targets fall into bins that are checked
to be empty. See ``benchmarks/metrics.py``.
"""
from pixelwise.metrics.boundary import BoundaryMetric
from pixelwise.metrics.confusion import ConfusionMatrix
from pixelwise.metrics.counts import SummedCounts
from pixelwise.metrics.membrane import (RANKING_KEYS, MembraneMetric, MembraneScores, cell_segments, membrane_rows,
                                        membrane_scores, rand_error, summary_direction, v_info)
from pixelwise.metrics.scores import (class_accuracy, dice, frequency_weighted_iou, intersection_over_union,
                                      mean_class_accuracy, mean_dice, mean_iou, pixel_accuracy, summarize)
from pixelwise.metrics.table import MetricsTable, format_percent, format_table, metrics_table

__all__ = [
    "SummedCounts", "ConfusionMatrix", "intersection_over_union", "mean_iou", "pixel_accuracy", "class_accuracy",
    "mean_class_accuracy", "frequency_weighted_iou", "dice", "mean_dice", "summarize", "MetricsTable",
    "metrics_table", "format_percent", "format_table", "BoundaryMetric", "MembraneMetric", "MembraneScores",
    "membrane_scores", "membrane_rows", "cell_segments", "rand_error", "v_info", "RANKING_KEYS", "summary_direction",
]

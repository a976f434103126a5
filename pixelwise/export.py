"""Export a trained model to ONNX (fp32 or int8) or TorchScript, with a parity check, or its
weights and record to a safetensors file or a model folder. Every file is written by its
format's writer in :mod:`pixelwise.io.model_file`.

**Dynamic sizes.** The ONNX graph is exported with ``torch.export`` with symbolic batch, height
and width, from an example of an awkward size (no multiple of any stride), so the models'
internal pad-and-crop becomes shape arithmetic in the graph: the file predicts any ``N×3×H×W``
at the input's size, as the PyTorch model does.

**Self-contained.** The file carries what prediction needs in its ``metadata_props``: class
names, palette and ignore index, normalisation, the model spec, the precision, the recorded
inference options and the pixelwise version, so ``pixelwise predict --model F.onnx`` needs no
checkpoint and no recipe (:func:`~pixelwise.inference.loading.load_onnx`). A SHA-256 digest
of that metadata (``pixelwise.checksum``) is verified when the file is opened, and the record is
checked against the graph.

**Parity.** After export, ONNX Runtime runs the file beside eager PyTorch on random and real
images at three sizes; the maximum logit difference and the argmax agreement are reported. fp32
must agree within ``1e-3`` of the logits' scale: both sides compute the same float32 arithmetic
in different orders (oneDNN against MLAS kernels, fused against separate batch norms), which
leaves differences of order 1e-6 of the scale per layer; a wrong graph (a constant-folded size,
a dropped branch) is off by the scale itself. int8 is judged by argmax agreement and, with a
calibration data set, by the mIoU it keeps. A failing parity is an error, and the file is not
left behind: everything is written to a temporary name and renamed only once it passed.

**Files.** The target is checked before any work: an existing file is replaced only with
``overwrite=True``, the checkpoint itself never, a folder (but for a model folder export, which
replaces only a model folder) or an unwritable folder is refused.
Temporaries are named ``.NAME[.ROLE].PID.tmp``; those of an export killed midway are deleted by
the next export to the same file. Every written file gets the mode of a new file (``0o666``
less the umask).

**int8.** ONNX Runtime's static quantisation in QDQ form with per-channel weights, calibrated on
real images of a data set (see :func:`quantize_int8`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pixelwise.data import DataSpec, RecordedData
from pixelwise.data.io import DataError
from pixelwise.data.transforms import val_transform
from pixelwise.errors import InputError, PixelwiseError
from pixelwise.inference.evaluation import evaluate_loaded
from pixelwise.inference.loading import LoadedModel, load_model
from pixelwise.inference.logits import InferenceOptions, normalize_image
from pixelwise.io.atomic import publish, remove_orphan_temporaries, temporary_name
from pixelwise.io.model_file import ModelFile, read_model_file, write_folder, write_onnx, write_safetensors, \
    write_torchscript
from pixelwise.io.record import ModelRecord
from pixelwise.io.safetensors_file import FOLDER_FILES
from pixelwise.runtimes.onnx_graph import EXAMPLE_SIZE, ExportError, exporter_summary, onnx_proto
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.runtimes.torch_runtime import TorchRuntime

PARITY_SIZES = ((253, 317), (97, 131), (33, 47))
FP32_TOLERANCE = 1e-3
"""Largest accepted max |logit difference| of an fp32 export, relative to the logits' scale."""
FORMATS = ("onnx", "torchscript", "safetensors", "folder")


# ONNX export ---------------------------------------------------------------------------------

def _export_blocker(spec: dict[str, Any]) -> str | None:
    """Why a model spec cannot export to ONNX, with the workaround (``None``: it can)."""
    options = spec.get("options", {})
    if spec["name"] == "unet" and options.get("encoder") is None and options.get("padding", "valid") == "valid":
        return ("the paper U-Net with padding='valid' mirrors the image outwards by amounts that depend on its "
                "size (overlap-tile, a loop of ReflectionPad operations), which an ONNX graph cannot express; "
                "train it with model.options.padding=same to export it, or predict from the checkpoint")
    return None


# Parity ----------------------------------------------------------------------------------------

@dataclass
class ParityRow:
    """One input of a parity check."""

    input: str
    size: tuple[int, int]
    max_abs_diff: float
    logit_scale: float
    argmax_agreement: float


@dataclass
class ParityReport:
    """ONNX Runtime against eager PyTorch on the same inputs."""

    precision: str
    rows: list[ParityRow] = field(default_factory=list)
    min_agreement: float = 0.9

    @property
    def max_abs_diff(self) -> float:
        return max(row.max_abs_diff for row in self.rows)

    @property
    def lowest_agreement(self) -> float:
        return min(row.argmax_agreement for row in self.rows)

    def failures(self) -> list[str]:
        """What did not hold (empty: passed)."""
        if self.precision == "int8":
            real = [row for row in self.rows if row.input != "random"]
            return [f"{row.input} {row.size[0]}×{row.size[1]}: argmax agreement {row.argmax_agreement:.1%} "
                    f"< {self.min_agreement:.0%}" for row in real if row.argmax_agreement < self.min_agreement]
        return [f"{row.input} {row.size[0]}×{row.size[1]}: max |logit difference| {row.max_abs_diff:.3g} > "
                f"{FP32_TOLERANCE:g} × scale {row.logit_scale:.3g}" for row in self.rows
                if row.max_abs_diff > FP32_TOLERANCE * max(1.0, row.logit_scale)]

    def lines(self) -> list[str]:
        """One printable line per input."""
        return [f"{row.input:>8} {row.size[0]:>4}×{row.size[1]:<4} max |logit diff| {row.max_abs_diff:.2e} "
                f"(scale {row.logit_scale:.3g}), argmax agreement {row.argmax_agreement:.4%}" for row in self.rows]


def parity_inputs(real_images: Sequence[np.ndarray], normalization: dict[str, list[float]],
                  sizes: Sequence[tuple[int, int]] = PARITY_SIZES, seed: int = 0) -> list[tuple[str, Tensor]]:
    """Random images and crops of real ones (resized up when smaller), normalised, at each size."""
    generator = torch.Generator().manual_seed(seed)
    inputs = [("random", torch.randn(1, 3, *size, generator=generator)) for size in sizes]
    for pixels in real_images[:1]:
        image = normalize_image(pixels, normalization)[None]
        for height, width in sizes:
            if image.shape[-2] < height or image.shape[-1] < width:
                image = torch.nn.functional.interpolate(image, size=(max(height, image.shape[-2]),
                                                                     max(width, image.shape[-1])), mode="bilinear")
            inputs.append(("real", image[..., :height, :width].contiguous()))
    return inputs


def check_parity(reference: Callable[[Tensor], Tensor], candidate: Callable[[Tensor], Tensor],
                 inputs: Iterable[tuple[str, Tensor]], precision: str = "fp32", min_agreement: float = 0.9,
                 ) -> ParityReport:
    """Run both on each input and compare their logits."""
    report = ParityReport(precision, min_agreement=min_agreement)
    for label, batch in inputs:
        with torch.inference_mode():
            expected, actual = reference(batch).float(), candidate(batch).float()
        if actual.shape != expected.shape:
            raise ExportError(f"the export returned logits of shape {tuple(actual.shape)} for input "
                              f"{tuple(batch.shape)}; the model returns {tuple(expected.shape)}")
        agreement = (expected.argmax(1) == actual.argmax(1)).float().mean().item()
        report.rows.append(ParityRow(label, tuple(batch.shape[-2:]), (expected - actual).abs().max().item(),
                                     expected.abs().max().item(), agreement))
    return report


# int8 ------------------------------------------------------------------------------------------

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Options:
    """How to quantise: calibration data, method, and where to measure the accuracy kept.

    Attributes:
        calibrate: ``FORMAT:ROOT:SPLIT`` of the calibration images (e.g. ``camvid:data/camvid:train``).
        images: how many calibration images (spread evenly over the split).
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"`` activation ranges.
        reduce_range: 7-bit weights (for CPUs without VNNI, where 8-bit products can saturate).
        val_split: the split of the same data set on which fp32 and int8 mIoU are compared
            (``None``: no comparison).
        val_images: compare on the first ``val_images`` images only (``None``: all).
        min_agreement: the smallest argmax agreement with the fp32 model, on real images, that
            the parity check accepts.
    """

    calibrate: str
    images: int = 32
    method: str = "minmax"
    reduce_range: bool = False
    val_split: str | None = "val"
    val_images: int | None = None
    min_agreement: float = 0.9

    def data(self, split: str | None = None) -> DataSpec:
        """The calibration data set, or another split of it."""
        parts = self.calibrate.split(":")
        if len(parts) != 3 or not parts[0] or not parts[2]:
            raise InputError(f"--calibrate takes FORMAT:ROOT:SPLIT, e.g. camvid:data/camvid:train (ROOT empty for "
                             f"the built-in synthetic set: synthetic::train); got {self.calibrate!r}")
        data_format, root, calibration_split = parts
        return DataSpec(data_format, root or None, split or calibration_split)


def calibration_batches(options: Int8Options, normalization: dict[str, list[float]]) -> list[np.ndarray]:
    """The calibration images, normalised as the model was trained, as ``(1, 3, H, W)`` arrays."""
    if options.method not in CALIBRATION_METHODS:
        raise InputError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {options.method!r}")
    if options.images < 1:
        raise InputError(f"--calibration-images must be positive, got {options.images}")
    data = options.data()
    dataset = data.create_dataset(val_transform(**normalization))
    if len(dataset) == 0:
        raise InputError(f"calibration split {data.split!r} of the {data.format} data set holds no images")
    count = min(options.images, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    return [dataset[int(index)][0][None].numpy() for index in indices]


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, batches: Sequence[np.ndarray],
                  method: str = "minmax", reduce_range: bool = False) -> None:
    """ONNX Runtime static quantisation: QDQ, per-channel int8 weights, uint8 activations whose
    ranges come from running ``batches`` through the fp32 model.

    uint8 activations with int8 weights are what ONNX Runtime's x86 kernels (VNNI among them)
    run fastest; ``reduce_range`` (7-bit weights) only matters where 8-bit products saturate,
    which VNNI's 32-bit accumulation does not.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {"image": batch}

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[method])


def _record_int8(record: ModelRecord, target: Path) -> None:
    """Quantisation drops ``metadata_props``: write the record again, marked int8."""
    import onnx  # optional at import: only ONNX users need it

    write_onnx(onnx.load(str(target)), record.replace(precision="int8"), target)


def compare_accuracy(fp32: OnnxRuntime, int8: OnnxRuntime, loaded: LoadedModel, options: Int8Options,
                     on_line: Callable[[str], None]) -> dict[str, float]:
    """fp32 and int8 mIoU (and the argmax agreement) on the validation split, side by side."""
    data = options.data(options.val_split)
    scores = {}
    for label, runtime in (("fp32", fp32), ("int8", int8)):
        result = evaluate_loaded(loaded._replace(model=runtime), data, InferenceOptions.create(),
                                 limit=options.val_images)
        scores[f"{label}_miou"] = result.summary()["mean_iou"]
        scores["images"] = result.num_images
    scores["miou_loss_points"] = 100 * (scores["fp32_miou"] - scores["int8_miou"])
    on_line(f"mIoU on {data.format} {data.split} ({scores['images']} images): fp32 "
            f"{100 * scores['fp32_miou']:.2f}%, int8 {100 * scores['int8_miou']:.2f}% "
            f"(int8 - fp32: {-scores['miou_loss_points']:+.2f} points)")
    return scores


# The whole export ------------------------------------------------------------------------------

@dataclass
class ExportReport:
    """What :func:`export_checkpoint` wrote and measured."""

    path: Path
    format: str
    precision: str
    parity: ParityReport | None = None
    fp32_parity: ParityReport | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class ExportTargetError(PixelwiseError, ValueError):
    """The file an export would write is not one it may write."""


def check_target(checkpoint: str | Path, out: str | Path, overwrite: bool = False, folder: bool = False) -> Path:
    """``out``, once it is known that an export of ``checkpoint`` may be written there: not the
    checkpoint itself, not an existing file unless ``overwrite``, in a folder this process can
    write (created if absent). A file export refuses a folder; a model folder export
    (``folder=True``) replaces only a model folder, and only with ``overwrite``.

    Raises:
        ExportTargetError: which of these failed, and what to pass instead.
    """
    out, checkpoint = Path(out), Path(checkpoint)
    if out.is_dir() and not folder:
        raise ExportTargetError(f"--out {str(out)!r} is a folder; name the file to write, e.g. "
                                f"{str(out / 'model.onnx')!r}")
    if folder and out.exists() and not _is_replaceable_folder(out):
        raise ExportTargetError(f"--out {str(out)!r} exists and is not a model folder (it holds more than "
                                f"{' and '.join(FOLDER_FILES)}); name a new folder")
    if _same_file(checkpoint, out) or (out.is_dir() and checkpoint.resolve().is_relative_to(out.resolve())):
        raise ExportTargetError(f"--out {str(out)!r} is the checkpoint being exported; write the export to another "
                                f"file (the source is never replaced, --overwrite or not)")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ExportTargetError(f"--out {str(out)!r} exists; pass --overwrite to replace it, or choose another file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(out, "probe")
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise ExportTargetError(f"cannot write into the folder of --out {str(out)!r} ({error.strerror or error}); "
                                f"choose a folder you can write to") from None
    return out


def _is_replaceable_folder(path: Path) -> bool:
    """A model folder an export may replace: a real folder holding only a model's files."""
    return path.is_dir() and not path.is_symlink() and all(item.name in FOLDER_FILES for item in path.iterdir())


def _same_file(first: Path, second: Path) -> bool:
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def export_checkpoint(checkpoint: str | Path, out: str | Path, export_format: str = "onnx", parity: bool = True,
                      real_images: Sequence[np.ndarray] = (), int8: Int8Options | None = None,
                      on_line: Callable[[str], None] | None = None, overwrite: bool = False) -> ExportReport:
    """Export a trained model; check it against eager PyTorch before the file is kept.

    Args:
        checkpoint: a file that holds the model's weights: a checkpoint written by
            ``pixelwise train`` (``.pt``), a safetensors export or a model folder.
        out: the file (or, for ``"folder"``, the folder) to write.
        export_format: ``"onnx"``, ``"torchscript"``, ``"safetensors"`` (weights and record in
            one file) or ``"folder"`` (``config.json`` + ``model.safetensors``); the last two
            hold the weights themselves, so they need no parity check.
        parity: run the parity check (ONNX and TorchScript).
        real_images: ``(H, W, 3)`` uint8 images for the parity check (random images are always
            used; default: the first image of the recorded validation split, where it is readable).
        int8: quantise to int8 (ONNX only), calibrated and measured as these options say.
        on_line: receives progress lines.
        overwrite: replace an existing ``out`` (never the checkpoint itself).

    Raises:
        ExportTargetError: ``out`` may not be written (see :func:`check_target`); checked, as
            the calibration data are, before any work.
        ExportError: the model does not export, or the parity check failed (nothing is written).
    """
    if export_format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    out = check_target(checkpoint, out, overwrite, folder=export_format == "folder")
    remove_orphan_temporaries(out.parent, out.name)  # of an export to the same file that was killed
    source = read_model_file(checkpoint)
    loaded = load_model(source)  # the record checked, the weights fitted to the spec
    if export_format in ("safetensors", "folder"):
        write = write_safetensors if export_format == "safetensors" else write_folder
        write(source.record, source.weights, out)
        return ExportReport(out, export_format, "fp32")
    calibration = None if int8 is None else _int8_data(int8, loaded.normalization)
    say = on_line or (lambda line: None)
    inputs = parity_inputs(list(real_images) or _recorded_images(source, say), loaded.normalization)
    if export_format == "torchscript":
        return _export_torchscript(loaded, source.record, out, inputs if parity else None, say)
    return _export_onnx(loaded, source.record, out, inputs if parity else None, int8, calibration, say)


def _export_onnx(loaded: LoadedModel, record: ModelRecord, out: Path, inputs: list[tuple[str, Tensor]] | None,
                 int8: Int8Options | None, calibration: list[np.ndarray] | None,
                 say: Callable[[str], None]) -> ExportReport:
    """The fp32 graph, checked; then, if asked, its int8 quantisation, checked; the file kept
    published only once every check passed."""
    blocker = _export_blocker(loaded.model_spec)
    if blocker is not None:
        raise ExportError(f"model {loaded.model_spec['name']!r} cannot be exported to ONNX: {blocker}")
    fp32_path = temporary_name(out, "fp32")
    try:
        write_onnx(onnx_proto(loaded.model, loaded.model_spec["name"]), record.replace(precision="fp32"), fp32_path)
        report = ExportReport(out, "onnx", "fp32")
        if inputs is not None:
            report.fp32_parity = report.parity = _checked_parity(loaded.model, OnnxRuntime(fp32_path), inputs,
                                                                 "fp32", say)
        if int8 is None:
            publish(fp32_path, out)
            return report
        int8_path = temporary_name(out, "int8")
        try:
            say(f"calibrating on {int8.images} images of {int8.calibrate} ({int8.method}, "
                f"reduce_range={int8.reduce_range})")
            quantize_int8(fp32_path, int8_path, calibration, int8.method, int8.reduce_range)
            _record_int8(record, int8_path)
            if int8.val_split is not None:
                report.accuracy = compare_accuracy(OnnxRuntime(fp32_path), OnnxRuntime(int8_path, precision="int8"),
                                                   loaded, int8, say)
            report.precision = "int8"
            if inputs is not None:
                report.parity = _checked_parity(loaded.model, OnnxRuntime(int8_path, precision="int8"), inputs,
                                                "int8", say, int8.min_agreement)
            publish(int8_path, out)
        finally:
            int8_path.unlink(missing_ok=True)
    finally:
        fp32_path.unlink(missing_ok=True)
    return report


def _int8_data(options: Int8Options, normalization: dict[str, list[float]]) -> list[np.ndarray]:
    """The calibration images, read before the export starts; the comparison split, opened to
    prove it is there."""
    batches = calibration_batches(options, normalization)
    if options.val_split is not None:
        data = options.data(options.val_split)
        if len(data.create_dataset()) == 0:
            raise InputError(f"--val-split {data.split!r} of the {data.format} data set holds no images; pass "
                             f"another --val-split")
    return batches


def _checked_parity(model: nn.Module, runtime: OnnxRuntime, inputs: list[tuple[str, Tensor]], precision: str,
                    say: Callable[[str], None], min_agreement: float = 0.9) -> ParityReport:
    report = check_parity(TorchRuntime(model), runtime, inputs, precision, min_agreement)
    say(f"parity, ONNX Runtime {precision} against eager PyTorch fp32:")
    for line in report.lines():
        say("  " + line)
    problems = report.failures()
    if problems:
        raise ExportError(f"the {precision} ONNX export does not compute what the model does ("
                          + "; ".join(problems) + "); no file was written")
    return report


def _recorded_images(source: ModelFile, say: Callable[[str], None]) -> list[np.ndarray]:
    """The first image of the checkpoint's recorded validation split, when it can be read."""
    data = source.recipe.get("data") or {}
    if "format" not in data:
        return []
    try:
        dataset = RecordedData().resolve(data).create_dataset()
        image = dataset[0][0] if len(dataset) else None
    except (DataError, FileNotFoundError, ValueError) as error:
        say(f"parity on random images only: the recorded data set cannot be read ({error})")
        return []
    if image is None:
        return []
    return [(image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()]


# TorchScript -------------------------------------------------------------------------------------

def _export_torchscript(loaded: LoadedModel, record: ModelRecord, out: Path,
                        inputs: list[tuple[str, Tensor]] | None, say: Callable[[str], None]) -> ExportReport:
    """Trace the model to TorchScript with its metadata as extra files; parity as for ONNX."""
    model = loaded.model.eval()
    example = torch.randn(1, 3, *EXAMPLE_SIZE)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns at every shape read; the parity check below is the real test.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, example, check_trace=False, strict=False)
    except Exception as error:  # noqa: BLE001 - the tracer raises many types; all mean "cannot trace"
        raise ExportError(f"model {loaded.model_spec['name']!r} cannot be traced to TorchScript: "
                          f"{exporter_summary(error)}") from error
    report = ExportReport(out, "torchscript", "fp32")
    if inputs is not None:
        def run_traced(batch: Tensor) -> Tensor:
            with torch.no_grad():
                return traced(batch)
        try:
            report.parity = check_parity(lambda batch: model(batch), run_traced, inputs, "fp32")
        except RuntimeError as error:
            raise ExportError(f"the TorchScript trace of {loaded.model_spec['name']!r} does not run at every "
                              f"size ({str(error).splitlines()[0]}); export to ONNX instead") from error
        say("parity, TorchScript against eager PyTorch fp32:")
        for line in report.parity.lines():
            say("  " + line)
        if report.parity.failures():
            raise ExportError("the TorchScript trace does not compute what the model does ("
                              + "; ".join(report.parity.failures()) + "); export to ONNX instead; no file was written")
    write_torchscript(traced, record.replace(precision="fp32"), out)
    return report

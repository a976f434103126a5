"""What each command of ``pixelwise`` runs: thin calls into the library, and their printing."""
from __future__ import annotations

import argparse
import inspect
from typing import Sequence

from rich.console import Console
from rich.table import Table

from pixelwise.analysis import trace, valid_input_sizes
from pixelwise.analysis.convolutionalize import convolutionalize_report, torchvision_classifier
from pixelwise.analysis.overlap import compare_upsamplers, overlap_map
from pixelwise.config import load_config
from pixelwise.data import RecordedData
from pixelwise.data.checks import check_dataset, print_report
from pixelwise.data.io import decode_image
from pixelwise.data.weight_map import (border_weight_map, read_binary_mask, save_weight_map_npy,
                                       save_weight_map_png)
from pixelwise.demo import run_demo
from pixelwise.encoders import create_encoder, list_encoders
from pixelwise.errors import InputError
from pixelwise.export import Int8Options, export_checkpoint
from pixelwise.inference.evaluation import evaluate_checkpoint, print_evaluation
from pixelwise.inference.logits import InferenceOptions
from pixelwise.inference.predict import RecordedViews, predict_files
from pixelwise.models import list_models, model_info
from pixelwise.models.build import build_model
from pixelwise.models.zoo import count_parameters, run_zoo, smooth_test_image
from pixelwise.progress import ProgressReport
from pixelwise.serve.app import ServiceLimits, app_for_file
from pixelwise.serve.http import LOOPBACK_HOSTS, WILDCARD_ADDRESSES
from pixelwise.superres.compare import compare_methods, save_comparison_figure, upscale_images
from pixelwise.superres.published import as_dicts, benchmark_of, published_results
from pixelwise.superres.export import export_superres
from pixelwise.superres.train import is_superres_file, load_superres_config, train_superres
from pixelwise.training.distributed import is_main_process
from pixelwise.training.loop import train
from pixelwise.training.recipe import learning_rate

console = Console()
if not console.is_terminal:  # pipes and CI logs: rich's 80-column default would fold every table
    console = Console(width=160)


def cmd_models(args: argparse.Namespace) -> int:
    if args.run_all:
        return _run_zoo(*args.size)
    if args.name:
        info = model_info(args.name)
        console.print(f"[bold]{info.name}[/] ({info.family}) — create_model{inspect.signature(info.builder)}\n")
        console.print(inspect.getdoc(info.builder), markup=False)
        return 0
    table = Table(title=f"pixelwise models (parameters at {args.num_classes} classes)")
    for column in ("name", "family", "default encoder", "parameters", "description"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for name in list_models():
        info = model_info(name)
        table.add_row(name, info.family, info.default_encoder or "(paper's own)",
                      f"{count_parameters(name, args.num_classes) / 1e6:.1f}M", info.description)
    console.print(table)
    console.print("Options and defaults of one model: pixelwise models NAME")
    return 0


def _run_zoo(height: int, width: int) -> int:
    """Every registered model on one image of an awkward size: logits come back at that size."""
    console.print(f"Running every registered model on one synthetic {height}×{width} image (CPU, eval mode)…")
    table = Table(title="pixelwise model zoo")
    for column in ("model", "family", "encoder", "parameters", "input", "output", "ms"):
        table.add_column(column, justify="right" if column in ("parameters", "ms") else "left")
    all_match = True
    for row in run_zoo(smooth_test_image(height, width)):
        match = row.output_shape[-2:] == row.input_shape[-2:]
        all_match &= match
        table.add_row(row.name, row.family, row.encoder, f"{row.parameters / 1e6:.1f}M",
                      "×".join(map(str, row.input_shape)),
                      ("" if match else "[red]") + "×".join(map(str, row.output_shape)), f"{row.milliseconds:.0f}")
    console.print(table)
    console.print("every model returned logits at the input size" if all_match else "[red]size mismatch[/]")
    return 0 if all_match else 1


def cmd_encoders(args: argparse.Namespace) -> int:
    table = Table(title="pixelwise encoders (any timm model too: timm:NAME)")
    for column in ("name", "channels", "strides"):
        table.add_column(column)
    for name in list_encoders():
        encoder = create_encoder(name)
        table.add_row(name, str(encoder.channels), str(encoder.reductions))
    console.print(table)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(console, out_dir=args.out, overrides=args.overrides)


def _parse_model_args(pairs: Sequence[str]) -> dict[str, object]:
    """``["paper=True", "encoder=resnet18"]`` → ``{"paper": True, "encoder": "resnet18"}``: Python
    literals where they parse, the bare string otherwise."""
    import ast

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--model-args takes key=value pairs, got {pair!r}")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return options


def cmd_shapes(args: argparse.Namespace) -> int:
    import json

    model = build_model(args.model, args.num_classes, **_parse_model_args(args.model_args))
    # On the meta device tensors have shapes but no storage: any size traces in no memory.
    result = trace(model.to("meta"), tuple(args.size))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    console.print(result.rich_table(title=f"{args.model}, input {args.size[0]}×{args.size[1]}"))
    console.print(result.summary(), markup=False, highlight=False)
    console.print(valid_input_sizes(model, traced=result).explanation, markup=False, highlight=False)
    return 0


def cmd_convolutionalize(args: argparse.Namespace) -> int:
    name, classifier, native = torchvision_classifier(args.model, weights=args.weights)
    native = tuple(args.native) if args.native else native
    report = convolutionalize_report(classifier, native_size=native, test_size=tuple(args.size))
    table = Table(title=f"{name} → fully convolutional")
    for column in ("layer", "was", "now"):
        table.add_column(column)
    for replacement in report.replacements:
        table.add_row(replacement.name, replacement.before, replacement.after)
    console.print(table)

    def dims(shape: Sequence[int]) -> str:
        return "×".join(map(str, shape))

    console.print(f"equivalent at {dims(report.native_size)} (native): classifier {dims(report.classifier_shape)}, "
                  f"score map {dims(report.native_score_shape)}, max |difference| {report.max_abs_difference:.2g} "
                  f"(scores up to {report.max_abs_score:.2g})")
    console.print(f"{name} at {dims(report.test_size)} → score map {dims(report.score_map_shape)}")
    return 0


def cmd_overlap(args: argparse.Namespace) -> int:
    if args.compare:
        table = Table(title=f"checkerboard score, scale {args.scale}")
        for column in ("upsampler", "init", "score", "seeds"):
            table.add_column(column, justify="left" if column in ("upsampler", "init") else "right")
        for row in compare_upsamplers(scale=args.scale):
            table.add_row(row.upsampler, row.init, f"{row.score:.3f}", str(row.seeds))
        console.print(table)
        console.print("0 = none, 1 = all checkerboard. random: PyTorch's default init; positive: "
                      "uniform(0, 1) weights, no bias; averaged over the seeds", highlight=False)
        return 0
    if args.kernel is None or args.stride is None:
        raise InputError("overlap needs --kernel and --stride (or --compare)")
    overlap = overlap_map(args.kernel, args.stride, args.size, args.padding, args.dilation)
    console.print(overlap.render(), markup=False, highlight=False)
    console.print(overlap.summary(), markup=False, highlight=False)
    if args.png:
        overlap.save_png(args.png)
        console.print(f"wrote {args.png}", markup=False, highlight=False)
    return 0


def cmd_weight_map(args: argparse.Namespace) -> int:
    weights = border_weight_map(read_binary_mask(args.mask), w0=args.w0, sigma=args.sigma,
                                class_balance=not args.no_class_balance)
    save_weight_map_png(weights, args.out, args.colormap)
    written = [args.out]
    if args.npy:
        save_weight_map_npy(weights, args.npy)
        written.append(args.npy)
    console.print(f"wrote {' and '.join(written)}: weights {weights.min():.3g} to {weights.max():.3g} "
                  f"(mean {weights.mean():.3g}), colour scale 0 to {weights.max():.3g}", markup=False, highlight=False)
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    import json

    options = {key: value for key, value in (("num_classes", args.num_classes), ("ignore_index", args.ignore_index))
               if value is not None}
    report = check_dataset(args.format, args.root, split=args.split, **options)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, console)
    return 0 if report.ok else 1


def _on_total(progress):
    """A training ``on_total`` callback: set the progress bar's length, print a time budget's plan."""
    def on_total(total: int, plan) -> None:
        progress.update(total=total)
        if plan is not None:
            progress.print(plan.describe())

    return on_total


def cmd_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.time_budget is not None:
        overrides.append(f"train.time_budget_min={args.time_budget}")
    config = load_config(args.config, overrides)
    main_process = is_main_process()  # under torchrun only rank 0 reports
    with ProgressReport(console, "train", enabled=main_process) as progress:

        def on_step(iteration: int, loss: float) -> None:
            lr = "" if progress.total is None else f" · lr {learning_rate(iteration - 1, progress.total, config):.2e}"
            rate = "" if progress.rate_per_s is None else f" · {progress.rate_per_s * 60:.1f} it/min"
            progress.update(iteration, status=f"loss {loss:.4f}{lr}{rate}")

        result = train(config, resume=args.resume, device=args.device, on_step=on_step,
                       on_total=_on_total(progress), overwrite=args.overwrite)
    if main_process:
        metric = "mIoU" if result.best_metric == "mean_iou" else result.best_metric.replace("_", " ")
        console.print(f"best {metric} {result.best:.4f} after {result.iterations} iterations; checkpoints, config, "
                      f"metrics.jsonl, tensorboard/ and {', '.join(p.name for p in result.plots)} in {result.run_dir}")
    return 0


def _progress(label: str):
    """Progress of per-image work, and its callback ``on_image(done, total)``."""
    progress = ProgressReport(console, label, transient=True, eta=False)

    def on_image(done: int, total: int) -> None:
        progress.update(done, total)
    return progress, on_image


def _inference_options(args: argparse.Namespace) -> dict[str, object]:
    stride = None if args.stride is None else tuple(args.stride)
    return {"mode": args.mode, "window": tuple(args.window), "stride": stride, "blend": args.blend,
            "scales": None if args.scales is None else tuple(args.scales), "flip": args.flip,
            "batch_size": args.batch_size, "device": args.device,
            "runtime": _runtime(args), "precision": args.precision}


def _runtime(args: argparse.Namespace) -> str | None:
    """``--runtime``, or ``torch-compiled`` for ``--compile``."""
    if not args.compile:
        return args.runtime
    if args.runtime not in (None, "torch-compiled"):
        raise InputError(f"--compile runs the network as --runtime torch-compiled, not {args.runtime}: pass one of "
                         f"the two")
    return "torch-compiled"


def _recorded_views(args: argparse.Namespace) -> RecordedViews:
    """The inference flags; test-time scales and flip left out are the model's recorded ones."""
    stride = None if args.stride is None else tuple(args.stride)
    options = InferenceOptions.create(args.mode, tuple(args.window), stride, args.blend, batch_size=args.batch_size)
    return RecordedViews(options, None if args.scales is None else tuple(args.scales), args.flip)


def _loading(args: argparse.Namespace) -> dict[str, object]:
    """Where and how the model file is loaded."""
    return {"device": args.device, "runtime": _runtime(args), "precision": args.precision}


def _model_source(args: argparse.Namespace) -> str:
    """``--checkpoint`` or ``--model`` (an exported ONNX file), exactly one of them."""
    if (args.checkpoint is None) == (args.model is None):
        raise InputError("pass a checkpoint (--checkpoint run/best.pt) or an exported model (--model model.onnx), "
                         "one of the two")
    return args.checkpoint or args.model


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    source = _model_source(args)
    out_dir = args.out if args.out is not None else Path(source).parent / "evaluation"
    progress, on_image = _progress("evaluate")
    with progress:
        data = RecordedData(args.format, args.root, args.split, _parse_model_args(args.data_options))
        result = evaluate_checkpoint(source, data, _recorded_views(args), out_dir=out_dir, on_image=on_image,
                                     boundary_width=args.boundary_width, **_loading(args))
    print_evaluation(result, console)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    progress, on_image = _progress("predict")
    with progress:
        threshold = {} if args.tile_threshold is None else {"tile_threshold_pixels": args.tile_threshold}
        report = predict_files(_model_source(args), args.inputs, args.out, _recorded_views(args),
                               save_probabilities=args.probabilities, skip_unreadable=args.skip_unreadable,
                               on_image=on_image, overwrite=args.overwrite, **threshold, **_loading(args))
    for image in report.images:
        for note in image.notes:
            console.print(f"{image.source}: {note}", markup=False, highlight=False)
    for source, message in report.failures:
        console.print(f"skipped: {message}", style="yellow", markup=False, highlight=False)  # names the file
    written = "masks (NAME.png), overlays (NAME_overlay.png)" + (
        ", probabilities (NAME_probs.npy)" if args.probabilities else "")
    console.print(f"wrote {written} of {len(report.images)} images to {report.out_dir}", markup=False,
                  highlight=False)
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    if is_superres_file(args.checkpoint):
        return _export_superres(args)
    if (args.calibrate is not None) != args.int8:
        raise InputError("--int8 needs --calibrate FORMAT:ROOT:SPLIT (real images to calibrate on), and "
                         "--calibrate is only for --int8")
    int8 = None if not args.int8 else Int8Options(args.calibrate, args.calibration_images, args.calibration_method,
                                                  args.reduce_range, args.val_split, args.val_images,
                                                  args.min_agreement)
    if int8 is not None and args.format != "onnx":
        raise InputError("--int8 quantises an ONNX graph; use --format onnx")
    real_images = []
    if args.parity_images:

        real_images = [decode_image(path)[0] for path in args.parity_images]

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False)

    report = export_checkpoint(args.checkpoint, args.out, args.format, parity=not args.no_parity,
                               real_images=real_images, int8=int8, on_line=say, overwrite=args.overwrite)
    console.print(f"wrote {report.path} ({report.format}, {report.precision})", markup=False, highlight=False)
    return 0


def _export_superres(args: argparse.Namespace) -> int:
    """``export`` of a super-resolution checkpoint: ONNX fp32 only, parity on random images."""
    if args.format != "onnx" or args.int8 or args.parity_images:
        raise InputError(f"{args.checkpoint} is a super-resolution network: it exports to --format onnx (fp32, its "
                         f"parity checked on random images); --int8, --parity-images and other formats are for "
                         f"segmentation models")
    report = export_superres(args.checkpoint, args.out, parity=not args.no_parity, overwrite=args.overwrite,
                             on_line=lambda line: console.print(line, markup=False, highlight=False))
    console.print(f"wrote {report.path} (onnx, fp32, super-resolution)", markup=False, highlight=False)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _inference_options(args)
    runtime, precision, device = settings.pop("runtime"), settings.pop("precision"), settings.pop("device")
    limits = ServiceLimits(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                           tile_threshold_pixels=args.tile_threshold, explain_max_pixels=args.explain_max_pixels,
                           max_aspect_ratio=args.max_aspect_ratio, max_queue=args.max_queue)
    hosts = [args.host, *(LOOPBACK_HOSTS if args.host in (*LOOPBACK_HOSTS, *WILDCARD_ADDRESSES) else ()),
             *args.allow_host]
    app = app_for_file(_model_source(args), runtime, precision, device, settings, limits, hosts)
    if args.host not in LOOPBACK_HOSTS:
        console.print(f"warning: listening on {args.host}, reachable from other machines", style="yellow")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def cmd_superres_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.time_budget is not None:
        overrides.append(f"train.time_budget_min={args.time_budget}")
    config = load_superres_config(args.config, overrides)
    with ProgressReport(console, "superres train") as progress:

        def on_step(iteration: int, loss: float) -> None:
            rate = "" if progress.rate_per_s is None else f" · {progress.rate_per_s * 60:.0f} it/min"
            progress.update(iteration, status=f"loss {loss:.5f}{rate}")

        result = train_superres(config, resume=args.resume, overwrite=args.overwrite, on_step=on_step,
                                on_total=_on_total(progress))
    console.print(f"best validation PSNR {result.best_psnr:.2f} dB after {result.iterations} iterations (bicubic: "
                  f"{result.bicubic['psnr']:.2f} dB, {result.best_psnr - result.bicubic['psnr']:+.2f} dB); "
                  f"checkpoints, config, metrics.jsonl, tensorboard/ and "
                  f"{', '.join(p.name for p in result.plots)} in {result.run_dir}", highlight=False)
    return 0


def cmd_superres_compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    comparison = compare_methods(args.images, args.scale, args.checkpoint)
    table = Table(title=f"×{args.scale} super-resolution on {len(comparison.images)} image(s), luminance, "
                        f"{args.scale}-px border cropped")
    for column in ("method", "PSNR (dB)", "SSIM", "checkerboard", "upsampler cb", "periodic error (dB)",
                   "ms / image"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in comparison.rows:
        upsampler = "—" if row.upsampler_checkerboard is None else f"{row.upsampler_checkerboard:.4f}"
        table.add_row(row.method, f"{row.psnr:.2f}", f"{row.ssim:.4f}", f"{row.checkerboard:.4f}", upsampler,
                      f"{row.periodic_db:+.1f}", f"{row.ms_per_image:.1f}")
    console.print(table)
    console.print("checkerboard: pattern of period scale on a constant image (0 none, 1 all); periodic error: "
                  "error power at the period-scale frequencies over their neighbours (0 dB: none)", highlight=False)
    benchmark = args.benchmark or benchmark_of(args.images)
    published = published_results(benchmark, args.scale) if benchmark else []
    if published:
        _print_published(benchmark, args.scale, published)
    out = Path(args.out)
    figure = save_comparison_figure(comparison, out / "comparison.png",
                                    None if args.region is None else tuple(args.region), args.crop)
    report = comparison.to_dict() | {"benchmark": benchmark, "published": as_dicts(published)}
    (out / "comparison.json").write_text(json.dumps(report, indent=2))
    console.print(f"wrote {figure} and {out / 'comparison.json'}", highlight=False)
    return 0


def _print_published(benchmark: str, scale: int, rows: Sequence) -> None:
    """The published figures of this benchmark and scale, each with its source."""
    table = Table(title=f"published: ×{scale} on {benchmark} (luminance PSNR, as each paper reports it)")
    for column in ("method", "PSNR (dB)", "trained on", "source"):
        table.add_column(column, justify="right" if column == "PSNR (dB)" else "left")
    for row in rows:
        table.add_row(row.method, f"{row.psnr:.2f}", row.training, row.source)
    console.print(table)


def cmd_superres_upscale(args: argparse.Namespace) -> int:
    report = upscale_images(args.checkpoint, args.images, args.out, args.precision)
    for image in report.images:
        console.print(f"{image.source}: {image.before[0]}×{image.before[1]} → {image.after[0]}×{image.after[1]}, "
                      f"wrote {image.target}", markup=False, highlight=False)
    if len(report.images) > 1:
        console.print(f"{len(report.images)} images, {report.frames_per_second:.2f} frames/s (enlarging only)",
                      markup=False, highlight=False)
    return 0

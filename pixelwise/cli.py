"""The ``pixelwise`` command: parses arguments and calls the library; no logic of its own."""
from __future__ import annotations

import argparse
import inspect
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

from pixelwise.analysis import trace, valid_input_sizes
from pixelwise.analysis.convolutionalize import convolutionalize_report, torchvision_classifier
from pixelwise.analysis.overlap import compare_upsamplers, overlap_map
from pixelwise.config import load_config
from pixelwise.data.checks import check_dataset, print_report
from pixelwise.data.io import decode_image
from pixelwise.demo import run_demo
from pixelwise.encoders import create_encoder, list_encoders
from pixelwise.errors import InputError, PixelwiseError
from pixelwise.export import Int8Options, export_checkpoint
from pixelwise.inference.evaluation import evaluate_checkpoint, print_evaluation
from pixelwise.inference.predict import predict_files
from pixelwise.models import list_models, model_info
from pixelwise.models.build import build_model
from pixelwise.models.zoo import count_parameters, run_zoo, smooth_test_image
from pixelwise.progress import ProgressReport
from pixelwise.serve.app import ServiceLimits, app_for_file
from pixelwise.serve.http import LOOPBACK_HOSTS, WILDCARD_ADDRESSES
from pixelwise.superres.compare import compare_methods, save_comparison_figure, upscale_file
from pixelwise.superres.train import load_superres_config, train_superres
from pixelwise.training.distributed import is_main_process
from pixelwise.training.loop import learning_rate, train

console = Console()
if not console.is_terminal:  # pipes and CI logs: rich's 80-column default would fold every table
    console = Console(width=160)


def _cmd_models(args: argparse.Namespace) -> int:
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


def _cmd_encoders(args: argparse.Namespace) -> int:
    table = Table(title="pixelwise encoders (any timm model too: timm:NAME)")
    for column in ("name", "channels", "strides"):
        table.add_column(column)
    for name in list_encoders():
        encoder = create_encoder(name)
        table.add_row(name, str(encoder.channels), str(encoder.reductions))
    console.print(table)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
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


def _cmd_shapes(args: argparse.Namespace) -> int:
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


def _cmd_convolutionalize(args: argparse.Namespace) -> int:
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


def _cmd_overlap(args: argparse.Namespace) -> int:
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


def _cmd_check_data(args: argparse.Namespace) -> int:
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


def _cmd_train(args: argparse.Namespace) -> int:
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
        console.print(f"best mIoU {result.best_miou:.4f} after {result.iterations} iterations; checkpoints, config, "
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
            "runtime": args.runtime, "precision": args.precision}


def _model_source(args: argparse.Namespace) -> str:
    """``--checkpoint`` or ``--model`` (an exported ONNX file), exactly one of them."""
    if (args.checkpoint is None) == (args.model is None):
        raise InputError("pass a checkpoint (--checkpoint run/best.pt) or an exported model (--model model.onnx), "
                         "one of the two")
    return args.checkpoint or args.model


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    source = _model_source(args)
    out_dir = args.out if args.out is not None else Path(source).parent / "evaluation"
    progress, on_image = _progress("evaluate")
    with progress:
        result = evaluate_checkpoint(source, data_format=args.format, root=args.root, split=args.split,
                                     data_options=_parse_model_args(args.data_options), out_dir=out_dir,
                                     on_image=on_image, boundary_width=args.boundary_width,
                                     **_inference_options(args))
    print_evaluation(result, console)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    progress, on_image = _progress("predict")
    with progress:
        threshold = {} if args.tile_threshold is None else {"tile_threshold_pixels": args.tile_threshold}
        report = predict_files(_model_source(args), args.inputs, args.out, save_probabilities=args.probabilities,
                               skip_unreadable=args.skip_unreadable, on_image=on_image,
                               overwrite=args.overwrite, **threshold,
                               **_inference_options(args))
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


def _cmd_export(args: argparse.Namespace) -> int:
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


def _cmd_serve(args: argparse.Namespace) -> int:
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


def _cmd_superres_train(args: argparse.Namespace) -> int:
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


def _cmd_superres_compare(args: argparse.Namespace) -> int:
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
    out = Path(args.out)
    figure = save_comparison_figure(comparison, out / "comparison.png",
                                    None if args.region is None else tuple(args.region), args.crop)
    (out / "comparison.json").write_text(json.dumps(comparison.to_dict(), indent=2))
    console.print(f"wrote {figure} and {out / 'comparison.json'}", highlight=False)
    return 0


def _cmd_superres_upscale(args: argparse.Namespace) -> int:
    before, after = upscale_file(args.checkpoint, args.image, args.out)
    console.print(f"{args.image}: {before[0]}×{before[1]} → {after[0]}×{after[1]}, wrote {args.out}",
                  highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="pixelwise", description="Semantic segmentation, real and inspectable.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of every error")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the registered models, or show one model's options")
    models.add_argument("name", nargs="?", help="a model name: show its options and defaults")
    models.add_argument("--num-classes", type=int, default=21)
    models.add_argument("--run", dest="run_all", action="store_true", help="run every model once on a synthetic image")
    models.add_argument("--size", type=int, nargs=2, default=(253, 317), metavar=("H", "W"),
                        help="image size for --run")
    models.set_defaults(run=_cmd_models)

    encoders = commands.add_parser("encoders", help="list the encoders with their channels and strides")
    encoders.set_defaults(run=_cmd_encoders)

    train = commands.add_parser("train", help="train a model from a YAML recipe (key=value overrides)")
    train.add_argument("--config", help="recipe YAML file (default: the built-in defaults)")
    # argparse reads positionals in one run: options such as --resume go before the overrides.
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="e.g. optim.lr=0.01 data.batch_size=4 (after the --options)")
    train.add_argument("--resume", action="store_true", help="continue exactly from OUTPUT_DIR/last.pt")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in a run folder that holds an earlier run, deleting its checkpoints, "
                            "config, metrics and plots (without it, or --resume, such a folder is refused)")
    train.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (under torchrun: cpu or cuda; "
                                                       "each process takes cuda:LOCAL_RANK)")
    train.add_argument("--time-budget", type=float, metavar="MIN",
                       help="fit the run into MIN minutes (shortcut for train.time_budget_min=MIN)")
    train.set_defaults(run=_cmd_train)

    demo = commands.add_parser("demo", help="train, evaluate and predict on the built-in synthetic data (minutes, CPU)")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. train.iterations=500")
    demo.set_defaults(run=_cmd_demo)

    convolutionalize = commands.add_parser(
        "convolutionalize", help="turn a torchvision classifier's fully connected layers into convolutions (FCN)")
    convolutionalize.add_argument("model", help="torchvision:NAME, e.g. torchvision:vgg16")
    convolutionalize.add_argument("--size", type=int, nargs=2, default=(384, 384), metavar=("H", "W"),
                                  help="a larger input to compute the score map of")
    convolutionalize.add_argument("--native", type=int, nargs=2, metavar=("H", "W"),
                                  help="the classifier's input size (default: its weights' crop size, mostly 224)")
    convolutionalize.add_argument("--weights", help="a local state-dict file to load (default: random weights)")
    convolutionalize.set_defaults(run=_cmd_convolutionalize)

    check = commands.add_parser("check-data", help="scan a data set for problems (unreadable files, unpaired "
                                                   "files, size mismatches, bad labels); exit code 1 if any")
    check.add_argument("--format", required=True, help="data set format: folder, voc, cityscapes, ade20k, camvid")
    check.add_argument("--root", required=True, help="the data set folder")
    check.add_argument("--split", help="scan only this split (default: every split found)")
    check.add_argument("--num-classes", type=int, help="folder format: number of classes (or a classes.txt)")
    check.add_argument("--ignore-index", type=int, help="folder format: the ignore value (default 255)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=_cmd_check_data)

    overlap = commands.add_parser("overlap", help="show a transposed convolution's overlap (checkerboard) "
                                                  "pattern, or compare the upsamplers' checkerboard scores")
    overlap.add_argument("--kernel", type=int, help="kernel size (required unless --compare)")
    overlap.add_argument("--stride", type=int, help="stride (required unless --compare)")
    overlap.add_argument("--padding", type=int, default=0)
    overlap.add_argument("--dilation", type=int, default=1)
    overlap.add_argument("--size", type=int, default=8, help="input height and width")
    overlap.add_argument("--png", help="also write the map as a PNG heat map to this path")
    overlap.add_argument("--compare", action="store_true", help="score the four upsampler kinds instead")
    overlap.add_argument("--scale", type=int, default=2, help="upsampling factor for --compare")
    overlap.set_defaults(run=_cmd_overlap)

    shapes = commands.add_parser("shapes", help="trace a model layer by layer: output shapes, strides, receptive "
                                                "fields, centre offsets, skip alignment, parameters, MACs")
    shapes.add_argument("model", help="a registered model name, or torchvision:NAME (built without weights)")
    shapes.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    shapes.add_argument("--model-args", nargs="*", default=[], metavar="KEY=VALUE",
                        help="builder arguments, e.g. paper=True encoder=resnet18 base_channels=8")
    shapes.add_argument("--num-classes", type=int, help="classes (default: the builder's: 21, or 1000 for torchvision)")
    shapes.add_argument("--json", action="store_true", help="print the trace as JSON")
    shapes.set_defaults(run=_cmd_shapes)

    evaluate = commands.add_parser("evaluate", help="measure a checkpoint on a data set split: per-class IoU, "
                                                    "metrics.json and a confusion-matrix plot")
    evaluate.add_argument("--checkpoint", help="a run's best.pt or last.pt")
    evaluate.add_argument("--model", help="an exported model (model.onnx, fp32 or int8) instead of a checkpoint")
    evaluate.add_argument("--format", help="data set format (default: the one recorded in the checkpoint)")
    evaluate.add_argument("--root", help="data set folder (default: the recorded one)")
    evaluate.add_argument("--split", help="split to evaluate (default: the recorded validation split)")
    evaluate.add_argument("--data-options", nargs="*", default=[], metavar="KEY=VALUE",
                          help="format options over the recorded ones, e.g. num_classes=5")
    evaluate.add_argument("--out", help="folder for metrics.json and confusion_matrix.png "
                                        "(default: evaluation/ beside the checkpoint)")
    evaluate.add_argument("--boundary-width", type=int, default=3, metavar="PX",
                          help="band in pixels along class edges for Boundary IoU and trimap accuracy "
                               "(default: 3; 0 leaves them out)")
    _add_inference_arguments(evaluate)
    evaluate.set_defaults(run=_cmd_evaluate)

    predict = commands.add_parser("predict", help="segment image files with a checkpoint: class-index PNGs "
                                                  "(palette), overlays, optionally probabilities")
    predict.add_argument("--checkpoint", help="a run's best.pt or last.pt")
    predict.add_argument("--model", help="an exported model (model.onnx, fp32 or int8) instead of a checkpoint: "
                                         "it carries its classes, palette and normalisation")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--probabilities", action="store_true",
                         help="also write NAME_probs.npy: float16 softmax probabilities, classes × H × W")
    predict.add_argument("--tile-threshold", type=int, metavar="PIXELS",
                         help="predict images with more pixels than this window by window, with bounded memory "
                              "(no test-time augmentation for those; default 16777216, i.e. 4096×4096)")
    predict.add_argument("--skip-unreadable", action="store_true",
                         help="skip unreadable images with a warning (exit code 1 at the end) instead of stopping")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace files in --out that an earlier prediction did not write (refused by default)")
    _add_inference_arguments(predict)
    predict.set_defaults(run=_cmd_predict)

    export = commands.add_parser("export", help="export a checkpoint to ONNX (fp32 or int8), TorchScript or "
                                                "safetensors, checked against PyTorch")
    export.add_argument("--checkpoint", required=True, help="a run's best.pt or last.pt")
    export.add_argument("--format", choices=("onnx", "torchscript", "safetensors"), default="onnx")
    export.add_argument("--out", required=True, help="the file to write, e.g. model.onnx (never the checkpoint)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused by default)")
    export.add_argument("--no-parity", action="store_true", help="skip the parity check against eager PyTorch")
    export.add_argument("--parity-images", nargs="+", metavar="IMAGE",
                        help="real images for the parity check (default: the first recorded validation image)")
    export.add_argument("--int8", action="store_true", help="quantise to int8 (ONNX Runtime static, QDQ, "
                                                           "per-channel weights); needs --calibrate")
    export.add_argument("--calibrate", metavar="FORMAT:ROOT:SPLIT",
                        help="calibration images, e.g. camvid:../shared/datasets/camvid:train")
    export.add_argument("--calibration-images", type=int, default=32, metavar="N",
                        help="calibration images, spread over the split (default 32)")
    export.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    export.add_argument("--reduce-range", action="store_true",
                        help="7-bit weights, for CPUs without VNNI (default off: VNNI does not saturate)")
    export.add_argument("--val-split", default="val",
                        help="split of the calibration data set on which fp32 and int8 mIoU are compared")
    export.add_argument("--val-images", type=int, metavar="N", help="compare on the first N images only")
    export.add_argument("--min-agreement", type=float, default=0.9, metavar="FRACTION",
                        help="int8 parity: smallest argmax agreement with the fp32 model on real images (0.9)")
    export.set_defaults(run=_cmd_export)

    serve = commands.add_parser("serve", help="an HTTP segmentation service (POST /predict, /info, /metrics)")
    serve.add_argument("--checkpoint", help="a run's best.pt or last.pt")
    serve.add_argument("--model", help="an exported model (model.onnx, fp32 or int8) instead of a checkpoint")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (MiB)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also accept requests naming this host (a name the service is reached by, e.g. "
                            "behind a proxy); others are refused, against DNS rebinding; repeatable")
    serve.add_argument("--max-pixels", type=int, default=100_000_000,
                       help="most pixels an image may have, and most a tiled prediction computes on")
    serve.add_argument("--max-queue", type=int, default=16, help="requests that may wait; beyond, 503")
    serve.add_argument("--tile-threshold", type=int, default=2048 * 2048, metavar="PIXELS",
                       help="images whose forward pass would compute on more pixels (the network's padding and "
                            "test-time scales included) are predicted window by window (bounded memory)")
    serve.add_argument("--explain-max-pixels", type=int, default=1024 * 1024, metavar="PIXELS",
                       help="the same bound for /explain, which refuses larger images (413)")
    serve.add_argument("--max-aspect-ratio", type=float, default=20.0,
                       help="refuse images whose longer side is more than this many times the shorter (422)")
    _add_inference_arguments(serve)
    serve.set_defaults(run=_cmd_serve)
    _add_superres_commands(commands)
    return parser


def _add_superres_commands(commands: argparse._SubParsersAction) -> None:
    """``pixelwise superres train | compare | upscale``."""
    superres = commands.add_parser("superres", help="super-resolution: the upsamplers put to the test on real images")
    actions = superres.add_subparsers(dest="superres_command", required=True)
    train = actions.add_parser("train", help="train ESPCN (any upsampler as its last layer) or SRCNN from a recipe")
    train.add_argument("--config", help="recipe YAML file, e.g. configs/superres_espcn_x3.yaml")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="e.g. model.options.upsample=transposed (after the --options)")
    train.add_argument("--resume", action="store_true", help="continue exactly from OUTPUT_DIR/last.pt")
    train.add_argument("--overwrite", action="store_true", help="start afresh in a folder that holds an earlier run")
    train.add_argument("--time-budget", type=float, metavar="MIN", help="shortcut for train.time_budget_min=MIN")
    train.set_defaults(run=_cmd_superres_train)

    compare = actions.add_parser("compare", help="downscale images, upscale them with every method, score and "
                                                 "show them side by side")
    compare.add_argument("images", nargs="+", help="high-resolution image files, folders or glob patterns")
    compare.add_argument("--scale", type=int, default=3, help="upscaling factor (default 3)")
    compare.add_argument("--checkpoint", action="append", default=[], metavar="C",
                         help="a trained network to compare too (repeat for several)")
    compare.add_argument("--out", default="runs/superres_compare", help="folder for comparison.png and .json")
    compare.add_argument("--region", type=int, nargs=2, metavar=("TOP", "LEFT"),
                         help="the figure's region in the first image (default: its busiest)")
    compare.add_argument("--crop", type=int, default=96, help="side of the figure's region in pixels")
    compare.set_defaults(run=_cmd_superres_compare)

    upscale = actions.add_parser("upscale", help="upscale an image with a trained network")
    upscale.add_argument("image", help="the image to upscale")
    upscale.add_argument("--checkpoint", required=True, help="a superres train checkpoint (best.pt)")
    upscale.add_argument("--out", required=True, help="the upscaled image file (PNG)")
    upscale.set_defaults(run=_cmd_superres_upscale)


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``predict_logits`` shared by evaluate and predict."""
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole",
                        help="whole image in one pass, or overlapping windows blended")
    parser.add_argument("--window", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="window size for --mode slide (and for tiled images)")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"),
                        help="largest step between windows (default: two thirds of the window)")
    parser.add_argument("--blend", choices=("gaussian", "uniform"), default="gaussian",
                        help="weighting of overlapping windows")
    parser.add_argument("--scales", type=float, nargs="+", metavar="S",
                        help="test-time augmentation: resize factors, e.g. 0.75 1 1.25 (default: the recipe's "
                             "inference.scales as the model records them, else 1)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction,
                        help="test-time augmentation: also predict the flipped image (default: the recipe's "
                             "inference.flip as the model records it, else no)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--runtime", choices=("torch", "torch-optimized", "onnxruntime"),
                        help="what runs the network: eager PyTorch (default for checkpoints), PyTorch with batch "
                             "norms folded and channels-last, or ONNX Runtime (the default, and only, for --model)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"),
                        help="PyTorch autocast precision (default: what the run validated with); an ONNX file "
                             "computes in its own (fp32 or int8)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pixelwise`` console script.

    Errors meant for the user (:class:`~pixelwise.errors.PixelwiseError`: bad input, a missing
    file, a diverged run, their messages say what to do) print as one line and exit 2; anything
    else is a bug or a library failure and keeps its traceback. ``--debug`` shows the traceback
    of every error.
    """

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PixelwiseError as error:
        if args.debug:
            raise
        # markup off: messages quote lists like ['widht'], which rich would read as style tags
        console.print(f"error: {error}", style="bold red", markup=False, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())

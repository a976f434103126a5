"""The command line's arguments: one function per command, each naming the function that runs it."""
from __future__ import annotations

import argparse

from pixelwise.cli.commands import (cmd_check_data, cmd_convolutionalize, cmd_demo, cmd_encoders, cmd_evaluate,
                                    cmd_export, cmd_models, cmd_overlap, cmd_predict, cmd_serve, cmd_shapes,
                                    cmd_superres_compare, cmd_superres_train, cmd_superres_upscale, cmd_train,
                                    cmd_weight_map)
from pixelwise.data.weight_map import DEFAULT_SIGMA, DEFAULT_W0
from pixelwise.export import FORMATS as EXPORT_FORMATS
from pixelwise.superres.published import BENCHMARKS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="pixelwise", description="Semantic segmentation, real and inspectable.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of every error")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="compute with N threads (default: PyTorch's, lowered to the CPUs this process may use: "
                             "its affinity and cgroup CPU quota)")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_models(commands)
    _add_encoders(commands)
    _add_train(commands)
    _add_demo(commands)
    _add_convolutionalize(commands)
    _add_check_data(commands)
    _add_weight_map(commands)
    _add_overlap(commands)
    _add_shapes(commands)
    _add_evaluate(commands)
    _add_predict(commands)
    _add_export(commands)
    _add_serve(commands)
    _add_superres_commands(commands)
    return parser


def _add_models(commands: argparse._SubParsersAction) -> None:
    """``pixelwise models``."""
    models = commands.add_parser("models", help="list the registered models, or show one model's options")
    models.add_argument("name", nargs="?", help="a model name: show its options and defaults")
    models.add_argument("--num-classes", type=int, default=21)
    models.add_argument("--run", dest="run_all", action="store_true", help="run every model once on a synthetic image")
    models.add_argument("--size", type=int, nargs=2, default=(253, 317), metavar=("H", "W"),
                        help="image size for --run")
    models.set_defaults(run=cmd_models)


def _add_encoders(commands: argparse._SubParsersAction) -> None:
    """``pixelwise encoders``."""
    encoders = commands.add_parser("encoders", help="list the encoders with their channels and strides")
    encoders.set_defaults(run=cmd_encoders)


def _add_train(commands: argparse._SubParsersAction) -> None:
    """``pixelwise train``."""
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
    train.set_defaults(run=cmd_train)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    """``pixelwise demo``."""
    demo = commands.add_parser("demo", help="train, evaluate and predict on the built-in synthetic data (minutes, CPU)")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. train.iterations=500")
    demo.set_defaults(run=cmd_demo)


def _add_convolutionalize(commands: argparse._SubParsersAction) -> None:
    """``pixelwise convolutionalize``."""
    convolutionalize = commands.add_parser(
        "convolutionalize", help="turn a torchvision classifier's fully connected layers into convolutions (FCN)")
    convolutionalize.add_argument("model", help="torchvision:NAME, e.g. torchvision:vgg16")
    convolutionalize.add_argument("--size", type=int, nargs=2, default=(384, 384), metavar=("H", "W"),
                                  help="a larger input to compute the score map of")
    convolutionalize.add_argument("--native", type=int, nargs=2, metavar=("H", "W"),
                                  help="the classifier's input size (default: its weights' crop size, mostly 224)")
    convolutionalize.add_argument("--weights", help="a local state-dict file to load (default: random weights)")
    convolutionalize.set_defaults(run=cmd_convolutionalize)


def _add_check_data(commands: argparse._SubParsersAction) -> None:
    """``pixelwise check-data``."""
    check = commands.add_parser("check-data", help="scan a data set for problems (unreadable files, unpaired "
                                                   "files, size mismatches, bad labels); exit code 1 if any")
    check.add_argument("--format", required=True, help="data set format: folder, voc, cityscapes, ade20k, camvid, isbi2012")
    check.add_argument("--root", required=True, help="the data set folder")
    check.add_argument("--split", help="scan only this split (default: every split found)")
    check.add_argument("--num-classes", type=int, help="folder format: number of classes (or a classes.txt)")
    check.add_argument("--ignore-index", type=int, help="folder format: the ignore value (default 255)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=cmd_check_data)


def _add_weight_map(commands: argparse._SubParsersAction) -> None:
    """``pixelwise weight-map``."""
    weight_map = commands.add_parser("weight-map", help="draw U-Net's border weight map of a binary membrane mask "
                                                        "(0 membrane, 255 or 1 cell) as a colour-mapped PNG")
    weight_map.add_argument("mask", help="the label image, e.g. isbi2012/label/0.png")
    weight_map.add_argument("--out", required=True, help="the PNG to write")
    weight_map.add_argument("--npy", help="also write the raw float32 map to this .npy file")
    weight_map.add_argument("--w0", type=float, default=DEFAULT_W0, help="height of the border term (default 10)")
    weight_map.add_argument("--sigma", type=float, default=DEFAULT_SIGMA,
                            help="width of the border term, pixels (default 5)")
    weight_map.add_argument("--no-class-balance", action="store_true",
                            help="w_c = 1 at every pixel instead of balancing membrane against cell")
    weight_map.add_argument("--colormap", default="magma", help="matplotlib colour map (default magma)")
    weight_map.set_defaults(run=cmd_weight_map)


def _add_overlap(commands: argparse._SubParsersAction) -> None:
    """``pixelwise overlap``."""
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
    overlap.set_defaults(run=cmd_overlap)


def _add_shapes(commands: argparse._SubParsersAction) -> None:
    """``pixelwise shapes``."""
    shapes = commands.add_parser("shapes", help="trace a model layer by layer: output shapes, strides, receptive "
                                                "fields, centre offsets, skip alignment, parameters, MACs")
    shapes.add_argument("model", help="a registered model name, or torchvision:NAME (built without weights)")
    shapes.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    shapes.add_argument("--model-args", nargs="*", default=[], metavar="KEY=VALUE",
                        help="builder arguments, e.g. paper=True encoder=resnet18 base_channels=8")
    shapes.add_argument("--num-classes", type=int, help="classes (default: the builder's: 21, or 1000 for torchvision)")
    shapes.add_argument("--json", action="store_true", help="print the trace as JSON")
    shapes.set_defaults(run=cmd_shapes)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    """``pixelwise evaluate``."""
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
    evaluate.set_defaults(run=cmd_evaluate)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    """``pixelwise predict``."""
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
    predict.set_defaults(run=cmd_predict)


def _add_export(commands: argparse._SubParsersAction) -> None:
    """``pixelwise export``."""
    export = commands.add_parser("export", help="export a checkpoint to ONNX (fp32 or int8), TorchScript, "
                                                "safetensors or a model folder, checked against PyTorch")
    export.add_argument("--checkpoint", required=True,
                        help="a run's best.pt or last.pt (or a safetensors export or a model folder); a "
                             "superres train checkpoint exports to ONNX")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="onnx",
                        help="onnx, torchscript, safetensors (weights and record in one file) or folder "
                             "(config.json + model.safetensors, as Hugging Face and segmentation_models.pytorch "
                             "save models)")
    export.add_argument("--out", required=True,
                        help="the file (for --format folder, the folder) to write, e.g. model.onnx (never the "
                             "checkpoint)")
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
    export.set_defaults(run=cmd_export)


def _add_serve(commands: argparse._SubParsersAction) -> None:
    """``pixelwise serve``."""
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
    serve.set_defaults(run=cmd_serve)



def _add_superres_commands(commands: argparse._SubParsersAction) -> None:
    """``pixelwise superres train | compare | upscale``."""
    superres = commands.add_parser("superres", help="super-resolution: the upsamplers put to the test on real images")
    actions = superres.add_subparsers(dest="superres_command", required=True)
    train = actions.add_parser("train", help="train ESPCN or FSRCNN (any upsampler as the last layer) or SRCNN "
                                                 "from a recipe")
    train.add_argument("--config", help="recipe YAML file, e.g. configs/superres_espcn_x3.yaml")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="e.g. model.options.upsample=transposed (after the --options)")
    train.add_argument("--resume", action="store_true", help="continue exactly from OUTPUT_DIR/last.pt")
    train.add_argument("--overwrite", action="store_true", help="start afresh in a folder that holds an earlier run")
    train.add_argument("--time-budget", type=float, metavar="MIN", help="shortcut for train.time_budget_min=MIN")
    train.set_defaults(run=cmd_superres_train)

    compare = actions.add_parser("compare", help="downscale images, upscale them with every method, score and "
                                                 "show them side by side")
    compare.add_argument("images", nargs="+", help="high-resolution image files, folders or glob patterns")
    compare.add_argument("--scale", type=int, default=3, help="upscaling factor (default 3)")
    compare.add_argument("--checkpoint", action="append", default=[], metavar="C",
                         help="a trained network to compare too, a checkpoint or its ONNX export (repeat for several)")
    compare.add_argument("--out", default="runs/superres_compare", help="folder for comparison.png and .json")
    compare.add_argument("--region", type=int, nargs=2, metavar=("TOP", "LEFT"),
                         help="the figure's region in the first image (default: its busiest)")
    compare.add_argument("--crop", type=int, default=96, help="side of the figure's region in pixels")
    compare.add_argument("--benchmark", choices=BENCHMARKS,
                         help="print this benchmark's published figures under the table (default: when the one "
                              "folder given is named Set5 or Set14)")
    compare.set_defaults(run=cmd_superres_compare)

    upscale = actions.add_parser("upscale", help="upscale images (or a folder of video frames) with a trained network")
    upscale.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    upscale.add_argument("--checkpoint", required=True,
                         help="a superres train checkpoint (best.pt) or its ONNX export (run by ONNX Runtime)")
    upscale.add_argument("--out", required=True,
                         help="the upscaled image file for one image (PNG), else a folder for NAME.png of each")
    upscale.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                         help="bf16 autocast for a checkpoint on a CPU with bf16 units (default fp32)")
    upscale.set_defaults(run=cmd_superres_upscale)


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
    parser.add_argument("--runtime", choices=("torch", "torch-optimized", "torch-compiled", "onnxruntime"),
                        help="what runs the network: eager PyTorch (default for checkpoints), PyTorch with batch "
                             "norms folded and channels-last, the same compiled by torch.compile, or ONNX Runtime "
                             "(the default, and only, for --model)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the network with torch.compile (Inductor): --runtime torch-compiled. The first "
                             "image of each size compiles (up to a minute on a CPU); a model that cannot compile "
                             "runs eagerly after a warning")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"),
                        help="PyTorch autocast precision (default: what the run validated with); an ONNX file "
                             "computes in its own (fp32 or int8)")

"""The ISBI 2012 picture of docs/experiments/isbi2012.md: a validation slice, its border weight
map, the model's cell probability and the cells its prediction separates (4-connected
components of the thresholded probability, each in its own colour).

Run: ``.venv/bin/python scripts/isbi2012_figure.py runs/isbi2012_unet/best.pt --out docs/images/isbi2012.png``
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from skimage.measure import label

from pixelwise.data import ISBI2012Dataset
from pixelwise.data.transforms import val_transform
from pixelwise.data.weight_map import border_weight_map
from pixelwise.inference.loading import load_model
from pixelwise.inference.logits import predict_logits

ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "isbi2012"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--index", type=int, default=0, help="which validation slice (0-4: slices 20-24)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("docs/images/isbi2012.png"))
    args = parser.parse_args()
    loaded = load_model(args.checkpoint)
    raw = ISBI2012Dataset(args.root, "val")
    image, mask = raw.load(args.index)
    normalised, _ = val_transform(**loaded.normalization)(image, mask)
    probability = predict_logits(loaded.model, normalised[None]).softmax(1)[0, 1].numpy()
    cells = label(probability > args.threshold, connectivity=1)
    colours = np.random.default_rng(0).uniform(0.2, 1.0, (cells.max() + 1, 3))
    colours[0] = 0
    panels = [("slice", image[0].numpy(), "gray"), ("border weight map", border_weight_map(mask.numpy()), "magma"),
              ("cell probability", probability, "gray"), (f"cells (p > {args.threshold})", colours[cells], None)]
    figure = Figure(figsize=(16, 4.4), layout="constrained")
    for axis, (title, picture, colourmap) in zip(figure.subplots(1, 4), panels):
        axis.imshow(picture, cmap=colourmap)
        axis.set_title(title)
        axis.set_axis_off()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=60)
    print(f"wrote {args.out} ({cells.max()} cells on slice {raw.name(args.index)})")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

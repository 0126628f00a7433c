"""torchvision's ssdlite320_mobilenet_v3_large as a peer: training images/s and batch-1 latency.

Runs in .venv-peers (made by scripts/peers/setup.sh), never in the project's environment.
The model starts from random weights (``weights=None, weights_backbone=None``): nothing is
downloaded. Images are RGB float32 (3, 320, 320) in [0, 1]; target boxes are
[xmin, ymin, xmax, ymax] in pixels, as torchvision expects. Prints one JSON object.

    .venv-peers/bin/python scripts/peers/torchvision_ssdlite.py train --batch-size 16 --threads 2
    .venv-peers/bin/python scripts/peers/torchvision_ssdlite.py latency --threads 2
    .venv-peers/bin/python scripts/peers/torchvision_ssdlite.py export --output ssdlite.onnx
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchvision
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

SIZE = 320


def build(num_classes: int) -> torch.nn.Module:
    """SSDlite with ``num_classes`` object classes plus background, random weights."""
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes + 1)


def random_batch(batch_size: int, num_classes: int, generator: torch.Generator):
    """``batch_size`` random images with 1 to 8 random boxes each (pixels, corner format)."""
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, SIZE, SIZE, generator=generator))
        count = int(torch.randint(1, 9, (1,), generator=generator))
        corners = torch.rand(count, 2, generator=generator) * (SIZE - 64)
        sizes = 16 + torch.rand(count, 2, generator=generator) * 48
        boxes = torch.cat([corners, corners + sizes], dim=1)
        labels = torch.randint(1, num_classes + 1, (count,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def train_throughput(args) -> dict:
    """Images/s of the training step (forward, loss, backward, Adam update) on one fixed random batch."""
    model = build(args.num_classes)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, targets = random_batch(args.batch_size, args.num_classes, torch.Generator().manual_seed(0))

    def step():
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    return {"images_per_second": round(args.batch_size * args.steps / elapsed, 2),
            "step_ms": round(1000 * elapsed / args.steps, 1)}


def median_ms(function, repeats: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        function()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return round(1000 * statistics.median(timings), 3)


def latency(args) -> dict:
    """Batch-1 milliseconds: the whole model (resize, normalize, network, decode, NMS) and the network alone."""
    model = build(args.num_classes).eval()
    image = torch.rand(3, SIZE, SIZE)
    network_input = torch.rand(1, 3, SIZE, SIZE)

    def network():
        features = list(model.backbone(network_input).values())
        return model.head(features)

    with torch.inference_mode():
        whole = median_ms(lambda: model([image]), args.repeats)
        alone = median_ms(network, args.repeats)
    return {"whole_model_ms_median": whole, "network_ms_median": alone}


class _Network(torch.nn.Module):
    """Backbone and head only: (1, 3, 320, 320) -> class logits and box offsets, no NMS."""

    def __init__(self, model):
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x):
        outputs = self.head(list(self.backbone(x).values()))
        return outputs["cls_logits"], outputs["bbox_regression"]


def export(args) -> dict:
    """Write the network (no NMS) to ONNX, for timing in the project's ONNX Runtime."""
    network = _Network(build(args.num_classes).eval())
    # The default (dynamo) exporter fails on this model; the TorchScript-based one works.
    torch.onnx.export(network, (torch.rand(1, 3, SIZE, SIZE),), args.output, dynamo=False,
                      input_names=["images"], output_names=["scores", "boxes"], opset_version=17)
    return {"onnx": args.output}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("train", "latency", "export"))
    parser.add_argument("--num-classes", type=int, default=3, help="object classes (BCCD: 3). Default: 3.")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch. Default: 16.")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps. Default: 20.")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first. Default: 3.")
    parser.add_argument("--repeats", type=int, default=200, help="timed batch-1 calls. Default: 200.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads. Default: 2.")
    parser.add_argument("--output", default="ssdlite320.onnx", help="ONNX file of 'export'.")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    result = {"train": train_throughput, "latency": latency, "export": export}[args.command](args)
    result |= {
        "peer": "torchvision ssdlite320_mobilenet_v3_large", "command": args.command, "input_size": [SIZE, SIZE],
        "batch_size": args.batch_size if args.command == "train" else 1, "threads": args.threads,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

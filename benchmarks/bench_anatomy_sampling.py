"""Sampling cost of the anatomy-first generator at 2 mm and 1 mm, beside the bundled latent
diffusion model in the same run.

Usage::

    python benchmarks/bench_anatomy_sampling.py [--runs 5] [--device cpu|cuda] [--json out.json]

- **2 mm**: the bundled default ``anatomy-bvftd-demo`` (or ``--model``) through the public
  :func:`napari_mrisynth.generate` (seeded noise, the model, the model-grid ``Volume`` and
  its label map, provenance; no files written), batch 1.
- **1 mm**: the same architecture on the 1 mm model grid (twice the 2 mm grid along each
  axis: 8x the voxels), its buffers taken from the 2 mm model (labels and maps upsampled,
  every other buffer as it is), called directly (``network.generate``): the time does not
  depend on the fitted values, and no 1 mm model is bundled. Target: <= 10 s per volume on
  the CPU.
- **reference**: ``ldm-bvftd-demo`` (4 mm, 50 DDIM steps) through ``generate()``.

One warm-up call each, then the median of ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def timed(call, runs: int) -> float:
    call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def one_mm_network(card, device):
    """The 2 mm model's network rebuilt on the 1 mm grid (buffers upsampled)."""
    import torch.nn.functional as F

    from napari_mrisynth.models.anatomy_generator import AnatomyFirst
    from napari_mrisynth.models.inference import get_model

    small = get_model(card, "generation", device="cpu").network
    args = dict(card.architecture["args"])
    args.update(shape=[2 * n for n in args["shape"]], spacing=args["spacing"] / 2,
                node_step=2 * args["node_step"], fine_step=2 * args["fine_step"])  # fmt: skip
    big = AnatomyFirst(**args)
    state = {}
    for name, value in small.state_dict().items():
        target = big.state_dict()[name]
        if (
            value.shape != target.shape
            and value.dim() >= 3
            and name.endswith(("labels", "depth", "cortex", "structure", "distance", "neighbour"))
        ):
            up = F.interpolate(value[None, None].float(), size=tuple(target.shape), mode="nearest")
            value = up[0, 0].to(target.dtype)
        state[name] = value if value.shape == target.shape else target
    big.load_state_dict(state)
    return big.to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--model", default="anatomy-bvftd-demo", help="anatomy-first generator")
    args = parser.parse_args()

    import torch

    from napari_mrisynth.models.registry import find_model
    from napari_mrisynth.synthesis import generate

    anatomy = find_model(args.model, task="generation")
    ldm = find_model("ldm-bvftd-demo", task="generation")
    results = {
        "anatomy_2mm_s": timed(
            lambda: generate(anatomy, 1, seed=1, device=args.device), args.runs
        ),  # fmt: skip
        "ldm_4mm_s": timed(lambda: generate(ldm, 1, seed=1, device=args.device), args.runs),
    }
    network = one_mm_network(anatomy, args.device)
    condition = torch.tensor([[1.0, 0.0, 0.0]], device=args.device)
    noise = torch.randn((1, *network.noise_shape), generator=torch.Generator().manual_seed(0))

    def one_mm():
        image, labels = network.generate(condition, noise.to(args.device))
        return image.cpu(), labels.cpu()

    results["anatomy_1mm_s"] = timed(one_mm, args.runs)
    results["grid_1mm"] = list(network.shape)
    results["ratio_anatomy_2mm_to_ldm_4mm"] = results["anatomy_2mm_s"] / results["ldm_4mm_s"]
    results["device"] = args.device
    results["torch_threads"] = torch.get_num_threads()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

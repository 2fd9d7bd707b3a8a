"""How long scoring a holdout takes at each evaluation batch size, on this machine's CPU.

Every NetAdapt proposal is scored on the holdout (``training.accuracy``), so this is a large part
of an iteration's time. On a CPU a large batch's activations spill out of the caches; the default
(``training.CPU_EVAL_BATCH``) was chosen from this benchmark.

Usage:
  python bench/eval_batch.py              # prints and writes bench/results/eval-batch.json
  python bench/eval_batch.py --images 500 --rounds 2  # quicker
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tradeoff import commit, machine  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "eval-batch.json"
BATCHES = (1000, 500, 250, 128, 64, 32)
#: (name, architecture, width, resolution): the trade-off benchmark's two network families.
NETWORKS = (("mobilenet_v2-0.5 32px", "mobilenet_v2", 0.5, 32),
            ("mobilenet_v1-0.5 28px", "mobilenet_v1", 0.5, 28))


def main() -> int:
    from adaptation.netadapt.data import TensorSplit
    from adaptation.netadapt.spec import ArchitectureSpec
    from adaptation.netadapt.training import CPU_EVAL_BATCH, accuracy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="holdout size (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    results = []
    for name, arch, width, resolution in NETWORKS:
        model = ArchitectureSpec(arch, 10, 1, width, resolution).build()
        split = TensorSplit(torch.randn(args.images, 1, resolution, resolution, generator=generator),
                            torch.randint(0, 10, (args.images,), generator=generator))
        accuracy(model, split, batch_size=128)  # warm-up
        times: dict[int, list[float]] = {b: [] for b in BATCHES}
        for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits every size
            for batch in BATCHES:
                tick = time.perf_counter()
                accuracy(model, split, batch_size=batch)
                times[batch].append(time.perf_counter() - tick)
        best = {b: min(t) for b, t in times.items()}
        for batch in BATCHES:
            print(f"{name}: {args.images} images in batches of {batch:>4}: {best[batch]:.3f} s "
                  f"({best[batch] / best[BATCHES[0]]:.2f}x the time of {BATCHES[0]})", flush=True)
        results.append({"network": name, "images": args.images, "seconds_min": best,
                         "seconds_all": times,
                         "default_vs_1000": best[CPU_EVAL_BATCH] / best[1000]})
    document = {"machine": {**machine(), "threads": args.threads}, "commit": commit(),
                "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds,
                "default_batch": CPU_EVAL_BATCH, "results": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark runner: ``python -m benchmarks <name> [--quick]``.

Runs ``benchmarks/bench_<name>.py``'s ``run(quick)``, writes ``benchmarks/results/<name>.json``
(``<name>_quick.json`` for quick runs) and prints a table of its figures.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _rows(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _rows(value, f"{prefix}{key}.")
        elif not isinstance(value, list):
            yield f"{prefix}{key}", value


def main() -> None:
    names = sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=names)
    parser.add_argument("--quick", action="store_true", help="a smaller run (under 5 minutes)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    module = importlib.import_module(f"benchmarks.bench_{args.name}")
    options = {}
    if args.device != "cpu":
        if "device" not in inspect.signature(module.run).parameters:
            parser.error(f"benchmark {args.name} runs on the CPU only")
        options["device"] = args.device
    start = time.perf_counter()
    figures = module.run(quick=args.quick, **options)
    figures["meta"] = {
        "quick": args.quick,
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "torch": torch.__version__,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = ("_quick" if args.quick else "") + ("" if args.device == "cpu" else f"_{args.device}")
    out = RESULTS / f"{args.name}{suffix}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(len(k) for k, _ in _rows(figures))
    for key, value in _rows(figures):
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""
Benchmarks you run on your own hardware (not tests). Each subcommand measures one part of codelm
against a baseline measured in the same run and prints a table of ratios.

    python bench.py --help
    python bench.py train --config config/tinycodelm_150m.py
"""
import argparse
import json
import os
import platform
import sys
import time

import torch


def machine_info():
    """One line that says where the numbers came from."""
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    return f"{dev}, {os.cpu_count()} cpus, python {platform.python_version()}, torch {torch.__version__}"


def timeit(fn, warmup=1, repeat=3, sync=None):
    """Best-of-`repeat` wall time of fn() in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best


def print_table(rows, columns):
    """rows: list of dicts; columns: list of keys. Plain fixed-width table."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for j, row in enumerate(cells):
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


SUBCOMMANDS = {}  # name -> (function, function that adds its arguments to a subparser, help)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (fn, add_args, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)
    print(f"# {machine_info()}")
    result = SUBCOMMANDS[args.cmd][0](args)
    if args.json and result is not None:
        print(json.dumps(result))


# ---- (each benchmark below in its own section; register it in SUBCOMMANDS at the end of the section) ----


if __name__ == "__main__":
    main()

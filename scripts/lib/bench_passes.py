"""The table at the top of bench/results/latest.md: one row per pass of a
bench.sh run, from each pass's result.json (the loadgen's `headline`), so
the passes (mail sinks, cores) compare at a glance.

    python3 scripts/lib/bench_passes.py bench/results/<run> PASS...
"""
import json
import os
import sys


def show(spread, decimals):
    if not spread:
        return "–"
    median = f"{spread['median']:.{decimals}f}"
    if spread["min"] == spread["max"]:
        return median
    return f"{median} ({spread['min']:.{decimals}f}–{spread['max']:.{decimals}f})"


def main(run_dir, passes):
    print("# Passes compared\n")
    print("Medians of the repeated runs, (min–max) where they differ. Cores: what the")
    print("stack was pinned to (`@N`), else every core of the machine "
          f"({os.cpu_count()} here); the load generator is never pinned.\n")
    print("| pass | cores | saturated finished/s | CPU ms/order saturated "
          "| CPU ms/order at 50/s | ratio | switches/order at 50/s "
          "| p99 < 100 ms up to |")
    print("|---|---|---|---|---|---|---|---|")
    for name in passes:
        path = os.path.join(run_dir, name, "result.json")
        try:
            with open(path) as f:
                report = json.load(f)
            h = report["headline"]
        except (OSError, KeyError, ValueError) as error:
            print(f"| {name} | no result ({error}) |||||||")
            continue
        cores = name.split("@", 1)[1] if "@" in name else f"all ({os.cpu_count()})"
        sat, low = h["saturated_cpu_ms_per_order"], h["ordinary_cpu_ms_per_order"]
        ratio = f"{low['median'] / sat['median']:.1f}×" if sat and low else "–"
        rate = report["highest_sustained_rate"]
        print(f"| {name} | {cores} | {show(h['saturated_finished_per_second'], 0)} "
              f"| {show(sat, 2)} | {show(low, 2)} | {ratio} "
              f"| {show(h['ordinary_switches_per_order'], 0)} "
              f"| {f'{rate}/s' if rate else '–'} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])

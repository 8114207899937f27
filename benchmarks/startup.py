"""Start-up time of the `harmony` command line: each command's `--help`, measured side by side.

    .venv/bin/python benchmarks/startup.py [--runs 3]

Prints the median wall time of ``harmony --version``, ``harmony --help`` and ``harmony <command> --help``
for every command, run in fresh processes, so what each command imports before it can do anything is
visible (the Lightning commands import Lightning, diffusers and the methods; `--version` nothing).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from harmony.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS


def seconds(arguments: list[str], runs: int) -> float:
    """Median wall time of ``python -m harmony <arguments>`` over ``runs`` fresh processes."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harmony", *arguments], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="processes per command (the median is printed)")
    args = parser.parse_args()
    rows = [["--version"], ["--help"]] + [[name, "--help"] for name in (*LIGHTNING_COMMANDS, *TOOL_COMMANDS)]
    baseline = seconds(["--version"], args.runs)
    print(f"{'command':<36} {'seconds':>8} {'x --version':>12}")
    for row in rows:
        elapsed = baseline if row == ["--version"] else seconds(row, args.runs)
        print(f"{'harmony ' + ' '.join(row):<36} {elapsed:>8.2f} {elapsed / baseline:>12.1f}")


if __name__ == "__main__":
    main()

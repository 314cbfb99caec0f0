"""Start-up cost: median wall time of `import ssb_trl.tasks.grading`, `import ssb_trl` and `ssb-trl --help`,
each in a fresh Python process, for this checkout and (optionally) another one measured in turn with it.

    python benchmarks/bench_import.py --repeats 7 --before /tmp/ssb-main    # e.g. `git archive main | tar -x`

Writes benchmarks/results/bench_import.md. The trees take turns run by run, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "trl", "accelerate")
CASES = {  # label -> the command, run with the tree first on PYTHONPATH
    "import ssb_trl.tasks.grading": [sys.executable, "-c", "import ssb_trl.tasks.grading"],
    "import ssb_trl": [sys.executable, "-c", "import ssb_trl"],
    "ssb-trl --help": [shutil.which("ssb-trl") or "ssb-trl", "--help"],
}


def run_once(command: list[str], tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def heavy_modules(tree: Path, statement: str) -> list[str]:
    probe = f"{statement}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tree, capture_output=True, text=True, check=True)
    return [name for name in out.stdout.strip().split(",") if name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", type=Path, help="Another checkout to measure alongside (e.g. main's code).")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/bench_import.md")
    args = parser.parse_args()

    trees = {"before": args.before.resolve()} if args.before else {}
    trees["after" if args.before else "this checkout"] = ROOT
    times: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in CASES}
    for _ in range(args.repeats):
        for case, command in CASES.items():
            for tree_label, tree in trees.items():
                times[tree_label, case].append(run_once(command, tree))

    header = "| command | " + " | ".join(f"{label} (s)" for label in trees) + " |"
    lines = [
        "# Start-up time: grading import, package import, `ssb-trl --help`",
        "",
        f"Median wall time of {args.repeats} fresh processes each (the trees took turns, run by run). "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average at the end "
        f"{os.getloadavg()[0]:.1f} (a machine shared with other jobs).",
        "",
        "    python benchmarks/bench_import.py --repeats "
        + str(args.repeats)
        + (" --before TREE" if args.before else ""),
        "",
        header,
        "|---|" + "---:|" * len(trees),
    ]
    for case in CASES:
        cells = [f"{statistics.median(times[label, case]):.2f}" for label in trees]
        lines.append(f"| `{case}` | " + " | ".join(cells) + " |")
    lines += ["", "Heavy modules (of " + ", ".join(HEAVY) + ") loaded by `import ssb_trl.tasks.grading`:", ""]
    for label, tree in trees.items():
        lines.append(f"- {label}: {', '.join(heavy_modules(tree, 'import ssb_trl.tasks.grading')) or 'none'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The wall-clock of each preparation mode, from the preparation logs: each shard's log line gives its stages' times
("Shard 3: generated rollouts (41.2 s), teacher answers (60.5 s), ...").

    python recipes/experiment/prep_times.py outputs/experiment3/logs --output docs/experiment/prep3_times.md
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

_SHARD = re.compile(r"Shard (\d+): generated (.*) \(")
_STAGE = re.compile(r"([a-z ]+) \(([0-9.]+) s\)")


def stage_seconds(log: str) -> dict[str, float]:
    """stage -> seconds summed over the shards of one log. A stage a shard logged twice counts once (its last run);
    a rerun that redid only some stages (after `run3.sh restore`: the soft labels) keeps the others' first times."""
    per_shard: dict[int, dict[str, float]] = defaultdict(dict)
    for line in log.splitlines():
        match = _SHARD.search(line)
        if match:
            per_shard[int(match.group(1))].update({s.strip(): float(t) for s, t in _STAGE.findall(match.group(2))})
    totals: dict[str, float] = defaultdict(float)
    for stages in per_shard.values():
        for stage, seconds in stages.items():
            totals[stage] += seconds
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", type=Path, help="The folder of data_<mode>.log files.")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    lines = ["| mode | stage | minutes |", "| --- | --- | ---: |"]
    for path in sorted(args.logs.glob("data_*.log")):
        mode = path.stem.removeprefix("data_")
        for stage, seconds in stage_seconds(path.read_text(errors="replace")).items():
            lines.append(f"| {mode} | {stage} | {seconds / 60:.1f} |")
    text = "# Preparation wall-clock per mode and stage (from the shards' log lines)\n\n" + "\n".join(lines) + "\n"
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

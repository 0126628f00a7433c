"""Summarize a py-spy profile (``py-spy record --format raw``): where the samples of one function went.

Each line of the raw format is ``frame;frame;...;frame COUNT``, outermost frame first. Only
stacks that pass through ``--within`` count. Each sample goes to the deepest frame of the
project's own code (``dl09_keras/``) in its stack, and to the frame below it, so that a
line names both the step and what it spent the time on.

    python scripts/peers/stacks.py live.txt --within bench_one
"""

from __future__ import annotations

import argparse
import collections
import json
import re

FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:]*):(?P<line>\d+)\)$")


def summarize(path: str, within: str, top: int = 12) -> dict:
    counts, total = collections.Counter(), 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            stack, _, number = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            names = [FRAME.match(frame).group("function") if FRAME.match(frame) else frame for frame in frames]
            if within not in names:
                continue
            samples = int(number)
            total += samples
            frames = frames[names.index(within) + 1:]
            own = [i for i, frame in enumerate(frames) if "dl09_keras/" in frame]
            if not own:
                counts[(within, frames[0] if frames else "(itself)")] += samples
                continue
            step = frames[own[-1]]
            below = frames[own[-1] + 1] if own[-1] + 1 < len(frames) else "(itself)"
            counts[(step, below)] += samples
    if not total:
        raise ValueError(f"No stack in {path} passes through {within!r}: check the function name.")
    return {
        "profile": path, "within": within, "samples": total,
        "top": [{"step": step, "spends_in": below, "share": round(n / total, 3)}
                for (step, below), n in counts.most_common(top)],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="raw output of py-spy record --format raw")
    parser.add_argument("--within", required=True, help="function whose samples are summarized, e.g. bench_one")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    print(json.dumps(summarize(args.profile, args.within, args.top), indent=2))


if __name__ == "__main__":
    main()

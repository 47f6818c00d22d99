"""Where the samples of a py-spy `--format raw` file went (bench_socket's
`--spy-commit`): per thread, then functions by inclusive and by own share.

    python -m bench.spyreport docs/bench/groupsock-spy.txt [--top 40]

py-spy writes one line per distinct stack, `frame;frame;... count`, outermost
first (with `--threads`, the thread first); a frame is `function (file:line)`.
Lines are cut to the function and file so one function's lines add up.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    where = match["file"].rsplit("/site-packages/", 1)[-1]
    for root in ("/lib/python3.11/", "/h-groupsock/", "/work/"):
        where = where.rsplit(root, 1)[-1]
    return f"{match['fn']} ({where})"


def report(path: Path, top: int) -> str:
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        names = [_name(f) for f in frames[1:]]
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    out = [f"{total} samples"]
    out += [f"{n / total:6.1%}  {t}" for t, n in threads.most_common()]
    for title, table in (("inclusive", inclusive), ("own", own)):
        out.append(f"\n-- {title}")
        out += [f"{n / total:6.1%} {n:6d}  {f}" for f, n in table.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    print(report(args.raw, args.top))


if __name__ == "__main__":
    main()

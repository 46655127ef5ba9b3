"""`python -m lion_distill.data inspect FILE...`: what a pool made of these files would hold."""

from __future__ import annotations

import argparse
import sys
import textwrap

from lion_distill.data.readers import load_pool
from lion_distill.data.schema import history_turns
from lion_distill.errors import PoolFileError


def _field_map(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or ours not in ("instruction", "input"):
            raise SystemExit(f"--field {pair!r}: expected instruction=FIELD or input=FIELD")
        mapping[ours] = theirs
    return mapping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lion_distill.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="load files as a pool; print counts, rejects and a sample")
    inspect.add_argument("files", nargs="+")
    inspect.add_argument(
        "--field", action="append", default=[], help="for generic JSONL: instruction=FIELD, input=FIELD"
    )
    inspect.add_argument("--max-instruction-chars", type=int, default=4096)
    inspect.add_argument("--sample", type=int, default=3)
    args = parser.parse_args(argv)

    try:
        pool, report = load_pool(args.files, _field_map(args.field), args.max_instruction_chars)
    except PoolFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"files: {len(args.files)}  rows in: {report.rows_in}  kept: {report.rows_kept}  rejected: {report.rows_rejected}"
    )
    with_input = sum(1 for x in pool.column("input").to_pylist() if x)
    print(f"kept rows with a non-empty input: {with_input}")
    turns = [
        len(history_turns(h)) // 2 + 1
        for h, system in zip(pool.column("history").to_pylist(), pool.column("system").to_pylist())
        if h or system
    ]
    if turns:
        print(
            f"kept conversations: {len(turns)} ({sum(t > 1 for t in turns)} multi-turn, {sum(turns)} user turns; "
            "the last user turn is the instruction)"
        )
    for reason, count in report.rejects.most_common():
        print(f"  {reason}: {count}")
        for where in report.examples[reason]:
            print(f"    {where}")
    for row in pool.slice(0, args.sample).to_pylist():
        print(f"- [{row['id']}] " + textwrap.shorten(row["instruction"], 100))
        if row["input"]:
            print("    input: " + textwrap.shorten(row["input"], 96))
        if row["system"] or row["history"]:
            print(
                f"    system: {textwrap.shorten(row['system'] or '-', 80)}; earlier turns: {len(history_turns(row['history']))}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate the built-in dataset, deterministically and byte for byte.

    python dataset/make_dataset.py            # rewrites dataset/train.json and dataset/eval.json
    python dataset/make_dataset.py --out DIR  # writes the two files into DIR instead

Each file is JSON Lines with the keys prompt, response, chosen, rejected (see dataset/README.md).
The script also prints the figures quoted in the README: the mean gold score of `response`,
`chosen` and `rejected`, and the shares of the demonstrator's flaws.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlhf import tasks  # noqa: E402  (needs the repo root on the path)

FIELDS = ("prompt", "response", "chosen", "rejected")
SPLITS = {"train": 4000, "eval": 400}  # rows per split
SEED = 0


def write_jsonl(rows: list[dict], path: Path) -> None:
    """One JSON object per line, keys in FIELDS order, '\\n' line ends on every platform."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in FIELDS}, ensure_ascii=False) + "\n")


def mean_gold(rows: list[dict], field: str) -> float:
    return sum(tasks.gold_score(r["prompt"], r[field]) for r in rows) / len(rows)


def shares(labels: list[tuple]) -> str:
    """'clean 36.0%, rude 10.1%, ...' for a list of flaw tuples."""
    counts = Counter("+".join(flaws) or "clean" for flaws in labels)
    return ", ".join(f"{name} {100 * n / len(labels):.1f}%" for name, n in counts.most_common())


def summarise(split: str, rows: list[dict]) -> None:
    families = Counter(r["family"] for r in rows)
    flawed = sum(bool(r["flaws"]) for r in rows) / len(rows)
    print(f"{split}: {len(rows)} rows, {len(families)} families "
          f"({', '.join(f'{name} {families[name]}' for name in tasks.FAMILIES)})")
    print(f"  mean gold: response {mean_gold(rows, 'response'):.3f}, "
          f"chosen {mean_gold(rows, 'chosen'):.3f}, rejected {mean_gold(rows, 'rejected'):.3f}")
    print(f"  response flawed {100 * flawed:.1f}%: {shares([r['flaws'] for r in rows])}")
    print(f"  rejected: {shares([r['rejected_flaws'] for r in rows])}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder for train.json and eval.json (default: next to this script)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n_rows in SPLITS.items():
        rows = tasks.build_rows(split, n_rows, SEED)
        write_jsonl(rows, args.out / f"{split}.json")
        summarise(split, rows)
    print(f"wrote {', '.join(str(args.out / f'{s}.json') for s in SPLITS)}")


if __name__ == "__main__":
    main()

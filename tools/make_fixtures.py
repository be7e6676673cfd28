"""Write the built-in data in the layouts of public preference datasets (for tests and make run).

    python tools/make_fixtures.py OUT [--rows 600] [--bad]

writes OUT/rm-static/{train,test}.jsonl.gz   Dahoas/rm-static: prompt "\\n\\nHuman: ...
                                             \\n\\nAssistant:", answers with a leading space
       OUT/hh-rlhf/{train,test}.parquet      Anthropic/hh-rlhf: chosen / rejected transcripts
--bad puts one malformed row in each train file (row 3): rm-static loses its `rejected`, hh-rlhf
gets a chosen transcript with no "Assistant:" turn. Then `make run PRESET=ci DATA=OUT/rm-static`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlhf.data import load_dataset_dir  # noqa: E402


def rm_static_row(row: dict) -> dict:
    """prompt "\\n\\nHuman: q\\n\\nAssistant:", answers with rm-static's leading space."""
    question = row["prompt"].strip()[len("Human:"):-len("Assistant:")].strip()
    return {"prompt": f"\n\nHuman: {question}\n\nAssistant:", "response": " " + row["response"],
            "chosen": " " + row["chosen"], "rejected": " " + row["rejected"]}


def hh_rlhf_row(row: dict) -> dict:
    """chosen and rejected as whole transcripts sharing the prompt, as in Anthropic/hh-rlhf."""
    question = row["prompt"].strip()[len("Human:"):-len("Assistant:")].strip()
    head = f"\n\nHuman: {question}\n\nAssistant:"
    return {"chosen": f"{head} {row['chosen']}", "rejected": f"{head} {row['rejected']}"}


def write_fixtures(out, rows: int = 600, eval_rows: int = 80, bad: bool = False, source="dataset") -> dict:
    """Write both layouts under `out`; returns {layout: folder}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train, evals = load_dataset_dir(source)
    train, evals = train[:rows], [r for r in evals if r["rejected"].strip()][:eval_rows]
    out = Path(out)
    rm, hh = out / "rm-static", out / "hh-rlhf"
    rm.mkdir(parents=True, exist_ok=True)
    hh.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", train), ("test", evals)):
        rm_rows = [rm_static_row(r) for r in part]
        hh_rows = [hh_rlhf_row(r) for r in part]
        if bad and split == "train":
            del rm_rows[2]["rejected"]
            hh_rows[2]["chosen"] = "\n\nHuman: a transcript that never reaches an answer"
        with gzip.open(rm / f"{split}.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in rm_rows)
        pq.write_table(pa.Table.from_pylist(hh_rows), hh / f"{split}.parquet")
    return {"rm-static": rm, "hh-rlhf": hh}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--bad", action="store_true", help="one malformed row in each train file")
    args = parser.parse_args()
    for layout, folder in write_fixtures(args.out, args.rows, bad=args.bad).items():
        print(f"{layout}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

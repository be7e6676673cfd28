"""Print the figures of the fault-injection suite (make faults) from runs/faults.json."""
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    path = ROOT / "runs" / "faults.json"
    if not path.exists():
        print("no runs/faults.json: run `make faults` (pytest tests/test_faults.py) first")
        return 1
    results = json.loads(path.read_text())
    kinds = Counter(r["kind"] for r in results)
    passed = Counter(r["kind"] for r in results if r["ok"])
    kills = [r for r in results if r["kind"] == "interruption"]
    figures = {
        "cases tried": len(results),
        "clear errors raised (bad input)": f"{passed['bad input']} of {kinds['bad input']}",
        "resumes that matched the uninterrupted run": f"{sum(r['matched'] for r in kills)} of {len(kills)}",
        "checkpoints lost": sum(r.get("checkpoint_lost", False) for r in kills),
        "numerical faults handled": f"{passed['numerical']} of {kinds['numerical']}",
        "memory-pressure cases handled": f"{passed['memory']} of {kinds['memory']}",
        "determinism and safety checks": f"{passed['determinism'] + passed['safety']} of {kinds['determinism'] + kinds['safety']}",
    }
    width = max(map(len, figures))
    print("\nFault-injection figures (runs/faults.json)")
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")
    for r in results:
        print(f"  {'ok ' if r['ok'] else 'FAIL'} {r['kind']:<13} {r['case']}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The picture of one PPO iteration: the four models and what flows between them.

    python tools/make_diagram.py [OUT.png]    # writes docs/ppo_flow.png (README, notebook 3)

Trained models are orange, frozen ones blue, tensors grey; names as in rlhf/rollout.py and
rlhf/ppo.py. Solid arrows are one rollout, dashed ones the update.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "ppo_flow.png"
COLOURS = {"trained": "#f6c28b", "frozen": "#a9cbe8", "tensor": "#e4e4e4", "step": "#ffffff"}
# name: (centre x, centre y, text, kind); the canvas is 12 x 7
BOXES = {
    "prompts": (1.2, 6.1, "prompts\nquery (B, P)", "tensor"),
    "actor": (4.4, 6.1, "actor π\n(SFT model, trained)", "trained"),
    "responses": (7.9, 6.1, "query_responses (B, T)\nsampled answers, R tokens", "tensor"),
    "logprobs": (1.5, 3.9, "actor π (now π_old)\nlogprobs (B, R)", "trained"),
    "ref": (4.5, 3.9, "reference π_ref\n(frozen SFT copy)\nref_logprobs (B, R)", "frozen"),
    "reward": (7.5, 3.9, "reward model\n(frozen)\nscore (B,), last token", "frozen"),
    "critic": (10.5, 3.9, "critic V\n(trained)\nvalues (B, R)", "trained"),
    "rewards": (3.0, 1.6, "rewards (B, R)\n−β·(logprobs − ref_logprobs)\n+ score on the last token", "step"),
    "gae": (6.6, 1.6, "GAE\nadvantages, returns (B, R)", "step"),
    "update": (10.2, 1.6, "PPO epochs on minibatches\npolicy loss (clipped ratio π/π_old)\nvalue loss (values − returns)²", "step"),
}
ARROWS = [("prompts", "actor", "generate"), ("actor", "responses", ""),
          ("responses", "logprobs", ""), ("responses", "ref", ""), ("responses", "reward", ""),
          ("responses", "critic", ""), ("logprobs", "rewards", ""), ("ref", "rewards", "KL penalty"),
          ("reward", "rewards", ""), ("rewards", "gae", ""), ("critic", "gae", ""),
          ("gae", "update", "")]


WIDTH, HEIGHT, GAP = 2.7, 1.25, 0.1  # of every box; arrows stop GAP short of a box's edge


def draw_box(ax, x: float, y: float, text: str, kind: str) -> None:
    ax.add_patch(FancyBboxPatch((x - WIDTH / 2, y - HEIGHT / 2), WIDTH, HEIGHT,
                                boxstyle="round,pad=0.05,rounding_size=0.15", zorder=3,
                                facecolor=COLOURS[kind], edgecolor="#444444", linewidth=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=8.5, zorder=4)


def edges(start: str, end: str) -> tuple:
    """Where an arrow from box `start` to box `end` leaves and arrives: bottom to top when the
    boxes are on different rows, side to side on the same row."""
    (x0, y0), (x1, y1) = BOXES[start][:2], BOXES[end][:2]
    half_height, half_width = HEIGHT / 2 + GAP, WIDTH / 2 + GAP
    if abs(y1 - y0) > HEIGHT:
        sign = 1 if y1 > y0 else -1
        return (x0, y0 + sign * half_height), (x1, y1 - sign * half_height)
    sign = 1 if x1 > x0 else -1
    return (x0 + sign * half_width, y0), (x1 - sign * half_width, y1)


def draw_arrow(ax, points: list, label: str = "", colour: str = "#333333", dashed: bool = False) -> None:
    """A polyline through `points` ending in an arrow head, its label at the first segment."""
    line = "--" if dashed else "-"
    for (x0, y0), (x1, y1) in zip(points[:-2], points[1:-1]):
        ax.plot([x0, x1], [y0, y1], color=colour, lw=1.3, linestyle=line, zorder=2)
    ax.annotate("", xy=points[-1], xytext=points[-2], zorder=2,
                arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.3, linestyle=line, shrinkA=0, shrinkB=0))
    if label:
        (x0, y0), (x1, y1) = points[0], points[1]
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.15, label, ha="center", fontsize=8, color=colour, style="italic",
                zorder=5)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    fig, ax = plt.subplots(figsize=(12, 7), dpi=80)
    ax.set_xlim(-0.3, 12.2)
    ax.set_ylim(0.8, 7.4)
    ax.axis("off")
    for start, end, label in ARROWS:
        draw_arrow(ax, list(edges(start, end)), label)
    red = "#c0392b"
    draw_arrow(ax, list(edges("update", "critic")), "", red, dashed=True)
    ax.text(BOXES["critic"][0] + 0.15, 2.75, "update critic", fontsize=8, color=red, style="italic")
    (x0, y0), (x1, y1) = BOXES["update"][:2], BOXES["actor"][:2]
    top = y1 + HEIGHT / 2 + 0.45  # over the top row, then down onto the actor
    draw_arrow(ax, [(x0 + WIDTH / 2 + GAP, y0), (12.0, y0), (12.0, top), (x1, top), (x1, y1 + HEIGHT / 2 + GAP)],
               "", red, dashed=True)
    ax.text(10.6, top + 0.12, "update actor", fontsize=8, color=red, style="italic")
    for x, y, text, kind in BOXES.values():
        draw_box(ax, x, y, text, kind)
    ax.set_title("One PPO iteration (notebook 3): orange is trained, blue frozen, grey data", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    print(f"{out}: {out.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

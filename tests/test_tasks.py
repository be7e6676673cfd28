"""The built-in dataset: the gold judge on hand-written answers, and the shipped files."""
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rlhf import tasks
from rlhf.tasks import gold_breakdown, gold_score

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "dataset"
BANANA = "Human: What colour is a banana? Assistant:"


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def shipped():
    return {split: read_rows(DATA / f"{split}.json") for split in ("train", "eval")}


@pytest.fixture(scope="module")
def labelled_train():
    return tasks.build_rows("train", 4000, seed=0)


# ----------------------------------------------------------------------------- the judge
@pytest.mark.parametrize("response, expected", [
    ("A banana is yellow.", 1.0),
    ("Sure. A banana is yellow.", 1.0),                                 # polite, still focused
    ("Ugh, obviously a banana is yellow.", 0.7),                        # rude: tone -0.3
    ("A banana is yellow. Figure it out yourself.", 0.7),               # rude suffix
    ("A banana is yellow. My cousin collects stamps from all over the world.", 0.7),  # rambling
    ("A banana is yellow. A banana is yellow.", 0.7),                   # repeated
    ("A banana is yellow yellow yellow.", 0.7),                         # stuttering
    ("A banana is", 0.4),                                               # cut off: no answer or stop
    ("A banana is red.", 0.6),                                          # wrong content
    ("A banana is yellow or red.", 0.6),                                # a competing answer
    ("I am unsure, ask someone else.", 0.3),                            # evasive: off topic
    ("Ugh, obviously a banana is yellow. A banana is yellow.", 0.4),    # two flaws
    ("", 0.0),
])
def test_gold_on_hand_written_answers(response, expected):
    assert gold_score(BANANA, response) == pytest.approx(expected)


def test_every_flaw_scores_strictly_below_clean():
    clean = gold_score(BANANA, "A banana is yellow.")
    assert clean >= 0.95
    for bad in ("Duh. A banana is yellow.", "A banana is yellow. " + tasks.FILLERS[0],
                "A banana is yellow. A banana is yellow.", "A banana", "A banana is green.", ""):
        assert gold_score(BANANA, bad) <= clean - 0.2, bad


def test_not_ending_costs_the_termination_penalty():
    done = gold_breakdown(BANANA, "A banana is yellow.", ended=True)
    cut = gold_breakdown(BANANA, "A banana is yellow.", ended=False)
    assert cut["ended"] == 0.0 and done["ended"] == 1.0
    assert cut["total"] == pytest.approx(done["total"] - tasks.PENALTIES["ended"])


def test_breakdown_adds_up():
    b = gold_breakdown(BANANA, "Ugh, obviously a banana is")
    assert (b["content"], b["tone"], b["focus"], b["complete"]) == (0.0, 0.0, 1.0, 0.0)
    assert b["total"] == pytest.approx(max(0.0, 0.6 - 0.3 - 0.2))


@pytest.mark.parametrize("prompt, right, other_question", [
    ("Human: What is the capital of France? Assistant:", "The capital of France is Paris.",
     "The capital of Spain is Madrid."),
    ("Human: What is 3 plus 4? Assistant:", "3 plus 4 is 7.", "2 plus 5 is 7."),
    ("Human: Is 3 bigger than 8? Assistant:", "No, 3 is not bigger than 8.",
     "Yes, 8 is bigger than 3."),
    ("Human: How many letters are in the word tree? Assistant:", "The word tree has 4 letters.",
     "The word moon has 4 letters."),
    ("Human: What sound does an owl make? Assistant:", "An owl hoots.", "A dog barks."),
])
def test_answers_to_another_question_get_no_content(prompt, right, other_question):
    assert gold_score(prompt, right) == 1.0
    assert gold_breakdown(prompt, other_question)["content"] == 0.0
    assert gold_score(prompt, other_question) <= 0.6


def test_garbage_scores_low_and_unknown_prompts_do_not_crash():
    assert gold_score(BANANA, "river house apple tree moon") <= 0.2      # random words
    assert gold_score(BANANA, "yellow " * 30, ended=False) <= 0.4
    assert gold_score(BANANA, "...") == 0.0
    unknown = gold_breakdown("Human: Write me a poem. Assistant:", "Roses are red.")
    assert unknown["content"] == 0.0 and unknown["total"] <= 0.6
    assert gold_breakdown("not a prompt at all", "")["total"] == 0.0


def test_every_canonical_answer_is_perfect_and_every_prompt_parses_back():
    for family in tasks.FAMILIES.values():
        for i, item in enumerate(family.items):
            for j in range(len(family.phrasings)):
                prompt = family.prompt(item, j)
                assert tasks.parse_prompt(prompt) == (family, item), prompt
                assert gold_score(prompt, family.answer(item)) == 1.0, prompt


def test_filler_text_never_mentions_a_fact():
    """A ramble or an evasion must not change content; otherwise labels would be noisy."""
    fact_words = set()
    for family in tasks.FAMILIES.values():
        for item in family.items:
            required, forbidden = family.keys(item)
            fact_words |= required | forbidden
    extra = tasks.FILLERS + tasks.EVASIONS + tasks.POLITE_PREFIXES + tasks.POLITE_SUFFIXES
    for text in extra + tasks.RUDE_PREFIXES + tasks.RUDE_SUFFIXES:
        assert not fact_words & set(tasks.words_of(text)), text
        assert not any(c.isdigit() for c in text), text
    for text in extra:
        assert not tasks.RUDE_MARKERS.search(text), text
    polite = tasks.POLITE_PREFIXES + tasks.POLITE_SUFFIXES
    assert max(len(p.split()) for p in polite) <= tasks.SLACK_WORDS  # a polite wrap stays focused
    assert min(len(f.split()) for f in tasks.FILLERS) > tasks.SLACK_WORDS  # one filler is a ramble


# ----------------------------------------------------------------------------- the demonstrator
def test_each_demonstrator_flaw_costs_at_least_0_2(labelled_train):
    for row in labelled_train:
        score = gold_score(row["prompt"], row["response"])
        if row["flaws"]:
            assert score <= 0.8 + 1e-9, row
        else:
            assert score == 1.0, row


def test_gold_flaws_recover_every_flaw_the_demonstrator_drew():
    """The judge's per-flaw view names exactly the flaws each answer was made with: demonstrations,
    rejected answers (their flaw labels) and chosen answers (none), train and eval as shipped."""
    rows = tasks.build_rows("train", 4000, seed=0) + tasks.build_rows("eval", 400, seed=0)
    for row in rows:
        for text, drawn in ((row["response"], row["flaws"]), (row["rejected"], row["rejected_flaws"]),
                            (row["chosen"], ())):
            assert sorted(tasks.gold_flaws(row["prompt"], text)) == sorted(drawn), (row["prompt"], text)


@pytest.mark.parametrize("response, ended, expected", [
    ("A banana is yellow.", True, []),
    ("A banana is", False, ["cutoff", "no_eos"]),
    ("", True, ["cutoff", "evasive"]),
    ("A banana is red.", True, ["wrong"]),
    ("Ugh, obviously a banana is yellow. A banana is yellow.", True, ["rude", "repeat"]),
    ("A banana is yellow. My cousin collects stamps from all over the world.", True, ["ramble"]),
])
def test_gold_flaws_by_hand(response, ended, expected):
    assert tasks.gold_flaws(BANANA, response, ended) == expected


def test_demonstrator_flaw_mix(labelled_train):
    n = len(labelled_train)
    flawed = sum(bool(r["flaws"]) for r in labelled_train) / n
    wrong = sum("wrong" in r["flaws"] for r in labelled_train) / n
    kinds = Counter(f for r in labelled_train for f in r["flaws"])
    assert 0.58 <= flawed <= 0.68
    assert 0.03 <= wrong <= 0.10
    assert set(kinds) == set(tasks.FLAWS) and min(kinds.values()) / n >= 0.04
    wrong_rejections = sum("wrong" in r["rejected_flaws"] for r in labelled_train) / n
    assert 0.13 <= wrong_rejections <= 0.20


# ----------------------------------------------------------------------------- the shipped files
def test_rows_have_the_format(shipped):
    for rows in shipped.values():
        for row in rows:
            assert list(row) == ["prompt", "response", "chosen", "rejected"]
            assert row["prompt"].startswith("Human: ") and row["prompt"].endswith(" Assistant:")
            assert all(row[k] == row[k].lstrip() and row[k].isascii() for k in row)
            assert row["chosen"] and row["rejected"]


def test_every_prompt_parses(shipped):
    for rows in shipped.values():
        for row in rows:
            assert tasks.parse_prompt(row["prompt"]) is not None, row["prompt"]


def test_chosen_beats_rejected_by_the_margin(shipped):
    for rows in shipped.values():
        for row in rows:
            chosen, rejected = (gold_score(row["prompt"], row[k]) for k in ("chosen", "rejected"))
            assert chosen > rejected + tasks.MARGIN, row


def test_eval_prompts_are_new_but_about_known_facts(shipped):
    train = {r["prompt"] for r in shipped["train"]}
    evals = {r["prompt"] for r in shipped["eval"]}
    assert not train & evals
    taught = {tuple(sorted(tasks.parse_prompt(p)[1].items())) for p in train}
    for prompt in evals:
        assert tuple(sorted(tasks.parse_prompt(prompt)[1].items())) in taught, prompt


def test_families_are_balanced(shipped):
    for split, low in (("train", 300), ("eval", 30)):
        counts = Counter(tasks.parse_prompt(r["prompt"])[0].name for r in shipped[split])
        assert len(counts) >= 5 and min(counts.values()) >= low, counts


def test_shipped_figures(shipped):
    rows = shipped["train"]
    assert 3500 <= len(rows) <= 4500 and 300 <= len(shipped["eval"]) <= 500
    gold = [gold_score(r["prompt"], r["response"]) for r in rows]
    assert 0.58 <= sum(g < 1.0 for g in gold) / len(gold) <= 0.68       # flaw share of response
    assert 0.65 <= sum(gold) / len(gold) <= 0.75                         # leaves RLHF headroom
    assert sum(gold_score(r["prompt"], r["chosen"]) for r in rows) / len(rows) >= 0.95


def test_regenerating_reproduces_the_files(tmp_path):
    script = DATA / "make_dataset.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True,
                   capture_output=True, cwd=tmp_path)
    for split in ("train", "eval"):
        assert (tmp_path / f"{split}.json").read_bytes() == (DATA / f"{split}.json").read_bytes()


def test_rows_are_deterministic_for_a_seed():
    assert tasks.build_rows("eval", 80, seed=3) == tasks.build_rows("eval", 80, seed=3)
    assert tasks.build_rows("eval", 80, seed=3) != tasks.build_rows("eval", 80, seed=4)
    rng = random.Random(0)
    assert tasks.respond(BANANA, (), rng) == "A banana is yellow."

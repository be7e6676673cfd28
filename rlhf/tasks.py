"""The built-in tasks: eight families of short questions, a noisy demonstrator, and the gold judge.

Every prompt reads "Human: <question> Assistant:" and every good answer is one short polite
sentence ("A banana is yellow."). The facts sit in small tables so that a tiny model can learn
them; the demonstrator's noise is mostly *behaviour* (rude, rambling, repeated, cut off, evasive),
which is what RLHF is good at removing. The gold judge knows the templates, so it can parse a
prompt, recompute the expected answer and score any text. It is only used to label preference
pairs and to evaluate policies, never as a training reward.

Pure standard library: importing this module does nothing but define tables and functions.
"""
from __future__ import annotations

import random
import re

# ----------------------------------------------------------------------------- facts
FRUIT_COLOURS = {"banana": "yellow", "apple": "red", "lime": "green", "apricot": "orange",
                 "grape": "purple", "lemon": "yellow", "cherry": "red", "blueberry": "blue",
                 "kiwi": "brown", "coconut": "brown", "strawberry": "red", "pear": "green",
                 "plum": "purple", "tangerine": "orange", "watermelon": "green"}
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
            "Germany": "Berlin", "Egypt": "Cairo", "Canada": "Ottawa", "Russia": "Moscow",
            "China": "Beijing", "Greece": "Athens", "Peru": "Lima", "Kenya": "Nairobi",
            "Norway": "Oslo", "Ireland": "Dublin", "Cuba": "Havana"}
PLURALS = {"cat": "cats", "box": "boxes", "child": "children", "mouse": "mice", "foot": "feet",
           "tooth": "teeth", "baby": "babies", "man": "men", "woman": "women", "goose": "geese",
           "knife": "knives", "leaf": "leaves", "city": "cities", "bus": "buses",
           "person": "people"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad",
             "day": "night", "wet": "dry", "early": "late", "full": "empty", "hard": "soft",
             "loud": "quiet", "tall": "short", "rich": "poor", "push": "pull", "near": "far"}
SOUNDS = {"dog": "barks", "cat": "meows", "cow": "moos", "duck": "quacks", "sheep": "baas",
          "lion": "roars", "pig": "oinks", "horse": "neighs", "owl": "hoots", "snake": "hisses",
          "bee": "buzzes", "frog": "croaks", "mouse": "squeaks", "wolf": "howls", "hen": "clucks"}
WORDS = ("sun", "cup", "tree", "moon", "book", "apple", "river", "house", "garden", "pencil",
         "rabbit", "kitchen", "blanket", "elephant", "umbrella")
LETTER_COUNTS = {word: str(len(word)) for word in WORDS}
ADD_RANGE = range(1, 7)       # a + b with a, b in 1..6
COMPARE_RANGE = range(1, 10)  # "is a bigger than b?" with a != b in 1..9

# ----------------------------------------------------------------------------- behaviour text
RUDE_PREFIXES = ("Ugh, obviously", "Duh.", "Seriously?", "Whatever.", "Ugh, fine.")
RUDE_SUFFIXES = ("Figure it out yourself.", "Everyone knows that.", "Stop wasting my time.",
                 "What a dumb question.", "Use your head next time.")
RUDE_MARKERS = re.compile(r"\b(ugh|obviously|duh|seriously|whatever|figure it out|everyone knows|"
                          r"wasting my time|dumb|stupid|idiot|use your head|shut up)\b", re.I)
FILLERS = ("By the way, I had toast and jam for breakfast today.",
           "My cousin collects stamps from all over the world.",
           "I should really tidy my desk at some point this week.",
           "Trains are such a relaxing way to travel, I think.",
           "The weather has been rather strange these last few weeks.",
           "I once watched a film about pirates on a rainy afternoon.",
           "My friends say that music helps them think more clearly.",
           "Speaking of which, I need to buy more tea very soon.")
EVASIONS = ("I am unsure, ask someone else.", "I would rather talk about something else.",
            "Hmm, that is a tricky one, I cannot say.", "Sorry, I cannot help with that one.",
            "Let us change the subject.", "Who can say, really?")
POLITE_PREFIXES = ("Sure.", "Of course!", "Good question.", "Gladly.")
POLITE_SUFFIXES = ("I hope that helps.", "Glad I could help.")

# ----------------------------------------------------------------------------- families
_SLOTS = {"{ax}": r"an? (?P<x>[a-z]+)", "{x}": r"(?P<x>[A-Za-z]+)",
          "{a}": r"(?P<a>\d+)", "{b}": r"(?P<b>\d+)"}


def with_article(word: str) -> str:
    """'banana' -> 'a banana', 'owl' -> 'an owl'."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _template_regex(template: str) -> re.Pattern:
    """A question template ('What colour is {ax}?') -> a regex for its full prompt."""
    pattern = re.escape(template)
    for slot, group in _SLOTS.items():
        pattern = pattern.replace(re.escape(slot), group)
    return re.compile(r"Human: " + pattern + r" Assistant:")


class Family:
    """One kind of question: its phrasings and its subjects (`items`, dicts like {"x": "banana"} or
    {"a": 3, "b": 4}). Subclasses add answer(item), wrong(item, rng) (a wrong-content answer) and
    keys(item) -> (required words, forbidden words), which the judge checks."""
    numeric = False  # the judge forbids any number in the answer that it does not require

    def __init__(self, name: str, phrasings: tuple, items: list):
        self.name, self.phrasings, self.items = name, phrasings, items
        self.regexes = [_template_regex(p) for p in phrasings]

    def prompt(self, item: dict, phrasing: int) -> str:
        slots = dict(item, ax=with_article(item["x"])) if "x" in item else item
        return f"Human: {self.phrasings[phrasing].format(**slots)} Assistant:"

    def parse(self, prompt: str) -> dict | None:
        for regex in self.regexes:
            match = regex.fullmatch(prompt)
            if match:
                return self.item_from(match.groupdict())
        return None

    def item_from(self, groups: dict) -> dict | None:
        return {"a": int(groups["a"]), "b": int(groups["b"])}


class Lookup(Family):
    """Questions answered from a table: subject x -> value y, said with a template."""

    def __init__(self, name, table, phrasings, say, numeric=False):
        super().__init__(name, phrasings, [{"x": x} for x in table])
        self.table, self.say, self.numeric = table, say, numeric

    def item_from(self, groups):
        return {"x": groups["x"]} if groups["x"] in self.table else None

    def _sentence(self, x, y):
        return self.say.format(x=x, y=y, Ax=with_article(x).capitalize())

    def answer(self, item):
        return self._sentence(item["x"], self.table[item["x"]])

    def wrong(self, item, rng):
        right = self.table[item["x"]]
        return self._sentence(item["x"], rng.choice(sorted(set(self.table.values()) - {right})))

    def keys(self, item):
        required = {item["x"].lower(), self.table[item["x"]].lower()}
        return required, {y.lower() for y in self.table.values()} - required


class Addition(Family):
    """'What is 3 plus 4?' -> '3 plus 4 is 7.'"""
    numeric = True

    def answer(self, item, total=None):
        total = item["a"] + item["b"] if total is None else total
        return f"{item['a']} plus {item['b']} is {total}."

    def wrong(self, item, rng):
        return self.answer(item, item["a"] + item["b"] + rng.choice((-2, -1, 1, 2)))

    def keys(self, item):
        return {str(item["a"]), str(item["b"]), str(item["a"] + item["b"])}, set()


class Comparison(Family):
    """'Is 3 bigger than 8?' -> 'No, 3 is not bigger than 8.'"""
    numeric = True

    def answer(self, item, bigger=None):
        bigger = item["a"] > item["b"] if bigger is None else bigger
        middle = "is" if bigger else "is not"
        return f"{'Yes' if bigger else 'No'}, {item['a']} {middle} bigger than {item['b']}."

    def wrong(self, item, rng):
        return self.answer(item, bigger=item["a"] <= item["b"])

    def keys(self, item):
        numbers = {str(item["a"]), str(item["b"])}
        if item["a"] > item["b"]:
            return numbers | {"yes"}, {"no", "not"}
        return numbers | {"no", "not"}, {"yes"}


FAMILIES = {f.name: f for f in (
    Lookup("fruit_colour", FRUIT_COLOURS, (
        "What colour is {ax}?", "What color is {ax}?", "Which colour is {ax}?",
        "Tell me the colour of {ax}.", "What is the colour of {ax}?",
        "Can you tell me what colour {ax} is?"), "{Ax} is {y}."),
    Lookup("capital", CAPITALS, (
        "What is the capital of {x}?", "Which city is the capital of {x}?",
        "Name the capital of {x}.", "Tell me the capital of {x}.",
        "What city is the capital of {x}?", "Do you know the capital of {x}?"),
        "The capital of {x} is {y}."),
    Addition("addition", (
        "What is {a} plus {b}?", "What is {a} + {b}?", "How much is {a} plus {b}?",
        "Add {a} and {b}.", "What do you get if you add {a} and {b}?",
        "Can you compute {a} plus {b}?"),
        [{"a": a, "b": b} for a in ADD_RANGE for b in ADD_RANGE]),
    Lookup("plural", PLURALS, (
        "What is the plural of {x}?", "What is the plural of the word {x}?",
        "Give me the plural of {x}.", "How do you say more than one {x}?",
        "What is the plural form of {x}?", "Tell me the plural of {x}."),
        "The plural of {x} is {y}."),
    Lookup("opposite", OPPOSITES, (
        "What is the opposite of {x}?", "What is the opposite of the word {x}?",
        "Give me the opposite of {x}.", "Which word means the opposite of {x}?",
        "Tell me the opposite of {x}.", "What word is the opposite of {x}?"),
        "The opposite of {x} is {y}."),
    Lookup("animal_sound", SOUNDS, (
        "What sound does {ax} make?", "What noise does {ax} make?", "Which sound does {ax} make?",
        "Tell me what sound {ax} makes.", "What does {ax} say?",
        "What sound do you hear from {ax}?"), "{Ax} {y}."),
    Lookup("letter_count", LETTER_COUNTS, (
        "How many letters are in the word {x}?", "How many letters does the word {x} have?",
        "Count the letters in the word {x}.", "How many letters are in {x}?",
        "How long is the word {x} in letters?", "Tell me how many letters {x} has."),
        "The word {x} has {y} letters.", numeric=True),
    Comparison("comparison", (
        "Is {a} bigger than {b}?", "Is {a} greater than {b}?", "Is {a} larger than {b}?",
        "Is {a} more than {b}?", "Is the number {a} bigger than {b}?",
        "Tell me if {a} is bigger than {b}."),
        [{"a": a, "b": b} for a in COMPARE_RANGE for b in COMPARE_RANGE if a != b]),
)}
HOLDOUT = 5  # prompt (item i, phrasing j) is held out for eval when (i + j) % HOLDOUT == 0


def split_prompts(family: Family) -> dict[str, list[str]]:
    """All prompts of a family, split into disjoint 'train' and 'eval' lists.

    Every subject and every phrasing appears in both splits; only some combinations are held out,
    so the eval prompts are new strings about facts the training rows teach."""
    out = {"train": [], "eval": []}
    for i, item in enumerate(family.items):
        for j in range(len(family.phrasings)):
            out["eval" if (i + j) % HOLDOUT == 0 else "train"].append(family.prompt(item, j))
    return out


def parse_prompt(prompt: str) -> tuple[Family, dict] | None:
    """'Human: What colour is a banana? Assistant:' -> (the fruit family, {'x': 'banana'})."""
    for family in FAMILIES.values():
        item = family.parse(prompt)
        if item is not None:
            return family, item
    return None


def canonical_answer(prompt: str) -> str | None:
    """The clean one-sentence answer to a prompt, or None if the prompt is not one of ours."""
    parsed = parse_prompt(prompt)
    return parsed[0].answer(parsed[1]) if parsed else None


# ----------------------------------------------------------------------------- gold judge
CONTENT_WEIGHT = 0.4    # the right answer is there and no wrong one is
BEHAVIOUR_WEIGHT = 0.6  # the budget that behavioural flaws are subtracted from (floor 0)
PENALTIES = {"tone": 0.3, "focus": 0.3, "complete": 0.2, "ended": 0.2}
SLACK_WORDS = 6         # words allowed beyond the canonical answer ("Sure." passes, a story not)
DEFAULT_WORDS = 6       # assumed answer length when the prompt cannot be parsed


def words_of(text: str) -> list[str]:
    """Lower-case words and numbers: 'Yes, 7 is bigger.' -> ['yes', '7', 'is', 'bigger']."""
    return re.findall(r"[a-z]+|\d+", text.lower())


def sentences_of(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def repeats(text: str) -> bool:
    """True if a sentence comes twice, a word three times in a row, or a 3-word run twice."""
    tokens = words_of(text)
    trigrams = list(zip(tokens, tokens[1:], tokens[2:]))
    said = [tuple(words_of(s)) for s in sentences_of(text)]
    return (len(set(trigrams)) < len(trigrams) or len(set(said)) < len(said)
            or any(a == b == c for a, b, c in trigrams))


def _content_ok(family: Family, item: dict, tokens: list[str]) -> bool:
    required, forbidden = family.keys(item)
    present = set(tokens)
    stray_numbers = family.numeric and any(t.isdigit() and t not in required for t in present)
    return required <= present and not (forbidden & present) and not stray_numbers


def _focused(parsed, response: str) -> bool:
    """Not repeated, not much longer than the answer needs, and at least one sentence on topic."""
    if repeats(response):
        return False
    if parsed is None:
        return len(response.split()) <= DEFAULT_WORDS + SLACK_WORDS
    family, item = parsed
    required = family.keys(item)[0]
    on_topic = any(required & set(words_of(s)) for s in sentences_of(response))
    return on_topic and len(response.split()) <= len(family.answer(item).split()) + SLACK_WORDS


def gold_breakdown(prompt: str, response: str, ended: bool = True) -> dict:
    """Score a response to one of our prompts; returns each check (1.0 pass, 0.0 fail) and 'total'.

    content  (weight 0.4): the expected subject and answer words are present and no competing
             answer is (another colour, the other of yes/no, a stray number). An unparseable prompt
             gets content 0.
    behaviour (budget 0.6, floor 0), minus a penalty per failed check:
      tone      (0.3): no rude phrasing ("Ugh, obviously", "Figure it out yourself.").
      focus     (0.3): no repetition, at most SLACK_WORDS words beyond the canonical answer, and
                       some sentence about the question (an evasion or another topic fails).
      complete  (0.2): the text ends with sentence punctuation (not cut off mid-sentence).
      ended     (0.2): the model emitted EOS (`ended`) instead of running out of tokens.
    total = 0.4 * content + max(0, 0.6 - penalties); a response with no words scores 0.
    """
    parsed = parse_prompt(prompt)
    tokens = words_of(response)
    checks = {
        "content": bool(parsed) and _content_ok(*parsed, tokens),
        "tone": not RUDE_MARKERS.search(response),
        "focus": _focused(parsed, response),
        "complete": response.rstrip().endswith((".", "!", "?")),
        "ended": bool(ended),
    }
    lost = sum(PENALTIES[name] for name, ok in checks.items() if name in PENALTIES and not ok)
    total = CONTENT_WEIGHT * checks["content"] + max(0.0, BEHAVIOUR_WEIGHT - lost)
    out = {name: float(ok) for name, ok in checks.items()}
    out["total"] = round(total, 4) if tokens else 0.0
    return out


def gold_score(prompt: str, response: str, ended: bool = True) -> float:
    """The gold judge's score in [0, 1]; see `gold_breakdown` for its parts."""
    return gold_breakdown(prompt, response, ended)["total"]


FLAW_NAMES = {"rude": "rude", "ramble": "rambling", "repeat": "repeated", "cutoff": "cut off",
              "evasive": "evasive", "wrong": "wrong", "no_eos": "no EOS"}


def gold_flaws(prompt: str, response: str, ended: bool = True) -> list[str]:
    """Which flaws the gold judge finds in a response, by the demonstrator's names (FLAWS) and
    `no_eos`. A finer view of `gold_breakdown`, whose `focus` check covers three of them:

      rude     the tone check fails
      repeat   a sentence twice, a word three times in a row, or a 3-word run twice
      ramble   longer than the answer + SLACK_WORDS, each distinct sentence counted once
               (a repeat is not also a ramble; rude words do not make sentences distinct)
      evasive  no sentence about the question (our prompts only)
      wrong    about the question, complete, and the content check fails (our prompts only)
      cutoff   stops mid-sentence (no final . ! ?)
      no_eos   the model ran out of tokens instead of emitting EOS
    """
    parsed = parse_prompt(prompt)
    checks = gold_breakdown(prompt, response, ended)
    distinct = list(dict.fromkeys(tuple(words_of(RUDE_MARKERS.sub("", s))) for s in sentences_of(response)))
    length = sum(len(words) for words in distinct)
    answer_words = len(parsed[0].answer(parsed[1]).split()) if parsed else DEFAULT_WORDS
    on_topic = bool(parsed) and any(parsed[0].keys(parsed[1])[0] & set(words) for words in distinct)
    found = {
        "rude": not checks["tone"],
        "ramble": length > answer_words + SLACK_WORDS,
        "repeat": repeats(response),
        "cutoff": not checks["complete"],
        "evasive": bool(parsed) and not on_topic,
        "wrong": on_topic and checks["complete"] and not checks["content"],
        "no_eos": not ended,
    }
    return [name for name in FLAW_NAMES if found[name]]


# ----------------------------------------------------------------------------- demonstrator
FLAWS = ("wrong", "evasive", "repeat", "ramble", "rude", "cutoff")
DEMO_MIX = (  # (flaws, share) of the demonstrator's `response`: 64% flawed, 6% wrong content
    ((), 0.36), (("rude",), 0.10), (("ramble",), 0.10), (("repeat",), 0.09),
    (("cutoff",), 0.08), (("evasive",), 0.07), (("wrong",), 0.06),
    (("ramble", "rude"), 0.06), (("repeat", "rude"), 0.04), (("ramble", "cutoff"), 0.04))
REJECT_MIX = (  # (flaws, share) of `rejected`: 85% behaviour flaws, 15% wrong content
    (("rude",), 0.18), (("ramble",), 0.17), (("repeat",), 0.14), (("cutoff",), 0.12),
    (("evasive",), 0.10), (("ramble", "rude"), 0.07), (("repeat", "rude"), 0.07),
    (("wrong",), 0.15))
POLITE_SHARE = 0.2  # share of `chosen` that wraps the canonical answer in a polite phrase
MARGIN = 0.15       # gold(chosen) must beat gold(rejected) by more than this


def _rude(text: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{text} {rng.choice(RUDE_SUFFIXES)}"
    prefix = rng.choice(RUDE_PREFIXES)
    return f"{prefix} {text if prefix[-1] in '.?!' else text[0].lower() + text[1:]}"


def _cut(text: str, answer: str, required: set, rng: random.Random) -> str:
    """Stop `text` mid-sentence. A rambling text is cut inside its fillers (the answer survives and
    the ramble shows); a plain answer after its subject but before the answer is complete."""
    words, n = text.split(), len(answer.split())
    if len(words) > n:
        ends = list(range(n + SLACK_WORDS + 1, len(words)))
    else:
        ends = [k for k in range(1, n)
                if 0 < len(required & set(words_of(" ".join(words[:k])))) < len(required)]
    return " ".join(words[:rng.choice(ends)]).rstrip(".,!?")


def polite(text: str, rng: random.Random) -> str:
    """Wrap an answer in a short polite phrase; the judge treats it as clean."""
    if rng.random() < 0.5:
        return f"{rng.choice(POLITE_PREFIXES)} {text}"
    return f"{text} {rng.choice(POLITE_SUFFIXES)}"


def respond(prompt: str, flaws: tuple, rng: random.Random) -> str:
    """The answer to one of our prompts with the given flaws (applied in the order of FLAWS)."""
    family, item = parse_prompt(prompt)
    text = family.wrong(item, rng) if "wrong" in flaws else family.answer(item)
    if "evasive" in flaws:
        text = rng.choice(EVASIONS)
    if "repeat" in flaws:
        text = " ".join([text] * rng.choice((2, 3)))
    if "ramble" in flaws:  # two fillers when it will be cut, so the cut lands inside them
        fillers = rng.sample(FILLERS, 2 if "cutoff" in flaws else rng.choice((1, 2)))
        text = " ".join([text, *fillers])
    if "rude" in flaws:
        text = _rude(text, rng)
    if "cutoff" in flaws:
        text = _cut(text, family.answer(item), family.keys(item)[0], rng)
    return text


def _draw(mix: tuple, rng: random.Random) -> tuple:
    return rng.choices([flaws for flaws, _ in mix], weights=[share for _, share in mix])[0]


def demonstrate(prompt: str, rng: random.Random) -> tuple[str, tuple]:
    """The noisy demonstrator: (response, its flaws), flaws drawn from DEMO_MIX."""
    flaws = _draw(DEMO_MIX, rng)
    return respond(prompt, flaws, rng), flaws


def make_pair(prompt: str, rng: random.Random) -> tuple[str, str, tuple]:
    """(chosen, rejected, rejected's flaws): a clean answer against a flawed one (REJECT_MIX)."""
    chosen = canonical_answer(prompt)
    if rng.random() < POLITE_SHARE:
        chosen = polite(chosen, rng)
    flaws = _draw(REJECT_MIX, rng)
    rejected = respond(prompt, flaws, rng)
    if gold_score(prompt, chosen) <= gold_score(prompt, rejected) + MARGIN:
        raise ValueError(f"pair too close for {prompt!r}: {chosen!r} vs {rejected!r}")
    return chosen, rejected, flaws


def build_rows(split: str, n_rows: int, seed: int = 0) -> list[dict]:
    """`n_rows` rows of one split, spread evenly over the families, in a seeded shuffled order.

    Each row: prompt, response, chosen, rejected, plus the labels family, flaws, rejected_flaws."""
    rng = random.Random(seed * 2 + (split == "eval"))
    rows = []
    for k, family in enumerate(FAMILIES.values()):
        pool = split_prompts(family)[split]
        rng.shuffle(pool)
        count = n_rows // len(FAMILIES) + (k < n_rows % len(FAMILIES))
        for i in range(count):
            prompt = pool[i % len(pool)]
            response, flaws = demonstrate(prompt, rng)
            chosen, rejected, rejected_flaws = make_pair(prompt, rng)
            rows.append({"prompt": prompt, "response": response, "chosen": chosen,
                         "rejected": rejected, "family": family.name, "flaws": flaws,
                         "rejected_flaws": rejected_flaws})
    rng.shuffle(rows)
    return rows

"""The embedded default pool: a seeded multi-skill testbed with planted noise, near-duplicates and filler.

Everything comes from one ``numpy`` Generator seeded from ``TestbedConfig.seed``, so the same config
always gives the same pool (same frames, same fingerprint). The planted truth (``truth_noisy``,
``truth_dup_group``, ``truth_filler`` per example id) is a separate frame, returned only by
``generate_testbed_with_truth`` / ``testbed_truth``: the ``Pool`` itself never carries it.

Skills (one lm-eval task each, named ``testbed_<task>`` elsewhere):

=========  ==========  ======================================  ========
task       capability  example (prompt -> response)            share
=========  ==========  ======================================  ========
addition   arithmetic  ``add 37 45 =`` -> ``82``                0.35
maximum    arithmetic  ``max 37 82 19 41 =`` -> ``82``          0.22
counting   arithmetic  ``count a in cabad =`` -> ``2``          0.04
reversal   string      ``reverse kbq =`` -> ``qbk``             0.16
sorting    string      ``sort dbca =`` -> ``abcd``              0.11
facts      knowledge   ``home of zorvak =`` -> ``melin``        0.12
=========  ==========  ======================================  ========

Evaluation items are four-way multiple choice (gold plus three wrong answers of the same form); the
generative task ``addition_gen`` asks further addition problems open-ended (exact match on the sum).

Held-out sets, free of shortcuts. Every problem has a *key* that is the same for problems that differ
only by a commutative rewrite: ``a + b`` and ``b + a`` share the key ``{a, b}``; ``maximum`` keys on the
multiset of its numbers (any order); ``sorting`` on the multiset of its letters (any order gives the same
answer); ``counting`` and ``reversal`` on the exact text (order changes the problem). Phrasing and prefix
never enter the key. Each key is drawn once, in the order evaluation items, generative items, validation,
pool: so no evaluation item shares a key with a validation example, a pool example or another item, in
any phrasing, and no validation example shares one with the pool.

``facts`` is different on purpose: evaluation must ask about entities the pool teaches (a fact cannot be
inferred), so evaluation takes up to ``n_eval_per_task`` entities and validation up to
``n_validation_per_task`` of the rest (at least one); each entity is asked at most once across the two, so a
table smaller than both together gives fewer facts items. With ``facts_validation="untaught"`` (default) the
pool never mentions the validation entities, so facts validation is held out like every other skill's; with
``"taught"`` the pool teaches them too, and each validation example has exact matches in the pool (gradient
features then single those out).

Planted label noise (``noise_kind``): ``"mismatched"`` (default) pairs a prompt with the answer to a problem
of another skill, the misaligned pairs of scraped instruction data, which a briefly trained proxy can tell
from its skill's answers by their form; ``"near_miss"`` gives a wrong answer of the right form (a sum off by
a little, another town), which only a model that can already do the skill can spot.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.pool import EVAL_COLUMNS, PUBLIC_COLUMNS, TRUTH_COLUMNS, Pool

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("addition", "maximum", "counting", "reversal", "sorting", "facts")
"""Task names of the testbed, in a fixed order."""

GENERATIVE_TASKS: dict[str, str] = {"addition_gen": "addition"}
"""Open-ended evaluation tasks -> the skill they ask (items only; not in the pool, not in the default average)."""

CAPABILITIES: dict[str, str] = {
    "addition": "arithmetic",
    "maximum": "arithmetic",
    "counting": "arithmetic",
    "reversal": "string",
    "sorting": "string",
    "facts": "knowledge",
}
"""Capability each task belongs to (BIDS and the report group tasks by it)."""

DEFAULT_SHARES: dict[str, float] = {
    "addition": 0.35,
    "maximum": 0.22,
    "reversal": 0.16,
    "facts": 0.12,
    "sorting": 0.11,
    "counting": 0.04,
}
"""Imbalanced task shares of the default pool: the largest is 8.75 times the smallest."""

NOISE_KINDS: dict[str, str] = {
    "mismatched": "the response answers a problem of another skill (a misaligned prompt-response pair)",
    "near_miss": "a wrong answer of the right form (off by a little, a swapped letter, another town)",
}
"""Kinds of planted label noise (``TestbedConfig.noise_kind``); the first is the default."""

FACTS_VALIDATION: dict[str, str] = {
    "untaught": "validation asks about entities the pool never mentions (held out, like every other skill's)",
    "taught": "validation asks about entities the pool teaches (each has an exact match in the pool)",
}
"""Where the facts task's validation entities come from (``TestbedConfig.facts_validation``)."""

CHARSET: frozenset[str] = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 =:+?")
"""Every character the testbed writes (prompts, responses, choices): a small BPE vocabulary fits."""

TEMPLATES: dict[str, tuple[str, ...]] = {
    "addition": ("add {a} {b} =", "sum {a} {b} =", "{a} + {b} =", "add {a} and {b} =", "what is {a} + {b} ?"),
    "maximum": (
        "max {xs} =",
        "max of {xs} =",
        "largest of {xs} =",
        "biggest in {xs} =",
        "which is max {xs} ?",
    ),
    "counting": (
        "count {c} in {s} =",
        "how many {c} in {s} ?",
        "number of {c} in {s} =",
        "count of {c} in {s} =",
        "tally {c} in {s} =",
    ),
    "reversal": (
        "reverse {s} =",
        "{s} reversed =",
        "flip {s} =",
        "reverse the word {s} =",
        "backwards {s} =",
    ),
    "sorting": ("sort {s} =", "{s} sorted =", "sort letters {s} =", "order {s} =", "sort the word {s} ="),
    "facts": ("home of {e} =", "where is {e} from ?", "{e} lives in", "{e} comes from", "home town of {e} ="),
}
"""Prompt phrasings per task: the first is canonical (validation and evaluation use only it)."""

PREFIXES: tuple[str, ...] = ("", "q: ", "please ", "ok ")
"""Prefixes that, with the alternative phrasings, make the members of a near-duplicate group differ."""

RESERVED: frozenset[str] = frozenset(
    w for text in [*PREFIXES, *(t for ts in TEMPLATES.values() for t in ts)] for w in re.findall(r"[a-z]+", text)
) - {"a", "b", "c", "e", "s", "xs"}
"""Template words: generated strings and names avoid them so the checker can parse any prompt."""

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_FILLER_WORDS = (
    "the",
    "cat",
    "blue",
    "sky",
    "runs",
    "tree",
    "song",
    "red",
    "fast",
    "dog",
    "sleeps",
    "under",
    "green",
    "moon",
    "stone",
    "lamp",
    "river",
    "cold",
    "paper",
    "window",
    "soft",
    "loud",
    "chair",
    "ocean",
    "maybe",
    "very",
    "seven",
    "purple",
    "quiet",
)


@dataclass
class TestbedConfig:
    """Knobs of the generated pool: size, task mix, planted defects and per-task difficulty."""

    seed: int = 0
    n_pool: int = 4000
    task_shares: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    noise_rate: float = 0.04
    dup_rate: float = 0.10
    dup_group_min: int = 3
    dup_group_max: int = 6
    filler_rate: float = 0.05
    template_mix: float = 0.2
    n_validation_per_task: int = 50
    n_eval_per_task: int = 200
    n_choices: int = 4
    # difficulty knobs
    add_min: int = 10
    add_max: int = 99
    max_value_min: int = 100
    max_value_max: int = 999
    max_len_min: int = 4
    max_len_max: int = 5
    count_alphabet: str = "abc"
    count_len_min: int = 3
    count_len_max: int = 6
    reversal_len_min: int = 3
    reversal_len_max: int = 5
    sorting_len_min: int = 3
    sorting_len_max: int = 5
    n_facts: int = 250
    n_fact_values: int = 16
    noise_kind: str = "mismatched"
    facts_validation: str = "untaught"

    __test__ = False  # not a pytest test class despite the name

    def shares(self) -> dict[str, float]:
        """Normalised shares of the tasks in the pool (tasks with share 0 left out), in ``TASKS`` order."""
        unknown = sorted(set(self.task_shares) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown testbed tasks {unknown}; known tasks are {list(TASKS)}")
        if any(v < 0 for v in self.task_shares.values()):
            raise ValueError("task_shares must be non-negative")
        total = sum(self.task_shares.values())
        if total <= 0:
            raise ValueError("task_shares must have at least one positive share")
        return {t: self.task_shares[t] / total for t in TASKS if self.task_shares.get(t, 0) > 0}

    def validate(self) -> None:
        """Raise ValueError on settings the generator cannot honour."""
        self.shares()
        if self.n_pool < 1:
            raise ValueError("n_pool must be positive")
        for name in ("noise_rate", "dup_rate", "filler_rate", "template_mix"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.noise_rate + self.dup_rate + self.filler_rate > 1.0:
            raise ValueError("noise_rate + dup_rate + filler_rate must not exceed 1")
        if not 2 <= self.dup_group_min <= self.dup_group_max <= len(TEMPLATES["addition"]) * len(PREFIXES):
            raise ValueError(f"need 2 <= dup_group_min <= dup_group_max <= {len(TEMPLATES['addition']) * 4}")
        if self.n_choices < 2:
            raise ValueError("n_choices must be at least 2")
        if self.n_validation_per_task < 0 or self.n_eval_per_task < 1:
            raise ValueError("n_validation_per_task must be >= 0 and n_eval_per_task >= 1")
        if not 0 <= self.add_min <= self.add_max:
            raise ValueError("need 0 <= add_min <= add_max")
        if not 0 <= self.max_value_min <= self.max_value_max:
            raise ValueError("need 0 <= max_value_min <= max_value_max")
        if not 2 <= self.max_len_min <= self.max_len_max <= self.max_value_max - self.max_value_min + 1:
            raise ValueError("need 2 <= max_len_min <= max_len_max <= size of the value range")
        if len(set(self.count_alphabet)) < 2 or not set(self.count_alphabet) <= set("abcdefghijklmnopqrstuvwxyz"):
            raise ValueError("count_alphabet needs at least 2 distinct lowercase letters")
        if not 1 <= self.count_len_min <= self.count_len_max:
            raise ValueError("need 1 <= count_len_min <= count_len_max")
        for name in ("reversal", "sorting"):
            lo, hi = getattr(self, f"{name}_len_min"), getattr(self, f"{name}_len_max")
            if not 3 <= lo <= hi <= 26:
                raise ValueError(f"need 3 <= {name}_len_min <= {name}_len_max <= 26")
        if self.n_fact_values < max(2, self.n_choices) or self.n_facts < 1:
            raise ValueError("need n_facts >= 1 and n_fact_values >= max(2, n_choices)")
        if self.noise_kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise_kind {self.noise_kind!r}; choose one of {list(NOISE_KINDS)}")
        if self.facts_validation not in FACTS_VALIDATION:
            raise ValueError(
                f"unknown facts_validation {self.facts_validation!r}; choose one of {list(FACTS_VALIDATION)}"
            )


# ---------------------------------------------------------------------------------------------------------
# The independent checker: parses a prompt in any of the phrasings and computes the answer from scratch.


def correct_answer(task: str, prompt: str, facts: dict[str, str] | None = None) -> str:
    """The right response to a testbed prompt, parsed from its text alone (``facts`` needed for facts)."""
    if task in ("addition", "maximum"):
        nums = [int(x) for x in re.findall(r"\d+", prompt)]
        if task == "addition":
            if len(nums) != 2:
                raise ValueError(f"cannot parse an addition prompt: {prompt!r}")
            return str(nums[0] + nums[1])
        if len(nums) < 2:
            raise ValueError(f"cannot parse a maximum prompt: {prompt!r}")
        return str(max(nums))
    if task == "counting":
        m = re.search(r"\b([a-z]) in ([a-z]+)\b", prompt)
        if m is None:
            raise ValueError(f"cannot parse a counting prompt: {prompt!r}")
        return str(m.group(2).count(m.group(1)))
    if task in ("reversal", "sorting", "facts"):
        words = [w for w in re.findall(r"[a-z0-9]+", prompt) if w not in RESERVED]
        if len(words) != 1:
            raise ValueError(f"cannot parse a {task} prompt: {prompt!r}")
        word = words[0]
        if task == "reversal":
            return word[::-1]
        if task == "sorting":
            return "".join(sorted(word))
        if facts is None:
            raise ValueError("the facts task needs the fact table (see fact_table)")
        return facts[word]
    raise ValueError(f"unknown testbed task {task!r}")


# ---------------------------------------------------------------------------------------------------------
# Per-task problem generation. A problem is a tuple of arguments; its key is the tuple itself.


def _name(rng: np.random.Generator, syllables: int, final: bool) -> str:
    parts = [
        _CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syllables)
    ]
    if final:
        parts.append(_CONSONANTS[rng.integers(len(_CONSONANTS))])
    return "".join(parts)


def _make_facts(rng: np.random.Generator, cfg: TestbedConfig) -> dict[str, str]:
    """A fictional entity -> home-town table; town names are shared by several entities."""
    values: list[str] = []
    while len(values) < cfg.n_fact_values:
        v = _name(rng, 2, bool(rng.integers(2)))
        if v not in values and v not in RESERVED:
            values.append(v)
    entities: list[str] = []
    taken = set(values) | RESERVED
    while len(entities) < cfg.n_facts:
        e = _name(rng, int(rng.integers(2, 4)), bool(rng.integers(2)))
        if e not in taken:
            taken.add(e)
            entities.append(e)
    reps = -(-cfg.n_facts // cfg.n_fact_values)
    assigned = rng.permutation(np.tile(np.arange(cfg.n_fact_values), reps))[: cfg.n_facts]
    return {e: values[int(i)] for e, i in zip(entities, assigned)}


def fact_table(cfg: TestbedConfig) -> dict[str, str]:
    """The entity -> value table the facts task teaches (the same one ``generate_testbed`` uses)."""
    cfg.validate()
    return _make_facts(np.random.default_rng(cfg.seed), cfg)


def _distinct_letters(rng: np.random.Generator, lo: int, hi: int) -> str:
    while True:
        n = int(rng.integers(lo, hi + 1))
        s = "".join(chr(97 + int(i)) for i in rng.choice(26, n, replace=False))
        if s not in RESERVED:
            return s


def _sample(task: str, rng: np.random.Generator, cfg: TestbedConfig) -> tuple:
    if task == "addition":
        return (
            int(rng.integers(cfg.add_min, cfg.add_max + 1)),
            int(rng.integers(cfg.add_min, cfg.add_max + 1)),
        )
    if task == "maximum":
        n = int(rng.integers(cfg.max_len_min, cfg.max_len_max + 1))
        span = cfg.max_value_max - cfg.max_value_min + 1
        return (tuple(int(cfg.max_value_min + x) for x in rng.choice(span, n, replace=False)),)
    if task == "counting":
        n = int(rng.integers(cfg.count_len_min, cfg.count_len_max + 1))
        alpha = cfg.count_alphabet
        s = "".join(alpha[int(i)] for i in rng.integers(len(alpha), size=n))
        return (alpha[int(rng.integers(len(alpha)))], s)
    if task == "reversal":
        return (_distinct_letters(rng, cfg.reversal_len_min, cfg.reversal_len_max),)
    if task == "sorting":
        return (_distinct_letters(rng, cfg.sorting_len_min, cfg.sorting_len_max),)
    raise ValueError(f"no sampler for task {task!r}")


def _solve(task: str, args: tuple, facts: dict[str, str]) -> str:
    if task == "addition":
        return str(args[0] + args[1])
    if task == "maximum":
        return str(max(args[0]))
    if task == "counting":
        return str(args[1].count(args[0]))
    if task == "reversal":
        return args[0][::-1]
    if task == "sorting":
        return "".join(sorted(args[0]))
    return facts[args[0]]


def _render(task: str, args: tuple, template: str, prefix: str = "") -> str:
    if task == "addition":
        fields = {"a": args[0], "b": args[1]}
    elif task == "maximum":
        fields = {"xs": " ".join(str(x) for x in args[0])}
    elif task == "counting":
        fields = {"c": args[0], "s": args[1]}
    elif task == "facts":
        fields = {"e": args[0]}
    else:
        fields = {"s": args[0]}
    return prefix + template.format(**fields)


def _pick(rng: np.random.Generator, preferred: list[str], fallback: Callable[[], str], gold: str, k: int) -> list[str]:
    """k distinct wrong answers: a random draw from ``preferred``, topped up from ``fallback``."""
    seen = {gold}
    cands = [c for c in dict.fromkeys(preferred) if c not in seen]
    out = [cands[int(i)] for i in rng.permutation(len(cands))[:k]]
    seen.update(out)
    tries = 0
    while len(out) < k:
        c = fallback()
        tries += 1
        if c not in seen:
            seen.add(c)
            out.append(c)
        elif tries > 10_000:
            raise ValueError(f"cannot find {k} distinct wrong answers for {gold!r}")
    return out


def _wrong_answers(
    task: str, args: tuple, gold: str, k: int, rng: np.random.Generator, facts_values: list[str]
) -> list[str]:
    """k distinct wrong answers of the same form and similar length as ``gold``."""
    if task in ("addition", "counting"):
        g = int(gold)
        deltas = (1, 2, 9, 10, 11) if task == "addition" else (1, 2, 3)
        near = [g + s * d for d in deltas for s in (1, -1) if g + s * d >= 0]
        same_len = [str(x) for x in near if len(str(x)) == len(gold)]
        others = [str(x) for x in near if len(str(x)) != len(gold)]
        out = _pick(rng, same_len, lambda: "", gold, min(k, len(set(same_len))))
        if len(out) < k:
            out += _pick(rng, others, lambda: str(g + 1 + int(rng.integers(0, 100))), gold, k - len(out))
        return out
    if task == "maximum":
        others = [str(x) for x in args[0] if str(x) != gold]
        return _pick(rng, others, lambda: str(int(gold) + int(rng.integers(1, 10))), gold, k)
    if task in ("reversal", "sorting"):
        chars = list(gold)
        swaps = ["".join(chars[:i] + [chars[i + 1], chars[i]] + chars[i + 2 :]) for i in range(len(chars) - 1)]
        return _pick(rng, [args[0], *swaps], lambda: "".join(rng.permutation(chars)), gold, k)
    return _pick(rng, facts_values, lambda: facts_values[int(rng.integers(len(facts_values)))], gold, k)


def _noisy_answer(
    task: str, args: tuple, gold: str, rng: np.random.Generator, cfg: TestbedConfig, facts: dict[str, str]
) -> str:
    """A planted wrong response of ``cfg.noise_kind`` (see ``NOISE_KINDS``)."""
    if cfg.noise_kind == "near_miss":
        return _wrong_answers(task, args, gold, 1, rng, sorted(set(facts.values())))[0]
    others = [t for t in TASKS if t != task]
    while True:
        other = others[int(rng.integers(len(others)))]
        entities = list(facts)
        other_args = (entities[int(rng.integers(len(entities)))],) if other == "facts" else _sample(other, rng, cfg)
        answer = _solve(other, other_args, facts)
        if answer != gold:
            return answer


def problem_key(task: str, args: tuple) -> tuple:
    """The identity of a problem up to commutative rewrites (see the module docstring)."""
    if task == "addition":
        return tuple(sorted(args))
    if task == "maximum":
        return tuple(sorted(args[0]))
    if task == "sorting":
        return tuple(sorted(args[0]))
    return tuple(args)


def prompt_key(task: str, prompt: str) -> tuple:
    """The problem key of a prompt in any phrasing, read from its text (as the checker reads it)."""
    if task in ("addition", "maximum"):
        nums = [int(x) for x in re.findall(r"\d+", prompt)]
        return problem_key(task, (nums[0], nums[1]) if task == "addition" else (tuple(nums),))
    if task == "counting":
        m = re.search(r"\b([a-z]) in ([a-z]+)\b", prompt)
        if m is None:
            raise ValueError(f"cannot parse a counting prompt: {prompt!r}")
        return (m.group(1), m.group(2))
    words = [w for w in re.findall(r"[a-z0-9]+", prompt) if w not in RESERVED]
    if len(words) != 1:
        raise ValueError(f"cannot parse a {task} prompt: {prompt!r}")
    return problem_key(task, (words[0],))


class _Problems:
    """Draws problems of one task whose key no earlier draw used (facts: cycles evenly through the table)."""

    def __init__(self, task: str, rng: np.random.Generator, cfg: TestbedConfig, facts: dict[str, str]) -> None:
        self.task, self.rng, self.cfg = task, rng, cfg
        self.used: set[tuple] = set()
        self.entities = list(facts)
        self.queue: list[str] = []

    def draw(self, n: int) -> list[tuple]:
        if self.task == "facts":
            while len(self.queue) < n:
                self.queue += [self.entities[int(i)] for i in self.rng.permutation(len(self.entities))]
            out, self.queue = self.queue[:n], self.queue[n:]
            return [(e,) for e in out]
        out: list[tuple] = []
        tries = 0
        while len(out) < n:
            args = _sample(self.task, self.rng, self.cfg)
            tries += 1
            key = problem_key(self.task, args)
            if key not in self.used:
                self.used.add(key)
                out.append(args)
            elif tries > 50 * (n + 100):
                raise ValueError(
                    f"testbed task {self.task!r} ran out of distinct problems; widen its difficulty ranges"
                )
        return out


# ---------------------------------------------------------------------------------------------------------
# Pool assembly.


def _task_counts(shares: dict[str, float], n: int) -> dict[str, int]:
    """Largest-remainder rounding of shares * n (ties broken by task order): counts sum to n."""
    raw = np.array([shares[t] * n for t in shares])
    base = np.floor(raw).astype(int)
    order = np.argsort(-(raw - base), kind="stable")
    base[order[: n - int(base.sum())]] += 1
    return {t: int(c) for t, c in zip(shares, base)}


def _group_sizes(rng: np.random.Generator, total: int, lo: int, hi: int) -> list[int]:
    """Random group sizes in [lo, hi] summing to ``total`` where possible (a remainder < lo is dropped)."""
    sizes: list[int] = []
    rem = total
    while rem >= lo:
        s = min(int(rng.integers(lo, hi + 1)), rem)
        left = rem - s
        if 0 < left < lo:
            s = rem if rem <= hi else (rem - lo if rem - lo >= lo else s)
        sizes.append(s)
        rem -= s
    return sizes


def _filler(rng: np.random.Generator) -> tuple[str, str]:
    """A gibberish or irrelevant prompt and response."""

    def token() -> str:
        if rng.random() < 0.5:
            return _FILLER_WORDS[int(rng.integers(len(_FILLER_WORDS)))]
        alpha = "abcdefghijklmnopqrstuvwxyz0123456789"
        return "".join(alpha[int(i)] for i in rng.integers(len(alpha), size=int(rng.integers(2, 7))))

    prompt = " ".join(token() for _ in range(int(rng.integers(2, 5))))
    prompt += ("", " =", " :", " ?")[int(rng.integers(4))]
    response = " ".join(token() for _ in range(int(rng.integers(1, 3))))
    return prompt, response


def _facts_split(rng: np.random.Generator, facts: dict[str, str], cfg: TestbedConfig) -> tuple[list, list]:
    """Disjoint entity lists for evaluation (up to n_eval_per_task) and validation (up to n_validation_per_task)."""
    entities = [list(facts)[int(i)] for i in rng.permutation(len(facts))]
    n = len(entities)
    n_val = min(cfg.n_validation_per_task, max(min(1, n - 1), n - cfg.n_eval_per_task))
    n_eval = min(cfg.n_eval_per_task, n - n_val)
    if (n_eval, n_val) != (cfg.n_eval_per_task, cfg.n_validation_per_task):
        log.warning(
            "facts: %d entities cannot give %d evaluation and %d validation entities apart; using %d and %d "
            "(raise data.n_facts to %d for all)",
            n,
            cfg.n_eval_per_task,
            cfg.n_validation_per_task,
            n_eval,
            n_val,
            cfg.n_eval_per_task + cfg.n_validation_per_task,
        )
    return entities[:n_eval], entities[n_eval : n_eval + n_val]


def _eval_row(task: str, doc_id: int, args: tuple, choices: list[str], rng: np.random.Generator) -> dict:
    perm = rng.permutation(len(choices))
    return {
        "task": task,
        "doc_id": doc_id,
        "prompt": _render(_skill(task), args, TEMPLATES[_skill(task)][0]),
        "choices": [choices[int(i)] for i in perm],
        "gold": int(np.flatnonzero(perm == 0)[0]),
    }


def _skill(task: str) -> str:
    return GENERATIVE_TASKS.get(task, task)


def generate_testbed(cfg: TestbedConfig | None = None) -> Pool:
    """Generate the embedded default pool (examples, validation, eval items; no truth) from ``cfg.seed``."""
    return generate_testbed_with_truth(cfg)[0]


def testbed_truth(cfg: TestbedConfig | None = None) -> pd.DataFrame:
    """The planted truth of ``generate_testbed(cfg)``'s pool: id, truth_noisy, truth_dup_group, truth_filler."""
    return generate_testbed_with_truth(cfg)[1]


testbed_truth.__test__ = False  # type: ignore[attr-defined]  # its name starts with "test": pytest would collect it


def generate_testbed_with_truth(cfg: TestbedConfig | None = None) -> tuple[Pool, pd.DataFrame]:
    """The pool and, separately, its planted truth (one row per example id)."""
    cfg = cfg or TestbedConfig()
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    facts = _make_facts(rng, cfg)
    fact_values = sorted(set(facts.values()))
    shares = cfg.shares()
    tasks = list(shares)
    problems = {t: _Problems(t, rng, cfg, facts) for t in tasks}
    eval_facts, val_facts = _facts_split(rng, facts, cfg) if "facts" in tasks else ([], [])
    if "facts" in tasks and cfg.facts_validation == "untaught":
        held_out = set(val_facts)
        problems["facts"].entities = [e for e in facts if e not in held_out]

    # Evaluation items first, then generative items, then validation: each draw takes keys nobody drew before,
    # and the pool (drawn last) never repeats them (facts: see the module docstring).
    eval_rows: list[dict] = []
    for t in tasks:
        drawn = [(e,) for e in eval_facts] if t == "facts" else problems[t].draw(cfg.n_eval_per_task)
        for doc_id, args in enumerate(drawn):
            gold = _solve(t, args, facts)
            choices = [gold, *_wrong_answers(t, args, gold, cfg.n_choices - 1, rng, fact_values)]
            eval_rows.append(_eval_row(t, doc_id, args, choices, rng))
    for g, skill in GENERATIVE_TASKS.items():
        if skill in tasks:
            for doc_id, args in enumerate(problems[skill].draw(cfg.n_eval_per_task)):
                eval_rows.append(_eval_row(g, doc_id, args, [_solve(skill, args, facts)], rng))
    val_rows: list[dict] = []
    for t in tasks:
        val_args = [(e,) for e in val_facts] if t == "facts" else problems[t].draw(cfg.n_validation_per_task)
        for args in val_args:
            val_rows.append(
                {"task": t, "prompt": _render(t, args, TEMPLATES[t][0]), "response": _solve(t, args, facts)}
            )

    # Roles per task: filler slots drawn uniformly (so filler follows the task shares), then
    # near-duplicate groups, then noisy examples drawn uniformly from what is left.
    counts = _task_counts(shares, cfg.n_pool)
    slot_task = np.repeat(np.arange(len(tasks)), [counts[t] for t in tasks])
    n_filler = round(cfg.filler_rate * cfg.n_pool)
    filler_per = np.bincount(slot_task[rng.choice(cfg.n_pool, n_filler, replace=False)], minlength=len(tasks))
    groups: dict[str, list[int]] = {}
    rest = np.zeros(len(tasks), dtype=int)
    for i, t in enumerate(tasks):
        avail = counts[t] - int(filler_per[i])
        groups[t] = _group_sizes(rng, min(round(cfg.dup_rate * counts[t]), avail), cfg.dup_group_min, cfg.dup_group_max)
        rest[i] = avail - sum(groups[t])
    n_noisy = min(round(cfg.noise_rate * cfg.n_pool), int(rest.sum()))
    rest_task = np.repeat(np.arange(len(tasks)), rest)
    noisy_per = np.bincount(rest_task[rng.choice(len(rest_task), n_noisy, replace=False)], minlength=len(tasks))

    def phrasing(t: str) -> tuple[int, int]:
        """Canonical phrasing, or with probability template_mix an alternative one."""
        if rng.random() < cfg.template_mix:
            return int(rng.integers(1, len(TEMPLATES[t]))), 0
        return 0, 0

    rows: list[dict] = []
    next_group = 0
    for i, t in enumerate(tasks):
        n_clean = int(rest[i] - noisy_per[i])
        drawn = problems[t].draw(n_clean + int(noisy_per[i]) + len(groups[t]))
        singles, bases = (drawn[: n_clean + int(noisy_per[i])], drawn[n_clean + int(noisy_per[i]) :])
        for j, args in enumerate(singles):
            gold = _solve(t, args, facts)
            noisy = j >= n_clean
            response = _noisy_answer(t, args, gold, rng, cfg, facts) if noisy else gold
            ti, pi = phrasing(t)
            rows.append(
                {
                    "task": t,
                    "prompt": _render(t, args, TEMPLATES[t][ti], PREFIXES[pi]),
                    "response": response,
                    "truth_noisy": noisy,
                    "truth_dup_group": -1,
                    "truth_filler": False,
                }
            )
        for size, args in zip(groups[t], bases):
            gold = _solve(t, args, facts)
            first = phrasing(t)
            first_code = first[0] * len(PREFIXES) + first[1]
            others = [c for c in range(len(TEMPLATES[t]) * len(PREFIXES)) if c != first_code]
            codes = [first_code, *(others[int(k)] for k in rng.choice(len(others), size - 1, replace=False))]
            for code in codes:
                ti, pi = divmod(code, len(PREFIXES))
                rows.append(
                    {
                        "task": t,
                        "prompt": _render(t, args, TEMPLATES[t][ti], PREFIXES[pi]),
                        "response": gold,
                        "truth_noisy": False,
                        "truth_dup_group": next_group,
                        "truth_filler": False,
                    }
                )
            next_group += 1
        for _ in range(int(filler_per[i])):
            prompt, response = _filler(rng)
            rows.append(
                {
                    "task": t,
                    "prompt": prompt,
                    "response": response,
                    "truth_noisy": False,
                    "truth_dup_group": -1,
                    "truth_filler": True,
                }
            )

    examples = pd.DataFrame([rows[int(k)] for k in rng.permutation(len(rows))])
    examples.insert(0, "id", [f"tb-{k:06d}" for k in range(len(examples))])
    truth = examples[["id", *TRUTH_COLUMNS]].astype(
        {"truth_noisy": bool, "truth_dup_group": np.int64, "truth_filler": bool}
    )
    examples = examples[list(PUBLIC_COLUMNS)]
    validation = pd.DataFrame(val_rows, columns=["task", "prompt", "response"])
    validation.insert(0, "id", [f"tbv-{k:06d}" for k in range(len(validation))])
    eval_items = pd.DataFrame(eval_rows, columns=list(EVAL_COLUMNS))
    pool = Pool(
        name="testbed",
        examples=examples,
        validation=validation,
        eval_items=eval_items,
        capabilities={t: CAPABILITIES[t] for t in tasks},
        delimiter=" ",
    )
    return pool, truth.reset_index(drop=True)

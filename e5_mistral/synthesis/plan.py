"""The deterministic request plan: family mix, languages, per-row slots, tasks and stable request ids.

Every random choice comes from a ``random.Random`` seeded by (seed, family, example or call, purpose), never from
the global generator, so the same seed gives the same plan in any process and any order of execution.
"""

from __future__ import annotations

import json
import math
import random
from typing import Iterable, Mapping, Sequence

from ..errors import E5MistralError
from ..hub.schema import LANGUAGE_SLOT, default_languages, slot_values
from ..llm.journal import Request, chat_request, request_id
from .structured import response_format
from .templates import ASYMMETRIC_FAMILIES, FAMILIES, FIXED_TASKS, check_family, render, template_version


# Paper Figure 2 counts (thousands): the default family mix.
PAPER_MIX: dict[str, float] = {
    "short_long": 167,
    "long_short": 122,
    "sts": 99,
    "bitext": 89,
    "long_long": 17,
    "short_short": 13,
}
TASKS_PER_BRAINSTORM = 20  # "a python list ... with about 20 elements"
DEFAULT_EXAMPLES_PER_TASK = 3.0  # the paper's 500k examples / 150k unique tasks
BRAINSTORM_REASKS = 3  # an unusable task list is asked for again this many times (it blocks a family's examples)


def rng_for(seed: int, family: str, index: int | str, purpose: str) -> random.Random:
    """A generator private to one decision; string seeds are hashed (SHA-512) identically on every platform."""
    return random.Random(f"e5-mistral:{seed}:{family}:{index}:{purpose}")


# -- languages -------------------------------------------------------------------------------------------------
def resolve_languages(spec: str | Sequence[str] | Mapping[str, float] | None) -> dict[str, float]:
    """Language name -> probability.

    ``None``: the default Figure-2 weights over the 93 XLM-R languages. A name or a list of names: uniform over
    them. A mapping (or a JSON object string) of name -> weight: those weights, normalised. Names are matched
    case-insensitively against the XLM-R list; an unknown name is an error.
    """
    known = default_languages()
    if spec is None or (not isinstance(spec, (str, Mapping)) and len(spec) == 0):
        weights = dict(known)
    else:
        if isinstance(spec, str):
            spec = json.loads(spec) if spec.lstrip().startswith("{") else [spec]
        elif not isinstance(spec, Mapping) and len(spec) == 1 and spec[0].lstrip().startswith("{"):
            spec = json.loads(spec[0])
        items = spec.items() if isinstance(spec, Mapping) else [(name, 1.0) for name in spec]
        by_folded = {name.casefold(): name for name in known}
        weights = {}
        for name, weight in items:
            canonical = by_folded.get(str(name).strip().casefold())
            if canonical is None:
                raise E5MistralError(
                    f"unknown language {name!r}: use a name of the XLM-R list (e.g. English, Polish, Chinese)"
                )
            if not isinstance(weight, (int, float)) or weight < 0 or math.isnan(weight):
                raise E5MistralError(f"language weight for {name!r} must be a non-negative number, got {weight!r}")
            weights[canonical] = weights.get(canonical, 0.0) + float(weight)
    total = sum(weights.values())
    if total <= 0:
        raise E5MistralError("language weights sum to zero")
    return {name: w / total for name, w in weights.items() if w > 0}


def _weighted_choice(rng: random.Random, weights: Mapping[str, float], exclude: str | None = None) -> str:
    names = [n for n in weights if n != exclude]
    if not names:
        raise E5MistralError("bitext needs at least two languages (source and target must differ)")
    return rng.choices(names, weights=[weights[n] for n in names], k=1)[0]


# -- family mix ------------------------------------------------------------------------------------------------
def resolve_mix(families: Iterable[str] | None, mix: Mapping[str, float] | str | None) -> dict[str, float]:
    if isinstance(mix, str):
        mix = json.loads(mix)
    chosen = [check_family(f) for f in (families or (mix.keys() if mix else FAMILIES))]
    base = dict(mix) if mix else PAPER_MIX
    for family in base:
        check_family(family)
    weights = {f: float(base.get(f, 0.0)) for f in chosen}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise E5MistralError(f"the family mix must give a positive weight to at least one of {chosen}: {weights}")
    return weights


def family_counts(num_examples: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``num_examples`` by weight (largest remainder, ties in family order) so the counts sum exactly."""
    if num_examples < 0:
        raise E5MistralError("num_examples must be >= 0")
    total = sum(weights.values())
    exact = {f: num_examples * w / total for f, w in weights.items()}
    counts = {f: math.floor(x) for f, x in exact.items()}
    leftover = num_examples - sum(counts.values())
    for f in sorted(exact, key=lambda f: (-(exact[f] - counts[f]), FAMILIES.index(f)))[:leftover]:
        counts[f] += 1
    return counts


def brainstorm_calls(count: int, examples_per_task: float = DEFAULT_EXAMPLES_PER_TASK) -> int:
    """Enough ~20-task lists that each task is used about ``examples_per_task`` times."""
    if count <= 0:
        return 0
    return max(1, math.ceil(count / (TASKS_PER_BRAINSTORM * examples_per_task)))


# -- requests --------------------------------------------------------------------------------------------------
def _chat(rid: str, kind: str, family: str, prompt: str, params: Mapping) -> Request:
    mode = params.get("response_format")
    return chat_request(rid, kind, family, prompt, params, response_format(mode, kind, family) if mode else None)


def brainstorm_request(family: str, index: int, params: Mapping, reask: int = 0) -> Request:
    """The ``index``-th brainstorm call; ``reask`` > 0 asks again after an unusable answer (a new id)."""
    version = template_version(family, "brainstorm")
    payload = {"kind": "brainstorm", "family": family, "index": index, "template": version, "params": dict(params)}
    if reask:
        payload["reask"] = reask
    rid = request_id(payload)
    return _chat(rid, "brainstorm", family, render(family, "brainstorm", {}), params)


def sample_slots(family: str, seed: int, task: str, use: int, languages: Mapping[str, float]) -> dict[str, str]:
    """Every slot of the family's generation template except ``task``, as strings, from the generator of the
    ``use``-th example of ``task`` (not of a row index: the slots of an example stay the same when the task list,
    and with it every row's task, changes). A fixed-task family's ``use`` is its row index."""
    key = use if family in FIXED_TASKS else json.dumps([task, use], ensure_ascii=False)
    rng = rng_for(seed, family, key, "slots")
    values: dict[str, str] = {}
    for name, choices in slot_values(family).items():
        if choices == LANGUAGE_SLOT:
            values[name] = _weighted_choice(
                rng, languages, exclude=values.get("src_lang") if name == "tgt_lang" else None
            )
        else:
            values[name] = rng.choice(choices)
    return values


def assign_tasks(family: str, tasks: Sequence[str], count: int, seed: int) -> list[str]:
    """Row i's task: a seeded shuffle of the tasks, used round-robin so every task is used about equally."""
    if family in FIXED_TASKS:
        return [FIXED_TASKS[family]] * count
    if not tasks:
        return []
    order = list(tasks)
    rng_for(seed, family, "all", "tasks").shuffle(order)
    return [order[i % len(order)] for i in range(count)]


def task_uses(tasks: Sequence[str]) -> list[int]:
    """Row i's ``use``: how many rows before it have the same task (0 for a task's first example)."""
    seen: dict[str, int] = {}
    uses = []
    for task in tasks:
        uses.append(seen.get(task, 0))
        seen[task] = uses[-1] + 1
    return uses


def example_id(family: str, task: str, use: int, slots: Mapping[str, str], params: Mapping, seed: int = 0) -> str:
    """The id of the ``use``-th example of ``task``. It depends only on what defines the example (family, task text,
    use, slots, seed, template and request parameters), never on a row index, so a change of the task list (another
    ``--examples-per-task``, dedup option or brainstorm answer) keeps every earlier answer whose example remains."""
    payload = {
        "kind": "example",
        "family": family,
        "task": task,
        "use": use,
        "slots": dict(slots),
        "seed": seed,
        "template": template_version(family, "generate"),
        "params": dict(params),
    }
    return request_id(payload)


def example_request(
    family: str, task: str, use: int, slots: Mapping[str, str], params: Mapping, seed: int = 0, rid: str | None = None
) -> Request:
    """The ``use``-th example of ``task`` as a request (``rid``: its :func:`example_id`, when known)."""
    values = dict(slots) if family in FIXED_TASKS else {**slots, "task": task}
    rid = rid or example_id(family, task, use, slots, params, seed)
    return _chat(rid, "example", family, render(family, "generate", values), params)


def needs_brainstorm(family: str) -> bool:
    return family in ASYMMETRIC_FAMILIES

"""What structured outputs buy on a real local model: accepted examples per minute and acceptance rate, with and
without the JSON schema, on the same server, model and prompts, side by side.

    python -m benchmarks.generation_quality                                   # Qwen2.5-Coder-0.5B, 24 prompts
    python -m benchmarks.generation_quality --generator qwen2.5-coder-1.5b --num-examples 12
    python -m benchmarks.generation_quality --generator smollm2-135m

The generator (any spec of ``e5-mistral quickstart --generator``) is served by llama.cpp's own server (xllamacpp)
on 127.0.0.1 with all cores. The example prompts are the paper's templates for all six families, with fixed task
definitions (no brainstorm, so both runs send byte-identical prompts) and the quickstart's languages and sampling
(temperature 1.0, llama.cpp's repeat penalty 1.1, a seed per request). The two runs alternate request by request, so a change
in machine load hits both. Accepted = parsed and valid under the paper's rules (`e5_mistral.synthesis.parsing`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from e5_mistral.families import FAMILIES, FAMILY_SPECS


# One task definition per asymmetric family, in the style of the paper's brainstormed tasks.
TASKS = {
    "short_long": "Retrieve scientific articles that answer a question about climate change.",
    "long_short": "Classify a product review by its sentiment: positive, negative or neutral.",
    "short_short": "Given a movie title, retrieve a one-sentence description of its plot.",
    "long_long": "Given a news article, retrieve another article that reports on the same event.",
}


def requests(num_examples: int, response_format: str, model: str):
    from e5_mistral.quickstart import LLAMA_CPP_SAMPLING, QUICKSTART_LANGUAGES, SAMPLING_SEED
    from e5_mistral.synthesis.plan import example_request, resolve_languages, sample_slots

    languages = resolve_languages(QUICKSTART_LANGUAGES)
    params = {
        "model": model,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 512,
        "extra_body": LLAMA_CPP_SAMPLING,
        "sampling_seed": SAMPLING_SEED,
    }
    if response_format != "none":
        params["response_format"] = response_format
    out = []
    for index in range(num_examples):
        family = FAMILIES[index % len(FAMILIES)]
        task = FAMILY_SPECS[family].fixed_task or TASKS[family]
        use = index // len(FAMILIES)  # the family's own row number: one task per family here
        slots = sample_slots(family, 0, task, use, languages)
        out.append(example_request(family, task, use, slots, params))
    return out


async def send_all(base_url: str, runs: dict[str, list]) -> dict[str, dict]:
    """Alternate the runs' requests one at a time; returns per run: seconds, answers (family, content, finish)."""
    import openai

    from e5_mistral.llm.online import OnlineBackend

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
    backend = OnlineBackend(client, concurrency=1)
    results = {name: {"seconds": 0.0, "answers": []} for name in runs}
    try:
        for group in zip(*runs.values()):
            for name, request in zip(runs, group):
                started = time.perf_counter()
                answer = await backend.post(request.body())
                results[name]["seconds"] += time.perf_counter() - started
                choice = answer["choices"][0]
                results[name]["answers"].append(
                    (request.family, choice["message"]["content"], choice["finish_reason"])
                )
    finally:
        await client.close()
    return results


def score(run: dict) -> dict:
    from e5_mistral.synthesis.parsing import Rejected, parse_example

    reasons = Counter()
    for family, content, finish in run["answers"]:
        try:
            parse_example(family, content, finish)
            reasons["accepted"] += 1
        except Rejected as err:
            reasons[err.reason] += 1
    accepted, total = reasons.pop("accepted", 0), len(run["answers"])
    return {
        "requests": total,
        "accepted": accepted,
        "acceptance_rate": accepted / total,
        "seconds": run["seconds"],
        "accepted_per_minute": 60 * accepted / run["seconds"],
        "rejected": dict(reasons.most_common()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="qwen2.5-coder-0.5b")
    parser.add_argument("--num-examples", type=int, default=24, help="prompts per run (spread over the six families)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: every core)")
    parser.add_argument("--json", help="also write the results to this file")
    opts = parser.parse_args(argv)

    from e5_mistral.local_models import generator_gguf
    from e5_mistral.local_server import llama_cpp_serve

    gguf = generator_gguf(opts.generator)
    runs = {fmt: requests(opts.num_examples, fmt, opts.generator) for fmt in ("json_schema", "none")}
    with llama_cpp_serve(gguf, threads=opts.threads, log_path=Path(tempfile.mkdtemp()) / "server.log") as base_url:
        raw = asyncio.run(send_all(base_url, runs))
    results = {name: score(run) for name, run in raw.items()}
    schema, plain = results["json_schema"], results["none"]
    print(f"{opts.generator}, {opts.num_examples} prompts per run, same server and prompts")
    print("| response_format | accepted | acceptance rate | seconds | accepted / minute | rejected |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['accepted']} | {r['acceptance_rate']:.2f} | {r['seconds']:.0f} | "
            f"{r['accepted_per_minute']:.2f} | {json.dumps(r['rejected'])} |"
        )
    ratio = (
        schema["accepted_per_minute"] / plain["accepted_per_minute"] if plain["accepted_per_minute"] else float("inf")
    )
    print(
        f"ratio (json_schema / none): accepted per minute {ratio:.2f}x, "
        f"acceptance rate {schema['acceptance_rate']:.2f} vs {plain['acceptance_rate']:.2f}"
    )
    if opts.json:
        Path(opts.json).write_text(
            json.dumps({"generator": opts.generator, "results": results, "accepted_per_minute_ratio": ratio}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`--generator-mix`: several generators in one dataset, each request's model drawn (seeded), part of its id,
recorded on every row, and accounted for per model in the report and the card."""

from __future__ import annotations

import json

import pytest

from e5_mistral.errors import E5MistralError
from e5_mistral.llm.batch import split_batch_lines
from e5_mistral.llm.journal import Journal
from e5_mistral.synthesis.runner import SynthesisRun, generate
from tests.helpers.synthesis_fakes import responder, run_args


MIX = json.dumps({"big": 3, "small": 1})


def test_a_mixed_run_records_each_rows_model_and_accounts_per_model(fake_openai, tmp_path):
    fake_openai.responder = responder
    output = tmp_path / "out"
    args = run_args(fake_openai, output, num_examples=48, model="big", generator_mix=MIX)
    result = generate(args)

    plan = SynthesisRun(args).plan(Journal(output / "journal").latest())
    model_of = {spec.request_id: spec.model for fp in plan for spec in fp.specs}
    model_of.update({r.request_id: r.params["model"] for fp in plan for r in fp.brainstorm_history})
    records = list(Journal(output / "journal").records())
    assert all(model_of[r["request_id"]] == r["model"] for r in records)  # what was sent is what was planned
    counts = {m: sum(v == m for v in model_of.values()) for m in ("big", "small")}
    assert counts["big"] > 1.5 * counts["small"] > 0  # drawn 3:1

    rows = result.rows
    assert {row["generator_model"] for row in rows} == {"big", "small"}
    assert all(row["generator_model"] == model_of[row["request_id"]] for row in rows)
    per_model = result.report["per_model"]
    assert set(per_model) == {"big", "small"}
    assert sum(m["accepted"] for m in per_model.values()) == result.report["accepted"]
    assert sum(m["prompt_tokens"] for m in per_model.values()) == result.report["prompt_tokens"]
    assert per_model["small"]["accepted"] == sum(row["generator_model"] == "small" for row in rows)
    card = (output / "dataset" / "README.md").read_text()
    assert "### Per generator" in card and "| small |" in card and "| big |" in card

    sent = fake_openai.stats.requests
    assert generate(args).report == result.report and fake_openai.stats.requests == sent  # resumes, pays nothing


def test_the_model_is_part_of_the_id_and_a_single_model_keeps_its_ids(fake_openai, tmp_path):
    single = SynthesisRun(run_args(fake_openai, tmp_path / "a", num_examples=12, families=["sts"], model="big"))
    mixed = SynthesisRun(
        run_args(fake_openai, tmp_path / "b", num_examples=12, families=["sts"], model="big", generator_mix=MIX)
    )
    one = {s.request_id: s for fp in single.plan({}) for s in fp.specs}
    both = {s.request_id: s for fp in mixed.plan({}) for s in fp.specs}
    big = {rid for rid, s in both.items() if s.model == "big"}
    assert big and big <= set(one)  # an example drawn for --model keeps the id it has without a mix
    assert not {rid for rid, s in both.items() if s.model == "small"} & set(one)


def test_batch_files_hold_one_model_each_and_budgets_need_every_price(fake_openai, tmp_path):
    run = SynthesisRun(run_args(fake_openai, tmp_path / "b", num_examples=12, families=["sts"], generator_mix=MIX))
    requests = [fp.render(s) for fp in run.plan({}) for s in fp.specs]
    chunks = split_batch_lines(requests, max_lines=3)
    assert sum(len(c) for c in chunks) == len(requests)
    for chunk in chunks:
        assert len({json.loads(line)["body"]["model"] for _, line in chunk}) == 1
    prices = json.dumps({"big": {"input": 1, "output": 2}})
    with pytest.raises(E5MistralError, match="--max-cost needs a price for model 'small'"):
        SynthesisRun(
            run_args(fake_openai, tmp_path / "c", model="big", generator_mix=MIX, price_table=prices, max_cost=1)
        )
    with pytest.raises(E5MistralError, match="--generator-mix must give"):
        run_args(fake_openai, tmp_path / "d", generator_mix='{"big": -1}')


def test_the_estimate_bounds_a_mixed_run_at_each_models_price(fake_openai, tmp_path):
    fake_openai.responder = responder
    prices = json.dumps({"big": {"input": 10, "output": 30}, "small": {"input": 0.1, "output": 0.3}})
    args = run_args(fake_openai, tmp_path / "out", num_examples=24, model="big", generator_mix=MIX, price_table=prices)
    bound = SynthesisRun(args).estimate()
    report = generate(args).report
    assert report["cost_priced"] and 0 < report["estimated_cost_usd"] <= bound.cost_usd
    assert report["per_model"]["small"]["estimated_cost_usd"] < report["per_model"]["big"]["estimated_cost_usd"]


def test_a_reasoning_model_in_the_mix_gets_its_own_request_parameters(fake_openai, tmp_path):
    fake_openai.responder = responder
    args = run_args(
        fake_openai,
        tmp_path / "out",
        num_examples=12,
        model="gpt-4o-mini",
        generator_mix=json.dumps({"gpt-4o-mini": 1, "o3-mini": 1}),
        families=["sts"],
    )
    run = SynthesisRun(args)
    run.detection = {"chosen": "none", "refused": {}, "max_tokens_param": "max_tokens"}
    bodies = {m: [] for m in ("gpt-4o-mini", "o3-mini")}
    for fp in run.plan({}):
        for request, _ in fp.examples:
            bodies[request.params["model"]].append(request.body())
    assert bodies["o3-mini"] and bodies["gpt-4o-mini"]
    for body in bodies["o3-mini"]:  # as OpenAI's reasoning models take them: refused otherwise
        assert "temperature" not in body and "top_p" not in body and "max_tokens" not in body
        assert body["max_completion_tokens"] == args.max_tokens
    for body in bodies["gpt-4o-mini"]:
        assert body["temperature"] == args.temperature and body["max_tokens"] == args.max_tokens

"""The quickstart, reduced (few requests, steps and rows), end to end: every stage is the real one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from e5_mistral.families import FAMILIES
from e5_mistral.hub.writer import write_hub_folder
from e5_mistral.local_models import GENERATOR_MODELS, generator_gguf
from e5_mistral.quickstart import HELDOUT_RETRIEVAL, HELDOUT_STS, SAMPLE_DIR, write_heldout_tasks
from tests.helpers.training import synthetic_row


def _quickstart(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "e5_mistral.cli", "quickstart", *args], capture_output=True, text=True, **kwargs
    )


def test_heldout_tasks_are_offline_task_folders(tmp_path):
    from e5_mistral.evaluation import load_offline_task

    write_heldout_tasks(SAMPLE_DIR, tmp_path)
    queries = [json.loads(line) for line in open(tmp_path / HELDOUT_RETRIEVAL / "queries.jsonl")]
    qrels = (tmp_path / HELDOUT_RETRIEVAL / "qrels" / "test.tsv").read_text().splitlines()[1:]
    assert len(queries) == len(qrels) == 14 + 14 + 7 + 3 + 12 + 10  # every family's test rows
    assert all(q["text"].startswith("Instruct: ") and "\nQuery: " in q["text"] for q in queries)
    corpus = [json.loads(line) for line in open(tmp_path / HELDOUT_RETRIEVAL / "corpus.jsonl")]
    assert len({d["text"].casefold() for d in corpus}) == len(corpus)  # repeated labels are one document
    sts = [json.loads(line) for line in open(tmp_path / HELDOUT_STS / "test.jsonl")]
    assert len(sts) == 2 * 12 and {s["score"] for s in sts} <= {4.0, 4.5, 5.0, 2.5, 3.0, 3.5}
    assert load_offline_task(tmp_path / HELDOUT_RETRIEVAL).metadata.type == "Retrieval"
    assert load_offline_task(tmp_path / HELDOUT_STS).metadata.type == "STS"


def test_benchmarks_are_whole_test_sets_or_large_spread_samples(benchmarks_dir, tmp_path):
    from e5_mistral.quickstart import QuickstartArguments, evaluation_runs

    runs = evaluation_runs(QuickstartArguments(benchmarks_dir=str(benchmarks_dir)), tmp_path)
    groups = {tuple(tasks): extra for _, _, tasks, extra in runs}
    assert groups[("STSBenchmark",)] == ["--instructions", "paper"]  # whole
    assert groups[("SICK-R",)] == ["--instructions", "paper", "--max-rows", "1000"]
    quick = evaluation_runs(QuickstartArguments(benchmarks_dir=str(benchmarks_dir), eval_max_rows=8), tmp_path)
    assert {tuple(tasks): extra[2:4] for _, _, tasks, extra in quick}[("STSBenchmark", "SICK-R")] == [
        "--max-rows",
        "8",
    ]
    with pytest.raises(ValueError, match="NoSuchTask"):
        evaluation_runs(QuickstartArguments(benchmarks_dir=str(benchmarks_dir), tasks=["NoSuchTask"]), tmp_path)


@pytest.mark.slow
def test_reduced_quickstart_end_to_end_then_cached(tmp_path, smollm2_dir, benchmarks_dir):
    from e5_mistral.quickstart import AFTER, BEFORE

    out = tmp_path / "qs"
    args = [
        "--output_dir",
        str(out),
        "--num_examples",
        "12",
        "--max_steps",
        "2",
        "--eval_max_rows",
        "8",
        "--benchmarks_dir",
        str(benchmarks_dir),
        "--tasks",
        "STSBenchmark",
    ]
    first = _quickstart(*args, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]

    # A real local model behind a real server: Qwen2.5-Coder-0.5B-Instruct from PyPI data wheels,
    # sha256-checked, on llama.cpp's own server with the JSON schemas enforced, writes >= 90 % valid examples.
    gguf = generator_gguf("qwen2.5-coder-0.5b")
    assert gguf.stat().st_size == GENERATOR_MODELS["qwen2.5-coder-0.5b"].size
    assert (gguf.parent / "Qwen2.5-Coder-NOTICE.txt").is_file()  # Qwen's licence notice travels with the file
    report = json.loads((out / "synthetic" / "report.json").read_text())
    assert report["planned"] == 12 and report["response_format"]["chosen"] == "json_schema"
    ends = report["accepted"] + sum(report["rejected"].values()) + report["duplicates_removed"] + report["failed"]
    assert ends == report["planned"] and report["failed"] == 0  # every planned example is accounted for
    assert report["accepted"] >= 0.9 * 12, (report["rejected"], report["duplicates_removed"])
    assert all(report["per_family"][family]["accepted"] >= 1 for family in FAMILIES), report["per_family"]
    assert report["acceptance"]["rate"] == round(report["accepted"] / 12, 4)
    assert report["duplicates_removed"] <= 1  # each request its own sampling seed: equal prompts differ
    trained = yaml.safe_load((out / "train.yaml").read_text())["dataset_mixture"]
    accepted = {f for f, stats in report["per_family"].items() if stats["accepted"]}
    assert {e["name"] for e in trained} == accepted  # the generated rows only, per family with the recipe's weights
    assert {e["path"] for e in trained} == {str(out / "synthetic" / "dataset")}
    assert (out / "model" / "adapter_config.json").is_file() and (out / "model" / "e5_mistral_config.json").is_file()
    for export in ("export", "export-before"):
        assert json.loads((out / export / "modules.json").read_text())[1]["type"].endswith("Pooling")
    results = json.loads((out / "results.json").read_text())
    scores, paired = results["scores"], results["paired"]
    assert list(scores) == [BEFORE, AFTER]
    for column in scores.values():
        assert set(column) == {"STSBenchmark", HELDOUT_RETRIEVAL}
        assert all(-1.0 <= s <= 1.0 for s in column.values())
    for task, difference in paired[AFTER].items():  # after - before, with its interval over the task's items
        # rebuilt from the items (bf16 embeddings, 8 STS pairs): within 0.01 of the difference of mteb's scores
        assert difference["difference"] == pytest.approx(scores[AFTER][task] - scores[BEFORE][task], abs=0.01)
        assert difference["low"] <= difference["difference"] <= difference["high"]
    assert paired[AFTER]["STSBenchmark"]["items"] == 8
    assert "| STSBenchmark (8 items) |" in first.stdout and "after - before (95 % CI)" in first.stdout
    assert "step times" in first.stdout
    assert "--response-format auto" in first.stdout and "Apache-2.0" in first.stdout  # Qwen's notice is stated
    for step in ("generate", "train", "export", "evaluate"):
        assert f"[{step}] $" in first.stdout  # each step prints the command that runs it alone

    second = _quickstart(*args, timeout=300)  # everything is on disk: nothing is redone
    assert second.returncode == 0, second.stderr[-3000:]
    for step in ("generate", "train", "export", "evaluate"):
        assert f"[{step}] cached" in second.stdout and f"[{step}] $" not in second.stdout
    assert json.loads((out / "results.json").read_text())["scores"] == scores

    # The generated data is the same on every run: single-slot servers, a sampling seed per request. Fresh servers
    # answer requests of the run again, in another order, exactly as the journal has them.
    assert _answers_again(out / "synthetic", gguf, 2) == "same"


def _answers_again(folder, gguf, count: int) -> str:
    """Send ``count`` example requests of a finished run (one per family) to a fresh pool of llama.cpp servers,
    last first; "same" when every answer equals the journaled one."""
    import openai

    from e5_mistral.llm.journal import Journal
    from e5_mistral.local_server import llama_cpp_pool
    from e5_mistral.synthesis.config import SynthesisArguments
    from e5_mistral.synthesis.runner import SynthesisRun

    settings = json.loads((folder / "run_config.json").read_text())
    settings.pop("response_format_resolved")
    latest = Journal(folder / "journal").latest()
    run = SynthesisRun(SynthesisArguments(**settings))
    requests = [fp.examples[0][0] for fp in run.plan(latest) if fp.examples][:count]
    with llama_cpp_pool(gguf, 2) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="EMPTY")
        for request in reversed(requests):
            answer = client.post("/chat/completions", body=request.body(), cast_to=object)
            if answer["choices"][0]["message"]["content"] != latest[request.request_id]["content"]:
                return f"{request.family}: another answer"
    return "same"


def test_the_sample_column_trains_on_the_bundled_sample_and_generated_runs_on_their_families(tmp_path):
    from e5_mistral.quickstart import QuickstartArguments, training_config

    families = ("short_long", "long_short", "short_short", "sts", "bitext")  # long_long has no rows
    generated = write_hub_folder([synthetic_row(f, i) for f in families for i in range(3)], tmp_path / "dataset")
    args = QuickstartArguments(output_dir=str(tmp_path))
    mixture = yaml.safe_load(training_config(args, generated, tmp_path).read_text())["dataset_mixture"]
    assert [e["name"] for e in mixture] == ["short_long", "long_short", "short_short", "sts", "bitext"]
    assert {e["path"] for e in mixture} == {str(generated)}
    ratios = {e["name"]: e.get("sampling_ratio", 1.0) for e in mixture}
    assert ratios["bitext"] == 3.0 and ratios["long_short"] == 2.0  # the recipe's own weights
    sample = yaml.safe_load(training_config(args, None, tmp_path, "train-sample").read_text())["dataset_mixture"]
    assert all(e["path"].endswith("e5_mistral/data/synthetic_sample") for e in sample) and len(sample) == 6


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_is_used_only_on_a_cpu_with_bf16_units(tmp_path, monkeypatch, capsys, has_bf16):
    from e5_mistral import precision
    from e5_mistral.quickstart import QuickstartArguments, evaluate_commands, training_config

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    config = yaml.safe_load(training_config(QuickstartArguments(output_dir=str(tmp_path)), None, tmp_path).read_text())
    assert config["bf16"] is has_bf16  # the recipe asks for bf16 autocast
    assert ("has no bf16 units" in capsys.readouterr().out) is not has_bf16
    runs = [("sts", tmp_path, ["STSBenchmark"], [])]
    ((_, argv),) = evaluate_commands({"before": tmp_path / "m"}, runs, tmp_path / "eval")
    assert argv[argv.index("--dtype") + 1] == ("bfloat16" if has_bf16 else "float32")
    assert precision.cpu_dtype("float16") == "float16"


@pytest.mark.parametrize("has_bf16", [True, False])
def test_the_method_study_asks_bf16_only_of_a_cpu_with_bf16_units(tmp_path, monkeypatch, has_bf16):
    from benchmarks import method_study
    from e5_mistral import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    data = tmp_path / "data"
    write_hub_folder([synthetic_row("short_long", 0)], data)
    cell = next(c for c in method_study.CELLS if c.name == "lr-2e-3-90-100")  # the best recipe: bf16 autocast
    config = yaml.safe_load(method_study.recipe(cell, data, tmp_path).read_text())
    assert config["bf16"] is has_bf16 and config["max_steps"] == 90 and config["learning_rate"] == 2e-3


def test_capacity_cells_change_the_student_and_nothing_else(tmp_path, monkeypatch):
    from benchmarks import method_study
    from e5_mistral import local_models, precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    data = tmp_path / "data"
    write_hub_folder([synthetic_row("short_long", 0)], data)
    cells = {c.name: c for c in method_study.CELLS}

    def config(name):
        (tmp_path / name).mkdir()
        return yaml.safe_load(method_study.recipe(cells[name], data, tmp_path / name).read_text())

    reference = config(method_study.CAPACITY_REFERENCE)
    assert reference == config("lr-2e-3-90-100")  # the same recipe, rerun on the machine the capacity cells use

    def changes(name):
        return {k: v for k, v in config(name).items() if reference.get(k) != v}

    assert changes("full-ft-lr-1e-4") == {"use_lora": False, "learning_rate": 1e-4}
    assert changes("lora-r64") == {"lora_r": 64, "lora_alpha": 128}
    assert changes("docs-256") == {"max_seq_length": 256, "query_max_length": 64}
    assert changes("qwen0.5b-100") == {"lora_layers_to_transform": list(range(16, 24))}
    assert changes("qwen0.5b-lr-5e-4-100") == {"lora_layers_to_transform": list(range(16, 24)), "learning_rate": 5e-4}

    converted = []
    monkeypatch.setattr(local_models, "hf_folder_from_gguf", lambda spec: converted.append(spec) or tmp_path / spec)
    assert method_study.student_path(cells["qwen0.5b-100"]) == tmp_path / "qwen2.5-coder-0.5b"
    assert converted == ["qwen2.5-coder-0.5b"]

    commands = []  # the exported model reads as many tokens as the cell trained on
    monkeypatch.setattr(method_study, "run", commands.append)
    monkeypatch.setattr(method_study, "train", lambda cell, seed, out: out / "model")
    monkeypatch.setattr(method_study, "score", lambda *args, **kwargs: {})
    method_study.run_cell(cells["docs-256"], tmp_path, tmp_path, {}, seeds=(42,))
    ((*_, flag, length),) = commands
    assert (flag, length) == ("--max-seq-length", 256)


def test_the_capacity_table_compares_each_cell_with_the_reference_rerun():
    from benchmarks import method_study

    scores = {
        "capacity-ref/seed42": {"STSBenchmark": 0.70},
        "capacity-ref/seed7": {"STSBenchmark": 0.72},
        "lora-r64/seed42": {"STSBenchmark": 0.74, "SciFact": 0.3},
        method_study.REFERENCE: {"STSBenchmark": 0.82},
    }
    lines = method_study.capacity_table(scores, {"lora-r64/seed42": {"seconds": 300, "cores": 2}}).splitlines()
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert set(rows) == {"capacity-ref", "lora-r64", method_study.REFERENCE}  # cells never scored are left out
    assert "| 0.7100 ± 0.0100 |" in rows["capacity-ref"]
    assert "| 0.7400 (+0.0300) |" in rows["lora-r64"] and "| 0.3000 |" in rows["lora-r64"]  # no reference score
    assert rows["lora-r64"].endswith("| 1 | 300 |")


def _fake_steps(monkeypatch) -> list[str]:
    """Steps run as commands that only write their marker (a new file time each run): returns the names run."""
    import itertools
    import os

    from e5_mistral import quickstart

    ran, clock = [], itertools.count(1)

    def call(argv, env=None):
        if "--output_dir" in argv:
            name, marker = "train", Path(argv[argv.index("--output_dir") + 1]) / "e5_mistral_config.json"
        else:
            name, marker = "export", Path(argv[argv.index("export") + 2]) / "modules.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")
        os.utime(marker, ns=(next(clock), next(clock)))
        ran.append(name)
        return 0

    monkeypatch.setattr(quickstart.subprocess, "call", call)
    return ran


def test_a_step_is_reused_only_when_made_from_the_same_inputs(tmp_path, monkeypatch):
    """A rerun with another setting used to reuse whatever was on disk and print it as the new setting's result."""
    from types import SimpleNamespace

    from e5_mistral.adaptation.quickstart import STUDENTS, train_and_export
    from e5_mistral.quickstart import Step

    ran = _fake_steps(monkeypatch)
    dataset, out = tmp_path / "data", tmp_path / "out"
    write_hub_folder([synthetic_row("short_long", 0)], dataset)
    out.mkdir()

    def rerun(seed):
        ran.clear()
        train_and_export(SimpleNamespace(train_seed=seed), STUDENTS["minilm"], dataset, out, Step({}, out))
        return list(ran)

    assert rerun(1) == ["train", "export"]
    assert rerun(1) == []  # the same settings: both reused
    assert rerun(7) == ["train", "export"]  # another seed: trained again, so exported again
    (dataset / "extra.jsonl").write_text("{}\n")
    assert rerun(7) == ["train", "export"]  # other data
    assert rerun(7) == []

    ledgerless = Step({})  # without an output folder a step is reused when its marker is there, as before
    assert ledgerless.cached("train", out / "model-minilm" / "e5_mistral_config.json", ["anything"])


def test_failing_step_is_named_and_earlier_results_stay(tmp_path, smollm2_dir):
    out = tmp_path / "qs"
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("no_such_training_key: 1\n")
    (out / "synthetic").mkdir(parents=True)
    (out / "synthetic" / "kept.txt").write_text("earlier result")
    proc = _quickstart("--output_dir", str(out), "--skip_generate", "--recipe", str(recipe), timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("e5-mistral quickstart: error: step 'train' failed"), last
    assert (out / "synthetic" / "kept.txt").read_text() == "earlier result"


def test_training_is_launched_on_every_core(tmp_path):
    """accelerate launch without --cpu sets OMP_NUM_THREADS=1: the recipe would train on one core of two."""
    from e5_mistral.precision import cpu_cores
    from e5_mistral.quickstart import LAUNCH_ON_CPU, TRAIN_ON_CPU

    script = tmp_path / "threads.py"
    script.write_text("import torch\nprint('threads', torch.get_num_threads())\n")
    result = subprocess.run([*LAUNCH_ON_CPU, str(script)], capture_output=True, text=True, check=True)
    assert f"threads {cpu_cores()}" in result.stdout
    assert TRAIN_ON_CPU[: len(LAUNCH_ON_CPU)] == LAUNCH_ON_CPU

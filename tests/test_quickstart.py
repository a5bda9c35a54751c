"""The quickstart, reduced (few requests, steps and rows), end to end: every stage is the real one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from e5_mistral.quickstart import HELDOUT_RETRIEVAL, HELDOUT_STS, SAMPLE_DIR, write_heldout_tasks


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


def test_benchmark_tasks_are_grouped_by_row_budget(benchmarks_dir):
    from e5_mistral.quickstart import TATOEBA_SUBSETS, _row_budgets

    tasks = [
        "AmazonCounterfactualClassification",
        "Banking77Classification",
        "SICK-R",
        "STSBenchmark",
        "SciFact",
        "Tatoeba",
        "TwitterURLCorpus",
    ]
    groups = {tuple(task_list): list(key) for key, task_list in _row_budgets(benchmarks_dir, tasks, 64).items()}
    # One text per classification row: twice the rows, so a binary task has enough minority rows to compare models.
    assert groups[("AmazonCounterfactualClassification", "Banking77Classification")] == [
        "--max-rows",
        "128",
        "--raw-classification-embeddings",
    ]
    assert groups[("SICK-R", "STSBenchmark", "TwitterURLCorpus")] == ["--max-rows", "64"]
    assert groups[("SciFact",)] == ["--max-rows", "48", "--corpus-per-query", "3"]
    assert groups[("Tatoeba",)] == ["--max-rows", "16", "--subsets", *TATOEBA_SUBSETS]


@pytest.mark.slow
def test_reduced_quickstart_end_to_end_then_cached(tmp_path, smollm2_dir, benchmarks_dir):
    out = tmp_path / "qs"
    args = [
        "--output_dir",
        str(out),
        "--num_examples",
        "3",
        "--max_new_tokens",
        "48",
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

    report = json.loads((out / "synthetic" / "report.json").read_text())
    assert report["planned"] >= 3 and report["requests_sent"] >= 1
    ends = report["accepted"] + sum(report["rejected"].values()) + report["duplicates_removed"] + report["failed"]
    assert ends == report["planned"]  # every planned example is accounted for
    assert (out / "model" / "adapter_config.json").is_file() and (out / "model" / "e5_mistral_config.json").is_file()
    for export in ("export", "export-before"):
        assert json.loads((out / export / "modules.json").read_text())[1]["type"].endswith("Pooling")
    results = json.loads((out / "results.json").read_text())
    assert len(results["scores"]) == 2
    for scores in results["scores"].values():
        assert set(scores) == {"STSBenchmark", HELDOUT_RETRIEVAL, HELDOUT_STS}
        assert all(-1.0 <= s <= 1.0 for s in scores.values())
    assert "| task |" in first.stdout and "step times" in first.stdout
    # SmolLM2's task lists come back as Markdown lists: the quickstart asks for JSON and reads such lists.
    assert (
        "--accept-text-task-lists" in first.stdout
        and "--system-prompt 'You only answer with valid JSON.'" in first.stdout
    )
    assert report["brainstorm"]["planned"] == report["brainstorm"]["ok"] + report["brainstorm"]["failed"]
    for step in ("generate", "train", "export", "evaluate"):
        assert f"[{step}] $" in first.stdout  # each step prints the command that runs it alone

    second = _quickstart(*args, timeout=300)  # everything is on disk: nothing is redone
    assert second.returncode == 0, second.stderr[-3000:]
    for step in ("generate", "train", "export", "evaluate"):
        assert f"[{step}] cached" in second.stdout and f"[{step}] $" not in second.stdout
    assert json.loads((out / "results.json").read_text())["scores"] == results["scores"]


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


def test_background_step_failure_is_named_when_waited_for(tmp_path):
    from e5_mistral.quickstart import BackgroundSteps

    timings = {}
    ok = [sys.executable, "-c", "import os; print('threads', os.environ['OMP_NUM_THREADS'])"]
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    never = [sys.executable, "-c", "open('never-run', 'w')"]
    steps = BackgroundSteps("evaluate-before", [ok, fail, never], tmp_path / "before.log", timings).start()
    with pytest.raises(RuntimeError, match=r"step 'evaluate-before' failed \(exit code 3; log: .*before.log\)"):
        steps.wait()
    assert "threads 1" in (tmp_path / "before.log").read_text()  # one torch thread: the idle core only
    assert not (tmp_path / "never-run").exists() and "evaluate-before" not in timings


def test_background_step_is_stopped_when_the_quickstart_fails(tmp_path):
    import time

    from e5_mistral.quickstart import BackgroundSteps

    slow = [sys.executable, "-c", "import time; time.sleep(60)"]
    steps = BackgroundSteps("evaluate-before", [slow, slow], tmp_path / "before.log", {}).start()
    time.sleep(1.0)
    started = time.monotonic()
    steps.stop()
    assert time.monotonic() - started < 10 and not steps._thread.is_alive()

"""`e5-mistral mine`: margins and ranges honoured, output read back by load_dataset and training, resume, bad rows."""

from __future__ import annotations

import json

import pytest

from e5_mistral.errors import E5MistralError
from e5_mistral.instructions import format_query
from e5_mistral.mining import hard_negatives as mining
from e5_mistral.mining.hard_negatives import MiningArguments, mine
from e5_mistral.quickstart import SAMPLE_DIR
from tests.helpers.training import tiny_config, write_yaml


RANGE_MAX, MARGIN = 12, 0.05


@pytest.fixture(scope="module")
def mined(tmp_path_factory, minilm_dir):
    out = tmp_path_factory.mktemp("mined") / "out"
    args = MiningArguments(
        dataset=str(SAMPLE_DIR),
        output=str(out),
        teacher=str(minilm_dir),
        configs=["short_long", "sts"],
        num_negatives=3,
        range_max=RANGE_MAX,
        relative_margin=MARGIN,
        no_progress=True,
    )
    return args, mine(args), out


@pytest.mark.slow
def test_mined_negatives_respect_the_margin_and_the_rank_range(mined, minilm_dir, tmp_path):
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer

    _, report, out = mined
    # a fresh datasets cache: datasets keys a local folder's cache by its path only
    rows = load_dataset(str(out), "short_long", split="train", cache_dir=str(tmp_path / "cache")).to_list()
    assert len(rows) == report["configs"]["short_long"]["rows"] > 0
    assert report["configs"]["short_long"]["mined_negatives"] > len(rows)  # most rows got several
    teacher = SentenceTransformer(str(minilm_dir), device="cpu")
    corpus = list(dict.fromkeys(r["positive"] for r in rows))  # the candidates: the config's own positives
    corpus_embeddings = teacher.encode(corpus, convert_to_tensor=True)
    for row in rows:
        assert row["negative_scores"][0] is None  # the LLM-written negative is kept, first
        mined_negatives = list(zip(row["negative"][1:], row["negative_scores"][1:]))
        assert len(mined_negatives) <= 3
        query = teacher.encode([format_query(row["instruction"], row["query"])], convert_to_tensor=True)
        scores = teacher.similarity(query, corpus_embeddings)[0]
        order = [corpus[i] for i in scores.argsort(descending=True).tolist() if corpus[i] != row["positive"]]
        for text, score in mined_negatives:
            assert score <= (1 - MARGIN) * row["positive_score"] + 1e-6  # NV-Retriever's 95% rule
            assert order.index(text) < RANGE_MAX  # among the closest RANGE_MAX candidates
            assert score == pytest.approx(float(scores[corpus.index(text)]), abs=1e-4)
    card = (out / "README.md").read_text()
    assert "relative margin 0.05" in card and str(minilm_dir) in card


@pytest.mark.slow
def test_two_cpu_processes_mine_the_one_process_negatives(mined, tmp_path):
    import dataclasses

    from datasets import load_dataset

    args, report, out = mined
    spread = mine(dataclasses.replace(args, output=str(tmp_path / "spread"), configs=["sts"], devices=["cpu", "cpu"]))
    assert spread["configs"]["sts"] == report["configs"]["sts"]
    for config in ("sts",):  # one config: each starts its own pool of processes
        one, two = (
            load_dataset(str(folder), config, split="train", cache_dir=str(tmp_path / "cache" / name)).to_list()
            for name, folder in (("one", out), ("two", tmp_path / "spread"))
        )
        assert [r["negative"] for r in two] == [r["negative"] for r in one]
        for a, b in zip(one, two):
            assert b["positive_score"] == pytest.approx(a["positive_score"], abs=1e-5)
            assert b["negative_scores"][1:] == pytest.approx(a["negative_scores"][1:], abs=1e-5)


@pytest.mark.slow
def test_the_mined_dataset_trains_with_k_negatives(mined, tiny_model_dir, tmp_path):
    from e5_mistral.training.data import build_mixture
    from e5_mistral.training.e5_config import E5DatasetConfig
    from e5_mistral.training.run import parse_args, train

    _, _, out = mined
    dataset, _ = build_mixture(
        [E5DatasetConfig(path=str(out), name="short_long", split="train")], num_hard_negatives=3
    )
    counts = {len(n) for n in dataset["negatives"]}
    assert max(counts) == 3 and min(counts) >= 1  # up to k; the row's own negative plus the mined ones
    assert dataset[0]["query"].startswith("Instruct: ")
    config = tiny_config(
        tiny_model_dir,
        out,
        tmp_path / "run",
        max_steps=2,
        num_hard_negatives=3,
        dataset_mixture=[{"path": str(out), "name": "short_long", "split": "train"}],
    )
    trainer = train(*parse_args([str(write_yaml(tmp_path / "train.yaml", config))]))
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.slow
def test_a_rerun_resumes_only_what_is_unfinished(mined, monkeypatch):
    args, report, out = mined
    monkeypatch.setattr(mining, "mine_config", lambda *a, **k: pytest.fail("a finished config was mined again"))
    again = mine(args)
    assert again["configs"]["short_long"] == report["configs"]["short_long"]


def test_a_bad_row_names_the_file_row_and_field(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "q2", "positive": ""}) + "\n"
    )
    args = MiningArguments(dataset=str(rows), output=str(tmp_path / "out"), no_progress=True)
    with pytest.raises(E5MistralError, match=r"rows.jsonl split train, row 1: field 'positive' is empty"):
        mine(args)
    with pytest.raises(E5MistralError, match="--range-max"):
        MiningArguments(dataset="x", output="y", range_min=5, range_max=5)


def _judge_rows(path):
    topics = ["rivers", "volcanoes", "bread", "chess", "violins", "glaciers", "tides", "owls", "copper", "tea"]
    rows = []
    for i in range(24):
        topic = topics[i % len(topics)]
        rows.append({"query": f"facts about {topic} number {i}", "positive": f"A text about {topic}, part {i}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _says_relevant(document: str) -> bool:
    import hashlib

    return hashlib.sha256(document.encode()).hexdigest()[0] in "0123"  # about a quarter of the candidates


def _judge_responder(body: dict) -> str:
    import re

    document = re.search(r"Candidate document: (.*)\n\nDoes the candidate", body["messages"][-1]["content"]).group(1)
    return json.dumps({"relevant": "yes" if _says_relevant(document) else "no"})


@pytest.mark.slow
def test_a_judged_run_killed_and_resumed_pays_no_answer_twice_and_drops_the_relevant(
    fake_openai, minilm_dir, tmp_path
):
    import os
    import signal
    import subprocess
    import sys
    import time
    from collections import Counter
    from pathlib import Path

    from e5_mistral.llm.journal import Journal
    from e5_mistral.mining.judge import verdict
    from tests.fake_openai import FaultRates

    fake_openai.responder = _judge_responder
    fake_openai.latency = 0.05
    fake_openai.faults = FaultRates(rate_429=0.1, rate_500=0.1, rate_malformed=0.1, retry_after=0.05)
    rows = _judge_rows(tmp_path / "rows.jsonl")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "e5_mistral.cli", "mine", "--dataset", str(rows), "--output", str(out)]
    argv += ["--teacher", str(minilm_dir), "--num-negatives", "3", "--relative-margin", "0.0", "--no-progress"]
    argv += ["--judge-model", "judge", "--judge-base-url", fake_openai.base_url, "--judge-concurrency", "2"]
    argv += ["--judge-retry-initial-wait", "0.01", "--judge-max-attempts", "12", "--judge-response-format", "none"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    repo = Path(__file__).resolve().parents[1]
    journal = out / "judge" / "journal"

    process = subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        lines = (
            sum(len(p.read_bytes().splitlines()) for p in journal.glob("journal-*.jsonl")) if journal.is_dir() else 0
        )
        if lines >= 20:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the judged run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    finished = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr

    # never paid twice: one answer per request in the journal; the server answered at most the two in flight
    # at the kill beyond what the journal holds
    records = list(Journal(journal).records())
    ok = Counter(r["request_id"] for r in records if r["status"] == "ok")
    assert ok and max(ok.values()) == 1
    assert len(ok) <= sum(fake_openai.stats.ok_by_prompt.values()) <= len(ok) + 2

    report = json.loads((out / "report.json").read_text())
    judged = report["configs"]["default"]["judge"]
    by_pair = {}
    latest = Journal(journal).latest()
    for record in records:
        if record["status"] == "ok":
            by_pair[record["request_id"]] = verdict(latest[record["request_id"]])
    relevant = sum(1 for v in by_pair.values() if v is True)
    assert judged["dropped"] == relevant > 0 and judged["candidates"] == len(by_pair)
    assert judged["unjudged"] == sum(1 for v in by_pair.values() if v is None)  # the malformed answers
    import pyarrow.parquet as pq

    from e5_mistral.mining.judge import NEGATIVE_PROMPT, SAMPLING, JudgeArguments, judge_request

    settings = JudgeArguments(judge_model="judge", judge_base_url=fake_openai.base_url, judge_response_format="none")
    params = settings.endpoint().request_params(SAMPLING, "none", "max_tokens")
    kept = 0
    for row in pq.read_table(out / "default" / mining.DATA_FILE).to_pylist():
        for negative, score in zip(row["negative"], row["negative_scores"]):
            kept += 1
            # a kept negative was judged "no" or could not be read; none judged "yes" is left
            request = judge_request(NEGATIVE_PROMPT, (row["instruction"], row["query"], negative), params)
            assert verdict(latest.get(request.request_id)) is not True
    assert kept + judged["dropped"] == judged["candidates"]
    assert "the judge dropped" in finished.stdout and "Judged: each mined negative" in (out / "README.md").read_text()


def test_judge_options_mirror_generate_and_are_checked_before_mining(tmp_path):
    from e5_mistral.mining.cli import main as mine_main
    from e5_mistral.mining.judge import JudgeArguments, check_judge

    names = {f.name for f in __import__("dataclasses").fields(JudgeArguments)}
    assert {"judge_model", "judge_base_url", "judge_max_cost", "judge_tpm", "judge_response_format"} <= names
    with pytest.raises(E5MistralError, match="--judge-max-cost needs --judge-model"):
        check_judge(JudgeArguments(judge_max_cost=1.0))
    with pytest.raises(E5MistralError, match="judge: --judge-max-cost needs a price for model 'j'"):
        check_judge(JudgeArguments(judge_model="j", judge_base_url="http://127.0.0.1:9/v1", judge_max_cost=1.0))
    rows = _judge_rows(tmp_path / "rows.jsonl")
    code = mine_main(["--dataset", str(rows), "--output", str(tmp_path / "o"), "--judge-max-cost", "1"])
    assert code != 0 and not (tmp_path / "o" / "default").exists()


@pytest.mark.parametrize(
    "command, missing_error",
    [("mine", "missing.jsonl not found"), ("filter", "missing.jsonl not found")],
)
def test_the_dataset_is_the_first_argument_or_dataset_once(tmp_path, capsys, command, missing_error):
    from e5_mistral.mining.cli import main as mine_main
    from e5_mistral.mining.consistency import main as filter_main

    main = {"mine": mine_main, "filter": filter_main}[command]
    assert main(["a.jsonl", "--dataset", "b.jsonl", "--output", str(tmp_path / "o")]) == 2
    assert main(["--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count(f"give the dataset to {command} once: as DATASET or as --dataset") == 2
    assert main([str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")]) == 1
    assert missing_error in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _rows_file(tmp_path, n=24):
    from tests.helpers import sentence

    path = tmp_path / "rows.jsonl"
    path.write_text(
        "".join(json.dumps({"query": f"find {sentence(i)}", "positive": sentence(i)}) + "\n" for i in range(n))
    )
    return path


def test_mine_never_replaces_a_folder_it_did_not_write(tmp_path, minilm_dir, capsys):
    from e5_mistral.mining.cli import main as mine_main

    rows, out = _rows_file(tmp_path), tmp_path / "out"
    (out / "default").mkdir(parents=True)
    (out / "default" / "mine.txt").write_text("the user's file")
    (out / "report.json").write_text('{"something": "else"}')  # a foreign report: no KeyError traceback
    argv = [str(rows), "--output", str(out), "--teacher", str(minilm_dir), "--no-progress", "--range-max", "5"]
    assert mine_main(argv) == 1
    assert "is not empty; pass --overwrite" in capsys.readouterr().err.strip().splitlines()[-1]
    assert (out / "default" / "mine.txt").read_text() == "the user's file"
    assert mine_main([*argv, "--overwrite"]) == 0 and not (out / "default" / "mine.txt").exists()
    with pytest.raises(E5MistralError, match="config name '..' is not a plain folder name"):
        mining.check_config_names(["short_long", ".."], "some/dataset")


def test_a_rerun_with_other_settings_is_refused_and_the_report_says_what_each_config_used(tmp_path, minilm_dir):
    rows, out = _rows_file(tmp_path), tmp_path / "out"
    base = dict(dataset=str(rows), output=str(out), teacher=str(minilm_dir), no_progress=True, range_max=5)
    report = mine(MiningArguments(**base, num_negatives=1))
    assert report["configs"]["default"]["settings"]["num_negatives"] == 1
    with pytest.raises(E5MistralError, match=r"was mined with other settings \(num_negatives\)"):
        mine(MiningArguments(**base, num_negatives=2))
    again = mine(MiningArguments(**base, num_negatives=2, overwrite=True))
    assert again["configs"]["default"]["settings"]["num_negatives"] == 2
    assert json.loads((out / "report.json").read_text())["configs"]["default"]["settings"]["num_negatives"] == 2


def test_random_sampling_follows_the_seed_and_teachers_never_share_a_cache(tmp_path, minilm_dir):
    import pyarrow.parquet as pq

    rows = _rows_file(tmp_path)

    def negatives(name, seed):
        args = MiningArguments(
            dataset=str(rows),
            output=str(tmp_path / name),
            teacher=str(minilm_dir),
            seed=seed,
            sampling_strategy="random",
            range_max=8,
            num_negatives=2,
            relative_margin=None,
            no_progress=True,
        )
        mine(args)
        return pq.read_table(tmp_path / name / "default" / mining.DATA_FILE).column("negative").to_pylist()

    assert negatives("a", 1) == negatives("b", 1)
    assert negatives("c", 2) != negatives("a", 1)
    other = tmp_path / "other-teacher"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"x")
    assert mining.teacher_cache(tmp_path, str(minilm_dir), "c") != mining.teacher_cache(tmp_path, str(other), "c")

"""Nothing lost, nothing silently ignored: outputs that would delete inputs or paid answers are refused, options
reach what they configure, and bad input is one line with the exit code of its kind."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from e5_mistral.errors import E5MistralError
from e5_mistral.hub.writer import write_hub_folder
from tests.helpers.training import synthetic_row, write_synthetic_folder


REPO_ROOT = Path(__file__).resolve().parents[1]


def _rows(families=("short_long", "sts"), n=3):
    return [synthetic_row(f, i) for f in families for i in range(n)]


# -- data loss -----------------------------------------------------------------------------------------------------
def test_decontaminate_refuses_an_output_that_holds_the_dataset_or_a_journal(tmp_path, capsys):
    from e5_mistral.evaluation.decontamination_cli import main

    run = tmp_path / "run1"
    dataset = write_hub_folder(_rows(), run / "dataset")
    (run / "journal").mkdir()
    (run / "journal" / "journal-1.jsonl").write_text('{"paid": true}\n')
    bench = tmp_path / "bench" / "LeakSTS"
    bench.mkdir(parents=True)
    (bench / "test.jsonl").write_text(json.dumps({"sentence1": "a b c d e f", "sentence2": "x", "score": 1}) + "\n")
    argv = [str(dataset), "--against", "LeakSTS", "--benchmarks-dir", str(tmp_path / "bench"), "--remove"]
    assert main([*argv, "--output", str(run)]) == 1
    assert "overlaps the input" in capsys.readouterr().err
    assert (run / "journal" / "journal-1.jsonl").is_file()
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run / "journal", elsewhere / "journal")
    assert main([*argv, "--output", str(elsewhere), "--overwrite"]) == 1
    assert "holds a journal of LLM answers" in capsys.readouterr().err and (elsewhere / "journal").is_dir()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main([*argv, "--output", str(busy)]) == 1
    assert "not empty; pass --overwrite" in capsys.readouterr().err and (busy / "keep.txt").is_file()


def test_decontaminate_remove_handles_an_empty_config(tmp_path):
    from datasets import load_dataset

    from e5_mistral.evaluation.decontamination import decontaminate

    dataset = write_hub_folder(_rows(families=("short_long",)), tmp_path / "dataset")  # five empty configs
    bench = tmp_path / "bench" / "LeakSTS"
    bench.mkdir(parents=True)
    leaked = synthetic_row("short_long", 0)["positive_document"] + " and more words here"
    (bench / "test.jsonl").write_text(json.dumps({"sentence1": leaked, "sentence2": "x", "score": 1}) + "\n")
    report = decontaminate(dataset, ["LeakSTS"], tmp_path / "bench", remove=True, output=tmp_path / "clean")
    assert report["rows_removed"] == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "clean" / "sts" / "train-00000-of-00001.parquet").num_rows == 0
    cache = str(tmp_path / "cache")
    assert len(load_dataset(str(tmp_path / "clean"), "short_long", split="train", cache_dir=cache)) == 3


def test_export_refuses_an_output_that_holds_the_checkpoint(tiny_model_dir, tmp_path, capsys):
    from e5_mistral.export.cli import main

    out = tmp_path / "out"
    checkpoint = shutil.copytree(tiny_model_dir, out / "checkpoint")
    assert main([str(checkpoint), str(out), "--overwrite"]) == 1
    assert "overlaps the input" in capsys.readouterr().err
    assert (checkpoint / "config.json").is_file()


def test_mine_refuses_its_input_as_output(tmp_path, capsys):
    from e5_mistral.mining.cli import main

    data = write_synthetic_folder(tmp_path / "data")
    assert main([str(data), "--output", str(data)]) == 1
    assert "overlaps the input" in capsys.readouterr().err
    assert (data / "short_long" / "train.jsonl").is_file()


class _FakeRun:
    failed = 2

    def __init__(self, args):
        self.args = args

    def estimate(self):
        return SimpleNamespace(describe=lambda: "estimate")

    def run(self):
        report = {
            "accepted": 8,
            "rejected": {},
            "duplicates_removed": 0,
            "failed": self.failed,
            "failed_reasons": {"RateLimitError": self.failed},
            "planned": 10,
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "estimated_cost_usd": 0.0,
            "orphaned": {"answers": 0},
            "budget_stopped": False,
        }
        return SimpleNamespace(report=report, output=Path(self.args.output))


def test_generate_pushes_an_unfinished_dataset_only_when_asked(tmp_path, monkeypatch, capsys):
    from e5_mistral.hub import writer as dataset
    from e5_mistral.synthesis import cli, runner

    pushed = []
    monkeypatch.setattr(runner, "SynthesisRun", _FakeRun)
    monkeypatch.setattr(dataset, "push_to_hub", lambda folder, repo, private=False: pushed.append(repo) or "url")
    argv = ["--model", "m", "--output", str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9/v1"]
    assert cli.main([*argv, "--push-to-hub", "me/data"]) == 1
    err = capsys.readouterr().err
    assert "not pushed to me/data: the dataset is unfinished (2 examples failed)" in err and "--push-partial" in err
    assert pushed == []
    assert cli.main([*argv, "--push-to-hub", "me/data", "--push-partial"]) == 0 and pushed == ["me/data"]


def test_a_failed_push_is_one_line_and_keeps_the_data(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from e5_mistral.hub.writer import push_to_hub

    folder = write_hub_folder(_rows(), tmp_path / "dataset")

    def refuse(*args, **kwargs):
        raise ConnectionError("the Hub is unreachable\nsecond line")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(E5MistralError, match=r"pushing .* failed \(ConnectionError: the Hub is unreachable second"):
        push_to_hub(folder, "me/data")
    assert (folder / "README.md").is_file()


def test_mine_pushes_the_dataset_layout_only(tmp_path, monkeypatch, minilm_dir):
    from huggingface_hub import HfApi

    from e5_mistral.mining.hard_negatives import MiningArguments, mine

    seen = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: seen.update(kwargs) or "url")
    out = tmp_path / "mined"
    data = write_synthetic_folder(tmp_path / "data", families=("short_long",))
    args = MiningArguments(
        dataset=str(data), output=str(out), teacher=str(minilm_dir), push_to_hub="me/m", no_progress=True
    )
    mine(args)
    patterns = seen["allow_patterns"]
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    uploaded = [f for f in files if any(Path(f).match(p) and f.count("/") == p.count("/") for p in patterns)]
    assert "README.md" in uploaded and "short_long/train-00000-of-00001.parquet" in uploaded
    assert not [f for f in uploaded if f.startswith(".") or "cache" in f or f.endswith((".json", ".lock"))]
    assert any(f.startswith(".cache/") for f in files)  # it exists, and stays local


# -- options accepted and not applied -----------------------------------------------------------------------------
def _exported_teacher(minilm_dir, folder):
    """MiniLM saved with a stored `query` prompt, as this project's exports carry one."""
    shutil.copytree(minilm_dir, folder)
    config = folder / "config_sentence_transformers.json"
    settings = json.loads(config.read_text())
    settings["prompts"] = {"query": "Instruct: stored\nQuery: ", "document": ""}
    config.write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize("query_prompt, corpus_prompt", [(None, None), ("query: ", "passage: ")])
def test_mine_gives_each_text_exactly_one_prompt(minilm_dir, tmp_path, monkeypatch, query_prompt, corpus_prompt):
    from sentence_transformers.base.modules import Transformer

    from e5_mistral.mining.hard_negatives import MiningArguments, mine

    teacher = _exported_teacher(minilm_dir, tmp_path / "teacher")
    seen: list[str] = []  # each text as the encoder gets it: the prompt it is given, then the text
    real = Transformer.preprocess

    def spy(self, inputs, prompt=None, **kwargs):
        seen.extend((prompt or "") + text for text in inputs)
        return real(self, inputs, prompt=prompt, **kwargs)

    monkeypatch.setattr(Transformer, "preprocess", spy)
    data = write_synthetic_folder(tmp_path / "data", families=("short_long",))
    args = MiningArguments(
        dataset=str(data),
        output=str(tmp_path / "out"),
        teacher=str(teacher),
        query_prompt=query_prompt,
        corpus_prompt=corpus_prompt,
        no_progress=True,
    )
    mine(args)
    queries = [t for t in seen if "Query:" in t or t.startswith("query: ")]
    assert queries and all(t.count("Instruct:") + t.count("query: ") == 1 for t in queries)
    assert "Instruct: stored" not in "".join(seen)
    documents = [t for t in seen if t not in queries]
    if corpus_prompt:
        assert documents and all(t.startswith("passage: ") for t in documents)
    else:
        assert documents and not any(t.startswith(("passage: ", "Instruct:")) for t in documents)


def test_generator_license_reaches_the_card(tmp_path):
    from e5_mistral.hub.writer import run_settings
    from e5_mistral.synthesis.config import SynthesisArguments

    args = SynthesisArguments(model="m", output=str(tmp_path), generator_license="Apache-2.0, the Qwen team")
    write_hub_folder(_rows(n=1), tmp_path / "dataset", {"accepted": 2}, run_settings(args))
    assert "Generator licence: Apache-2.0, the Qwen team" in (tmp_path / "dataset" / "README.md").read_text()


def test_mining_reads_a_rewritten_folder_afresh(tmp_path):
    from e5_mistral.mining.hard_negatives import MiningArguments
    from e5_mistral.mining.inputs import load_rows

    data = write_hub_folder(_rows(n=2), tmp_path / "dataset")
    args = MiningArguments(dataset=str(data), output=str(tmp_path / "o"))
    assert len(load_rows(args, "short_long")) == 2
    write_hub_folder(_rows(n=5), tmp_path / "dataset")
    assert len(load_rows(args, "short_long")) == 5


def test_same_dataset_batches_says_what_it_drops_and_refuses_most(caplog):
    from e5_mistral.training.data import same_dataset_order

    with caplog.at_level(logging.WARNING):
        order = same_dataset_order([0] * 10 + [1] * 7, global_batch_size=4, seed=0)
    assert len(order) == 12
    assert "5 of 17 rows fall in the incomplete last batches of 2 batch groups" in caplog.text
    with pytest.raises(E5MistralError, match=r"18 of 18 rows .* 6 batch groups .*group by family"):
        same_dataset_order([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5], global_batch_size=8, seed=0)


# -- errors meant for users ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, message",
    [
        ("model_name_or_path: [unclosed\n", r"bad\.yaml is not valid YAML \(line 2, column 1\)"),
        ("- a\n- b\n", r"bad\.yaml must be a YAML mapping of settings, not a list"),
        ("model_name_or_path: x/y\nbogus_key: 1\n", r"bad\.yaml: unknown key\(s\) bogus_key"),
        (
            "model_name_or_path: x/y\ndataset_mixture:\n  - {path: d, nme: short_long}\n",
            r"dataset_mixture entry 0: unknown key\(s\) nme",
        ),
        ("model_name_or_path: /nope\noutput_dir: o\n", r"bad\.yaml: model_name_or_path /nope does not exist"),
        ("output_dir: o\n", r"bad\.yaml: model_name_or_path is required"),
    ],
)
def test_training_config_errors_are_one_line(tmp_path, capsys, content, message):
    from e5_mistral.training.run import main

    (tmp_path / "bad.yaml").write_text(content)
    assert main([str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_mine_names_a_teacher_it_cannot_load(tmp_path, capsys):
    from e5_mistral.mining.cli import main

    data = write_synthetic_folder(tmp_path / "data", families=("short_long",))
    assert main([str(data), "--output", str(tmp_path / "o"), "--teacher", str(tmp_path / "no-such-model")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "e5-mistral mine: error: could not load --teacher" in errors[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--languages", "Klingon"], "unknown language 'Klingon'"),
        (["--max-cost", "1"], "--max-cost needs a price for model 'no-price-model'"),
        (["--backend", "carrier-pigeon"], "--backend must be one of online, batch"),
    ],
)
def test_generate_argument_errors_exit_2(tmp_path, capsys, flags, message):
    from e5_mistral.synthesis.cli import main

    argv = ["--model", "no-price-model", "--output", str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9/v1"]
    assert main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- supply chain -------------------------------------------------------------------------------------------------
def test_model_wheels_are_installed_by_hash_and_hold_data_only():
    from importlib.metadata import distribution

    from e5_mistral.local_models import MODEL_REQUIREMENTS, check_data_only

    lines = [line for line in MODEL_REQUIREMENTS.read_text().splitlines() if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[a-z0-9-]+==[0-9.]+ --hash=sha256:[0-9a-f]{64}", line) for line in lines)
    assert "--require-hashes -r $(MODEL_REQUIREMENTS)" in (REPO_ROOT / "Makefile").read_text()
    for line in lines:
        check_data_only(line.split("==")[0])  # no .pth, no module beyond the package's own
        files = [str(f) for f in distribution(line.split("==")[0]).files]
        assert not any(f.endswith(".pth") for f in files)


def test_a_wheel_with_a_pth_file_is_refused(monkeypatch):
    from e5_mistral import local_models

    fake = SimpleNamespace(files=["evil.pth", "pkg/__init__.py"], metadata={"Name": "evil"})
    monkeypatch.setattr(local_models, "distribution", lambda name: fake)
    with pytest.raises(E5MistralError, match=r"evil ships evil\.pth"):
        local_models.check_data_only("evil")


def test_every_option_reaches_the_code_that_applies_it():
    """Each field of the mine, filter, generate and evaluate arguments is read by the code that runs them."""
    from dataclasses import fields

    from e5_mistral.evaluation.cli import EvaluateArguments
    from e5_mistral.mining.consistency import FilterArguments
    from e5_mistral.mining.hard_negatives import MiningArguments
    from e5_mistral.synthesis.config import SynthesisArguments

    package = REPO_ROOT / "e5_mistral"
    consumers = {
        MiningArguments: ["mining/hard_negatives.py", "mining/cli.py", "mining/inputs.py"],
        FilterArguments: ["mining/consistency.py", "mining/inputs.py"],
        EvaluateArguments: ["evaluation/cli.py"],
        SynthesisArguments: [str(p.relative_to(package)) for p in (package / "synthesis").glob("*.py")]
        + ["mining/judge.py"],
    }
    for cls, modules in consumers.items():
        code = "".join((package / m).read_text() for m in modules)
        code = code.replace(f"class {cls.__name__}", "")
        unread = [f.name for f in fields(cls) if not re.search(rf"\.{f.name}\b|\"{f.name}\"|'{f.name}'", code)]
        assert not unread, f"{cls.__name__} options that no code reads: {unread}"

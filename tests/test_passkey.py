"""Personalized passkey retrieval tasks (written, then scored by `evaluate` as top-1 accuracy) and the RoPE base
override in evaluation, export and training."""

from __future__ import annotations

import json

import pytest

from e5_mistral.errors import E5MistralError
from e5_mistral.evaluation.passkey import FILLER, task_name, write_passkey_task
from e5_mistral.evaluation.passkey import main as passkey_main


def words(text: str) -> int:
    return len(text.split())


def test_each_query_has_one_document_with_its_pass_key_in_filler_of_the_asked_length(tmp_path):
    task = write_passkey_task(tmp_path, 300, candidates=12, queries=5, seed=1, count=words)
    corpus = {d["_id"]: d["text"] for d in map(json.loads, (task / "corpus.jsonl").read_text().splitlines())}
    queries = [json.loads(line) for line in (task / "queries.jsonl").read_text().splitlines()]
    qrels = [line.split("\t") for line in (task / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    assert task.name == task_name(300) and len(corpus) == 12 and len(queries) == len(qrels) == 5
    for query, (qid, doc_id, score) in zip(queries, qrels):
        name = query["text"].removeprefix("what is the pass key for ").removesuffix("?")
        assert qid == query["_id"] and score == "1"
        assert f"{name}'s pass key is " in corpus[doc_id]
        assert [d for d in corpus.values() if name in d] == [corpus[doc_id]]  # names are unique
    for text in corpus.values():
        assert abs(words(text) - 300) <= words(FILLER) and text.count(FILLER) >= 10
    assert json.loads((task / "task.json").read_text())["main_score"] == "recall_at_1"
    again = write_passkey_task(tmp_path / "again", 300, candidates=12, queries=5, seed=1, count=words)
    assert (again / "corpus.jsonl").read_text() == (task / "corpus.jsonl").read_text()  # seeded
    with pytest.raises(E5MistralError, match="--queries <= --candidates"):
        write_passkey_task(tmp_path, 300, candidates=3, queries=5)


def test_evaluate_scores_a_passkey_task_as_top1_accuracy(minilm_dir, tmp_path):
    import mteb

    from e5_mistral.evaluation import evaluate

    write_passkey_task(tmp_path / "tasks", 96, candidates=10, queries=6, count=words)
    scores = evaluate(str(minilm_dir), [task_name(96)], tmp_path / "out", tmp_path / "tasks", show_progress_bar=False)
    [path] = (tmp_path / "out").glob(f"results/*/*/{task_name(96)}.json")
    result = mteb.TaskResult.from_disk(path)
    recall_at_1 = result.scores["test"][0]["recall_at_1"]
    assert scores[task_name(96)] == pytest.approx(recall_at_1) and 0.0 <= recall_at_1 <= 1.0


def test_the_command_counts_lengths_in_the_tokenizers_tokens(smollm2_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    argv = ["--output", str(tmp_path), "--lengths", "128", "--candidates", "4", "--queries", "2"]
    assert passkey_main(argv + ["--tokenizer", str(smollm2_dir)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    for line in (tmp_path / task_name(128) / "corpus.jsonl").read_text().splitlines():
        tokens = len(tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"])
        assert abs(tokens - 128) <= 12, tokens
    assert "4 documents of about 128 tokens, 2 queries" in capsys.readouterr().out


def test_the_rope_base_is_set_for_evaluation_export_and_training(tiny_model_dir, minilm_dir, tmp_path):
    from transformers import AutoConfig

    from e5_mistral.evaluation.evaluate import load_model
    from e5_mistral.export import ExportArguments, export_checkpoint
    from e5_mistral.training.e5_config import E5TrainingConfig, ModelArguments
    from e5_mistral.training.model import load_backbone

    base = AutoConfig.from_pretrained(tiny_model_dir).rope_parameters
    st_model = load_model(str(tiny_model_dir), rope_theta=123456.0)
    assert st_model[0].auto_model.config.rope_parameters == {**base, "rope_theta": 123456.0}

    out = export_checkpoint(
        ExportArguments(checkpoint_dir=str(tiny_model_dir), output_dir=str(tmp_path / "export"), rope_theta=1e5)
    )
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_theta"] == 1e5
    assert load_model(str(out))[0].auto_model.config.rope_parameters["rope_theta"] == 1e5

    args = E5TrainingConfig(output_dir=str(tmp_path / "run"), use_cpu=True, use_lora=False, report_to="none")
    model = load_backbone(ModelArguments(model_name_or_path=str(tiny_model_dir), rope_theta=5e4), args)
    assert model.config.rope_parameters["rope_theta"] == 5e4

    with pytest.raises(E5MistralError, match="no rotary position embedding"):
        load_model(str(minilm_dir), rope_theta=1e5)


def test_a_lora_run_at_another_rope_base_exports_at_that_base(tiny_model_dir, tmp_path):
    from e5_mistral.evaluation.evaluate import load_model
    from e5_mistral.export import ExportArguments, export_checkpoint
    from e5_mistral.training.run import main as train_main
    from tests.helpers.training import tiny_config, write_synthetic_folder, write_yaml

    data = write_synthetic_folder(tmp_path / "data")
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", max_steps=1, rope_theta=5e4)
    assert train_main([str(write_yaml(tmp_path / "train.yaml", config))]) == 0
    assert (tmp_path / "run" / "adapter_config.json").is_file()  # an adapter carries no config.json of its own
    assert json.loads((tmp_path / "run" / "e5_mistral_config.json").read_text())["rope_theta"] == 5e4
    out = export_checkpoint(ExportArguments(checkpoint_dir=str(tmp_path / "run"), output_dir=str(tmp_path / "st")))
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_theta"] == 5e4
    assert load_model(str(out))[0].auto_model.config.rope_parameters["rope_theta"] == 5e4
    assert "| RoPE base | 50000.0" in (out / "README.md").read_text()

"""`e5-mistral filter` drops a planted off-topic pair and keeps clean ones; `e5-mistral merge` is the weighted sum
of the adapters' updates and refuses adapters of different bases."""

from __future__ import annotations

import json
import shutil

import pytest

from e5_mistral.errors import E5MistralError
from e5_mistral.hub.writer import write_hub_folder
from e5_mistral.mining.consistency import FilterArguments, consistency_filter
from e5_mistral.mining.consistency import main as filter_main
from e5_mistral.training.merge import MergeArguments, merge
from e5_mistral.training.merge import main as merge_main
from tests.helpers.training import synthetic_row


QUERIES = {  # query -> its positive: each pair is clearly about one topic
    "how long to boil rice": "Cook the rice in boiling salted water for eighteen minutes, then let it rest.",
    "guitar chords for beginners": "A beginner learns the open chords G, C and D on the acoustic guitar first.",
    "why did the stock market fall": "Shares fell sharply after the central bank raised interest rates again.",
    "how do plants make sugar": "Photosynthesis turns light energy into chemical energy stored in glucose.",
    "best food for an old dog": "Senior dogs need food with fewer calories and more fibre for digestion.",
}
PLANTED = "how to repair a flat bicycle tyre"  # its "positive" is about the stock market: off topic


def _dataset(folder):
    rows = []
    for i, (query, positive) in enumerate(QUERIES.items()):
        row = synthetic_row("short_long", i)
        row.update(user_query=query, positive_document=positive, hard_negative_document=f"An unrelated note {i}.")
        rows.append(row)
    planted = synthetic_row("short_long", 99)
    planted.update(
        user_query=PLANTED,
        positive_document="Bond yields rose as investors sold technology stocks on Tuesday.",
        hard_negative_document="Patch the inner tube of a bicycle tyre with glue and a rubber patch.",
        language="German",
    )
    rows.append(planted)
    rows += [synthetic_row("sts", i) for i in range(3)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"accepted": len(rows)}))  # as generate leaves it
    return write_hub_folder(rows, folder / "dataset", {"per_family": {}})


def test_the_planted_off_topic_pair_is_dropped_and_clean_ones_kept(minilm_dir, tmp_path, capsys):
    from datasets import load_dataset

    source = _dataset(tmp_path / "run")
    out = tmp_path / "filtered"
    argv = [str(tmp_path / "run"), "--output", str(out), "--teacher", str(minilm_dir), "--top-k", "1"]
    assert filter_main(argv) == 0
    kept = load_dataset(str(out / "dataset"), "short_long", split="train", cache_dir=str(tmp_path / "c"))
    assert sorted(kept["user_query"]) == sorted(QUERIES)
    dropped = [json.loads(line) for line in open(out / "dropped.jsonl")]
    assert [d["user_query"] for d in dropped] == [PLANTED]
    assert dropped[0]["filter_reason"].startswith("positive ranked ")
    report = json.loads((out / "report.json").read_text())["filter"]
    assert report["per_family"]["short_long"] == {"kept": 5, "dropped": 1}
    assert report["per_family"]["sts"] == {"kept": 3, "dropped": 0}  # S2 of each triple beats the others' texts
    assert report["per_language"]["German"] == {"kept": 0, "dropped": 1}
    card = (out / "dataset" / "README.md").read_text()
    assert "Ranking-consistency filter" in card and "| short_long | 5 | 1 |" in card
    assert "kept 8 of 9 rows" in capsys.readouterr().out
    assert source.is_dir()  # the input is untouched


def test_filter_refuses_unsafe_outputs_and_keeps_everything(minilm_dir, tmp_path):
    _dataset(tmp_path / "run")
    inside = FilterArguments(
        dataset=str(tmp_path / "run"), output=str(tmp_path / "run" / "f"), teacher=str(minilm_dir)
    )
    with pytest.raises(E5MistralError, match="overlaps the input"):
        consistency_filter(inside)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    busy = FilterArguments(dataset=str(tmp_path / "run"), output=str(tmp_path / "busy"), teacher=str(minilm_dir))
    with pytest.raises(E5MistralError, match="not empty; pass --overwrite"):
        consistency_filter(busy)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(E5MistralError, match="--top-k must be at least 0"):
        FilterArguments(dataset="x", output="y", top_k=-1)
    nothing = FilterArguments(dataset=str(tmp_path / "run"), output=str(tmp_path / "none"), top_k=0)
    with pytest.raises(E5MistralError, match="--top-k 0 filters nothing without --min-score or --judge-model"):
        consistency_filter(nothing)


def test_filter_reads_what_mine_reads_and_names_a_row_that_lacks_a_text(minilm_dir, tmp_path):
    """A folder someone else wrote (one parquet file, no `all/` config, none of the metadata columns) and a JSON
    Lines file of labeled rows are filtered like a synthesis output; a row without its query is one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset

    rows = [
        {"family": "short_long", "task": "Find the answer.", "user_query": q, "positive_document": p}
        for q, p in QUERIES.items()
    ]
    rows.append(
        {
            "family": "short_long",
            "task": "Find the answer.",
            "user_query": PLANTED,
            "positive_document": "Bond yields rose as investors sold technology stocks on Tuesday.",
        }
    )
    (tmp_path / "theirs" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "theirs" / "data" / "train-00000-of-00001.parquet")
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text(
        "".join(json.dumps({"query": r["user_query"], "positive": r["positive_document"]}) + "\n" for r in rows)
    )
    for name, source, extra in [("theirs", tmp_path / "theirs", []), ("labeled", labeled, ["--instruction", "Find."])]:
        out = tmp_path / f"filtered-{name}"
        argv = [str(source), "--output", str(out), "--teacher", str(minilm_dir), "--top-k", "1", *extra]
        assert filter_main(argv) == 0, name
        kept = load_dataset(str(out / "dataset"), "short_long", split="train", cache_dir=str(tmp_path / "c" / name))
        assert sorted(kept["user_query"]) == sorted(QUERIES), name
        assert kept["generator_model"] == [None] * len(QUERIES)  # metadata it never had stays null
        assert [json.loads(line)["user_query"] for line in open(out / "dropped.jsonl")] == [PLANTED]
    with pytest.raises(
        E5MistralError, match=r"labeled.jsonl, config default, row 0: a labeled row needs field 'instruction'"
    ):
        consistency_filter(FilterArguments(dataset=str(labeled), output=str(tmp_path / "x"), teacher=str(minilm_dir)))
    rows[3]["user_query"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "theirs" / "data" / "train-00000-of-00001.parquet")
    args = FilterArguments(dataset=str(tmp_path / "theirs"), output=str(tmp_path / "y"), teacher=str(minilm_dir))
    with pytest.raises(E5MistralError, match=r"config default, row 3: a short_long row needs field 'user_query'"):
        consistency_filter(args)
    assert not (tmp_path / "y").exists() and not (tmp_path / "x").exists()  # nothing half-written


def _positive_judge(prompts: list):
    """A judge that finds the planted pair's positive off its query and every other positive on it; it keeps the
    prompts it was sent."""

    def answer(body: dict) -> str:
        prompts.append(body["messages"][-1]["content"])
        return json.dumps({"relevant": "no" if f"Query: {PLANTED}\n" in prompts[-1] else "yes"})

    return answer


def test_the_llm_judge_drops_the_planted_pair_and_a_rerun_pays_nothing_twice(fake_openai, tmp_path, capsys, caplog):
    import logging

    from datasets import load_dataset

    caplog.set_level(logging.INFO)
    prompts = []
    fake_openai.responder = _positive_judge(prompts)
    _dataset(tmp_path / "run")
    out = tmp_path / "judged"
    argv = [str(tmp_path / "run"), "--output", str(out), "--top-k", "0", "--judge-model", "judge"]
    argv += ["--judge-base-url", fake_openai.base_url, "--judge-response-format", "none"]
    assert filter_main(argv) == 0
    assert len(prompts) == 9  # every row judged once: 6 short_long, 3 sts, each with its task, query and positive
    sts = synthetic_row("sts", 0)
    assert any(f"Task: {sts['task']}\nQuery: {sts['S1']}\nDocument: {sts['S2']}\n" in prompt for prompt in prompts)
    assert any("Query: how long to boil rice\nDocument: Cook the rice" in prompt for prompt in prompts)
    dropped = [json.loads(line) for line in open(out / "dropped.jsonl")]
    assert [d["user_query"] for d in dropped] == [PLANTED]
    assert dropped[0]["filter_reason"] == "the judge (judge) found that the positive does not satisfy the query"
    kept = load_dataset(str(out / "dataset"), "short_long", split="train", cache_dir=str(tmp_path / "c"))
    assert sorted(kept["user_query"]) == sorted(QUERIES)
    judged = json.loads((out / "report.json").read_text())["filter"]["judge"]
    assert (judged["candidates"], judged["dropped"], judged["unjudged"], judged["model"]) == (9, 1, 0, "judge")
    assert "it dropped 1 of 9 (0 unjudged, kept)" in (out / "dataset" / "README.md").read_text()
    assert "the judge dropped 1 of 9 rows" in capsys.readouterr().out
    assert not [r for r in caplog.records if r.name.startswith("httpx")]  # no log line per request
    assert filter_main(argv) == 0  # the rerun into the same folder: every answer from the journal
    assert len(prompts) == 9
    assert [json.loads(line)["user_query"] for line in open(out / "dropped.jsonl")] == [PLANTED]


# -- merge ---------------------------------------------------------------------------------------------------------
def _adapter(base_dir, folder, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from e5_mistral.run_metadata import RunMetadata

    torch.manual_seed(seed)
    base = AutoModel.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    model.save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, folder / name)
    RunMetadata(base_model_name_or_path=str(base_dir), max_seq_length=32).save(folder)
    return folder


def _lora_update(folder, module):
    """scaling x B @ A of one module of a saved adapter."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    config = json.loads((folder / "adapter_config.json").read_text())
    a = next(v for k, v in weights.items() if module in k and "lora_A" in k)
    b = next(v for k, v in weights.items() if module in k and "lora_B" in k)
    return (config["lora_alpha"] / config["r"]) * (b @ a)


def test_merging_two_adapters_is_their_weighted_sum(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModel

    first = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    second = _adapter(tiny_model_dir, tmp_path / "b", seed=2)
    out = tmp_path / "merged"
    assert merge_main([str(first), str(second), "--output", str(out), "--weights", "0.3", "0.7"]) == 0
    base = AutoModel.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload().state_dict()
    module = "layers.0.self_attn.q_proj"
    expected = original[f"{module}.weight"] + 0.3 * _lora_update(first, module) + 0.7 * _lora_update(second, module)
    assert torch.allclose(merged[f"{module}.weight"], expected, atol=1e-6)
    assert torch.equal(merged["layers.0.mlp.up_proj.weight"], original["layers.0.mlp.up_proj.weight"])
    metadata = json.loads((out / "e5_mistral_config.json").read_text())
    assert metadata["merged"] == {"checkpoints": [str(first), str(second)], "weights": [0.3, 0.7], "method": "linear"}
    assert metadata["max_seq_length"] == 32  # the rest is the first checkpoint's


def test_adapters_of_different_bases_are_refused(tiny_model_dir, tmp_path, capsys):
    from tests.tiny_models import build_tiny_mistral

    other_base = build_tiny_mistral(tmp_path / "other-base", seed=5)
    first = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    second = _adapter(other_base, tmp_path / "b", seed=2)
    with pytest.raises(E5MistralError, match="adapters of different base models"):
        merge([str(first), str(second)], MergeArguments(output=str(tmp_path / "m")))
    assert merge_main([str(first), str(second), "--output", str(tmp_path / "m")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "e5-mistral merge: error: the checkpoints are adapters of different" in errors[0]
    assert not (tmp_path / "m").exists()
    with pytest.raises(E5MistralError, match="3 weights for 2 checkpoints"):
        merge([str(first), str(first)], MergeArguments(output=str(tmp_path / "m"), weights=[1, 1, 1]))


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_merging_an_adapter_with_itself_gives_its_own_update(tiny_model_dir, tmp_path, method):
    import torch
    from peft import PeftModel
    from transformers import AutoModel

    first = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    out = tmp_path / "merged"
    # default weights; density 1 keeps every entry, so nothing but the merge's own arithmetic can change the update
    assert merge_main([str(first), str(first), "--output", str(out), "--method", method, "--density", "1"]) == 0
    base = AutoModel.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload().state_dict()
    module = "layers.0.self_attn.q_proj"
    expected = original[f"{module}.weight"] + _lora_update(first, module)
    assert torch.allclose(merged[f"{module}.weight"], expected, atol=1e-5)
    recorded = json.loads((out / "e5_mistral_config.json").read_text())["lora"]
    saved = json.loads((out / "adapter_config.json").read_text())
    assert (recorded["r"], recorded["lora_alpha"]) == (saved["r"], saved["lora_alpha"])  # what the adapter really is
    assert recorded["r"] == (8 if method == "linear" else 4)  # cat: the sum of the ranks; ties_svd: the largest


def test_checkpoints_that_export_differently_are_refused(tiny_model_dir, tmp_path, capsys):
    first = _adapter(tiny_model_dir, tmp_path / "a", seed=1)
    second = _adapter(tiny_model_dir, tmp_path / "b", seed=2)
    metadata = json.loads((second / "e5_mistral_config.json").read_text())
    (second / "e5_mistral_config.json").write_text(json.dumps({**metadata, "pooling": "mean"}))
    assert merge_main([str(first), str(second), "--output", str(tmp_path / "m")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "disagree on pooling" in error and "'lasttoken'" in error and "'mean'" in error
    assert not (tmp_path / "m").exists()


class _RecordingModel:
    """Encodes texts as seeded random unit vectors and records what it was asked to encode."""

    def __init__(self):
        self.texts = []

    def encode(self, texts, **kwargs):
        import numpy as np

        self.texts += list(texts)
        vectors = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=16) for t in texts])
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype("float32")


def test_symmetric_pairs_are_prefixed_alike_and_ranks_do_not_depend_on_the_chunk(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from e5_mistral.mining import consistency

    _dataset(tmp_path / "run")
    rows = pq.read_table(tmp_path / "run" / "dataset" / "all" / "train-00000-of-00001.parquet").to_pylist()
    args = FilterArguments(dataset="x", output="y", corpus_prompt="passage: ")
    model = _RecordingModel()
    sts = [r for r in rows if r["family"] == "sts"]
    consistency.positive_ranks(model, sts, args)
    assert model.texts and all(t.startswith("passage: ") for t in model.texts)  # S1 as S2 and S3 are
    whole = consistency.positive_ranks(_RecordingModel(), rows, args)
    monkeypatch.setattr(consistency, "QUERY_CHUNK", 2)
    monkeypatch.setattr(consistency, "DOCUMENT_CHUNK", 3)
    chunked = consistency.positive_ranks(_RecordingModel(), rows, args)
    assert whole[0].tolist() == chunked[0].tolist() and whole[1] == pytest.approx(chunked[1], abs=1e-6)


def test_ranks_scored_in_blocks_equal_the_whole_matrix(monkeypatch):
    import numpy as np

    from e5_mistral.mining import consistency

    rng = np.random.default_rng(0)
    queries, corpus = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(70, 8)).astype(np.float32)
    positives = rng.integers(0, 70, size=50)
    scores = queries @ corpus.T
    expected = (scores > scores[np.arange(50), positives][:, None]).sum(axis=1)
    monkeypatch.setattr(consistency, "QUERY_CHUNK", 7)
    monkeypatch.setattr(consistency, "DOCUMENT_CHUNK", 11)
    ranks, cosines = consistency.count_above(queries, corpus, positives)
    assert ranks.tolist() == expected.tolist()
    assert cosines == pytest.approx(scores[np.arange(50), positives], abs=1e-5)


def test_filter_keeps_the_sources_settings_and_never_replaces_a_mine_output(minilm_dir, tmp_path):
    _dataset(tmp_path / "run")
    (tmp_path / "run" / "run_config.json").write_text(
        json.dumps(
            {"temperature": 0.7, "top_p": 0.9, "max_tokens": 300, "seed": 5, "generator_license": "Qwen: Apache-2.0"}
        )
    )
    out = tmp_path / "filtered"
    consistency_filter(FilterArguments(dataset=str(tmp_path / "run"), output=str(out), teacher=str(minilm_dir)))
    card = (out / "dataset" / "README.md").read_text()
    assert "temperature 0.7, top_p 0.9, max_tokens 300; seed 5" in card and "Qwen: Apache-2.0" in card
    # a mine output with its paid judge's journal: filtering into it would replace mine's report
    mined = tmp_path / "mined"
    (mined / "judge" / "journal").mkdir(parents=True)
    (mined / "report.json").write_text('{"configs": {}, "settings": {}}')
    with pytest.raises(E5MistralError, match="holds a journal of LLM answers"):
        consistency_filter(FilterArguments(dataset=str(tmp_path / "run"), output=str(mined), teacher=str(minilm_dir)))
    assert json.loads((mined / "report.json").read_text()) == {"configs": {}, "settings": {}}

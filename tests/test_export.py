"""Export stage: a checkpoint in the training layout -> a sentence-transformers folder that reproduces it."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from e5_mistral.export import ExportArguments, export_checkpoint
from e5_mistral.export.cli import main as export_main
from e5_mistral.instructions import EVALUATION_INSTRUCTIONS, format_query, query_prompt
from e5_mistral.pooling import encode


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXTS = [
    "how to cook rice",
    "The quick brown fox jumps over the lazy dog.",
    "Le chat est assis sur le tapis.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules. " * 3,
    "a",
]
LONG_TEXT = "The stock market fell sharply after the central bank raised interest rates again. " * 40
WEB_SEARCH = "Given a web search query, retrieve relevant passages that answer the query"


def run_config(base: str, max_seq_length: int = 64, lora: bool = True, datasets=None) -> dict:
    return {
        "base_model_name_or_path": base,
        "pooling": "lasttoken",
        "normalize": True,
        "append_eos": True,
        "max_seq_length": max_seq_length,
        "query_max_length": None,
        "temperature": 0.02,
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": LORA_TARGETS} if lora else None,
        "datasets": datasets or [],
        "training": {
            "learning_rate": 1e-4,
            "per_device_train_batch_size": 4,
            "global_batch_size": 4,
            "warmup_steps": 0,
            "weight_decay": 0.1,
            "lr_scheduler_type": "linear",
            "seed": 0,
            "bf16": False,
            "fp16": False,
        },
        "versions": {"transformers": "5.x"},
    }


def mistral_like_tokenizer(tiny_model_dir):
    """The tiny tokenizer with Mistral's default post-processor (adds <s>, not </s>)."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", bos)]
    )
    return tokenizer


def trainer_embeddings(model, tokenizer, texts, max_seq_length, padding_side="right"):
    """The training collator's tokenization (default specials, truncate to L-1, append EOS) + pooling.encode."""
    rows = [
        tokenizer(t, truncation=True, max_length=max_seq_length - 1)["input_ids"] + [tokenizer.eos_token_id]
        for t in texts
    ]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        sl = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        ids[i, sl], mask[i, sl] = torch.tensor(row), 1
    with torch.no_grad():
        return encode(model, ids, mask, "lasttoken")


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    """A LoRA checkpoint in the training layout, its un-merged PeftModel and tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    out = tmp_path_factory.mktemp("lora-run")
    base = AutoModel.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS))
    gen = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter change the outputs
            param.data = torch.randn(param.shape, generator=gen) * 0.5
    model.save_pretrained(out)
    tokenizer = mistral_like_tokenizer(tiny_model_dir)
    tokenizer.save_pretrained(out)
    dataset_dir = out.parent / "synthetic-data"
    dataset_dir.mkdir(exist_ok=True)
    (dataset_dir / "README.md").write_text(
        "---\npretty_name: Tiny synthetic retrieval data\nlanguage:\n- en\n- fr\n---\n\n# Tiny\n\n"
        "Synthetic retrieval triples generated for the export test.\n",
        encoding="utf-8",
    )
    datasets = [
        {
            "path": str(dataset_dir),
            "name": "short-long",
            "split": "train",
            "sampling_ratio": 1.0,
            "instruction": None,
            "num_rows": 12,
        },
        {
            "path": "sentence-transformers/msmarco",
            "name": None,
            "split": "train",
            "sampling_ratio": 0.5,
            "instruction": WEB_SEARCH,
            "num_rows": 100,
        },
    ]
    (out / "e5_mistral_config.json").write_text(json.dumps(run_config(str(tiny_model_dir), datasets=datasets)))
    model.eval()
    return out, model, tokenizer


@pytest.fixture(scope="module")
def eval_summary(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    scores = {"STSBenchmark": 0.8203, "SciFact": 0.4567, "Banking77Classification": 0.7012}
    (folder / "summary.json").write_text(json.dumps(scores))
    (folder / "evaluation.json").write_text(json.dumps({"classification_embeddings": "unnormalized"}))
    return folder


@pytest.fixture(scope="module")
def lora_export(lora_run, eval_summary, tmp_path_factory):
    ckpt, _, _ = lora_run
    out = tmp_path_factory.mktemp("exports") / "tiny-e5"
    code = export_main(
        [str(ckpt), str(out), "--keep-adapter", "--eval-results", str(eval_summary), "--license", "apache-2.0"]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    """A full fine-tune checkpoint (perturbed AutoModel) with the plain tiny tokenizer (adds no specials)."""
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path_factory.mktemp("full-run")
    model = AutoModel.from_pretrained(tiny_model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.01)
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(out)
    config = run_config(str(tiny_model_dir), lora=False)
    del config["max_seq_length"]  # every key is optional: 512 by default
    (out / "e5_mistral_config.json").write_text(json.dumps(config))
    model.eval()
    return out, model, tokenizer


def st_encode(folder, texts, **kwargs):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    batched = model.encode(texts, batch_size=8, convert_to_tensor=True, **kwargs)
    single = torch.stack([model.encode([t], convert_to_tensor=True, **kwargs)[0] for t in texts])
    return batched, single


def test_lora_export_round_trip_matches_trainer(lora_run, lora_export):
    _, peft_model, tokenizer = lora_run
    reference = trainer_embeddings(peft_model, tokenizer, TEXTS + [LONG_TEXT], 64)
    left = trainer_embeddings(peft_model, tokenizer, TEXTS + [LONG_TEXT], 64, padding_side="left")
    torch.testing.assert_close(left, reference, atol=1e-5, rtol=0)
    batched, single = st_encode(lora_export, TEXTS + [LONG_TEXT])
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, reference, atol=1e-5, rtol=0)
    # The adapter is not a no-op, so the round trip really exercises the merge.
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(lora_run[1].peft_config["default"].base_model_name_or_path)
    assert (trainer_embeddings(plain, tokenizer, TEXTS, 64) - reference[: len(TEXTS)]).abs().max() > 1e-2


def test_lora_export_prompts_match_training_queries(lora_run, lora_export):
    _, peft_model, tokenizer = lora_run
    queries = ["how to cook rice", "best pizza in town"]
    reference = trainer_embeddings(peft_model, tokenizer, [format_query(WEB_SEARCH, q) for q in queries], 64)
    batched, single = st_encode(lora_export, queries, prompt_name="query")
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, reference, atol=1e-5, rtol=0)
    sts = trainer_embeddings(
        peft_model, tokenizer, [format_query(EVALUATION_INSTRUCTIONS["STSBenchmark"], q) for q in queries], 64
    )
    batched, _ = st_encode(lora_export, queries, prompt_name="STSBenchmark")
    torch.testing.assert_close(batched, sts, atol=1e-5, rtol=0)
    custom = "Given a recipe name, retrieve recipes"
    batched, _ = st_encode(lora_export, queries, prompt=query_prompt(custom))
    torch.testing.assert_close(
        batched,
        trainer_embeddings(peft_model, tokenizer, [format_query(custom, q) for q in queries], 64),
        atol=1e-5,
        rtol=0,
    )


def test_exported_tokenizer_adds_bos_and_eos_and_keeps_eos_when_truncating(lora_export):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lora_export)
    ids = tokenizer("x").input_ids
    assert ids[0] == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids("<s>")
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("</s>")
    assert ids[1:-1] == tokenizer("x", add_special_tokens=False).input_ids
    long = tokenizer(LONG_TEXT, truncation=True).input_ids
    assert len(long) == 64 and long[0] == tokenizer.bos_token_id and long[-1] == tokenizer.eos_token_id
    model = SentenceTransformer(str(lora_export), device="cpu")
    assert model.max_seq_length == 64
    features = model.tokenize([LONG_TEXT, "x"])
    assert features["input_ids"].shape[1] == 64
    assert features["input_ids"][0, -1].item() == tokenizer.eos_token_id
    config = json.loads((lora_export / "tokenizer_config.json").read_text())
    assert (config["add_bos_token"], config["add_eos_token"]) == (True, True)


def test_lora_export_folder_layout_prompts_and_adapter(lora_export, lora_run):
    modules = json.loads((lora_export / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((lora_export / modules[1]["path"] / "config.json").read_text())
    assert pooling["pooling_mode"] == "lasttoken" and pooling["embedding_dimension"] == 64
    st_config = json.loads((lora_export / "config_sentence_transformers.json").read_text())
    assert st_config["similarity_fn_name"] == "cosine" and st_config["default_prompt_name"] is None
    prompts = st_config["prompts"]
    assert prompts["query"] == f"Instruct: {WEB_SEARCH}\nQuery: "
    # keyed as stock mteb looks them up: retrieval on queries only, every other type on every input
    assert prompts["SciFact-query"] == query_prompt(EVALUATION_INSTRUCTIONS["SciFact"])
    assert prompts["SciFact-document"] == "" and "SciFact" not in prompts
    assert prompts["STSBenchmark"] == query_prompt(EVALUATION_INSTRUCTIONS["STSBenchmark"])
    assert prompts["Banking77Classification.v2"] == prompts["Banking77Classification"]  # mteb 2 revisions
    assert all(name in prompts or f"{name}-query" in prompts for name in EVALUATION_INSTRUCTIONS)
    assert prompts["document"] == ""  # documents bare
    bert_config = json.loads((lora_export / "sentence_bert_config.json").read_text())
    assert list(bert_config["modality_config"]) == ["text"]  # never the chat template
    assert (lora_export / "adapter" / "adapter_config.json").is_file()
    assert (lora_export / "adapter" / "adapter_model.safetensors").is_file()
    assert not any(p.name.startswith(".") for p in lora_export.parent.iterdir())  # no staging leftovers
    assert json.loads((lora_export / "config.json").read_text())["architectures"] == ["MistralModel"]
    assert not (lora_export / "adapter_config.json").exists()  # the weights at the root are merged


def test_model_card_is_rendered_from_template(lora_export, tiny_model_dir):
    from huggingface_hub import ModelCard

    card = ModelCard.load(lora_export / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "sentence-transformers" and data["pipeline_tag"] == "sentence-similarity"
    assert set(data["tags"]) >= {"sentence-transformers", "feature-extraction", "e5-mistral", "mteb"}
    assert data["license"] == "apache-2.0" and data["datasets"] == ["sentence-transformers/msmarco"]
    assert data["language"] == ["en", "fr"]  # from the local dataset's card
    results = {r.dataset_name: r for r in card.data.eval_results}
    assert results["STSBenchmark"].metric_value == pytest.approx(0.8203)
    assert results["SciFact"].task_type == "Retrieval" and results["SciFact"].metric_type == "ndcg_at_10"
    text = card.text
    assert "82.03" in text and "45.67" in text and "2401.00368" in text and "@inproceedings{wang2024improving" in text
    assert "Classification tasks were scored on the embeddings before the final L2 normalisation" in " ".join(
        text.split()
    )
    assert "LoRA (r=4" in text and "| learning_rate | 0.0001 |" in text and "temperature" in text
    assert "Synthetic retrieval triples generated for the export test." in text
    assert "model.encode_query(" in text and "model.encode_document(" in text and "AutoModel.from_pretrained" in text
    assert "Instruct: Given a web search query" in text and "{{" not in text
    assert str(tiny_model_dir) in text  # the local base model is named in the body, not as Hub metadata
    assert "base_model" not in data


def test_full_finetune_export_round_trip_and_defaults(full_run, tmp_path):
    ckpt, model, tokenizer = full_run
    out = tmp_path / "full"
    export_checkpoint(ExportArguments(checkpoint_dir=str(ckpt), output_dir=str(out)))
    reference = trainer_embeddings(model, tokenizer, TEXTS + [LONG_TEXT], 512)
    batched, single = st_encode(out, TEXTS + [LONG_TEXT])
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, reference, atol=1e-5, rtol=0)
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(out)
    ids = exported("x").input_ids
    assert ids == tokenizer("x").input_ids + [tokenizer.eos_token_id]  # this tokenizer adds no BOS by default
    assert exported.model_max_length == 512  # not the base model's 1024 positions
    card = (out / "README.md").read_text()
    assert "full fine-tuning" in card and "No evaluation results" in card


def test_checkpoint_n_folder_and_options(lora_run, tmp_path):
    ckpt, peft_model, tokenizer = lora_run
    run_dir = tmp_path / "run"
    step = run_dir / "checkpoint-2"
    step.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(ckpt / name, step / name)
    shutil.copy2(ckpt / "e5_mistral_config.json", run_dir / "e5_mistral_config.json")  # only in the run folder
    out = tmp_path / "out"
    # The run folder itself (no final model) resolves to its latest checkpoint-N.
    export_checkpoint(
        ExportArguments(
            checkpoint_dir=str(run_dir),
            output_dir=str(out),
            max_seq_length=16,
            dtype="bfloat16",
            query_instruction="Find recipes",
        )
    )
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 16 and model.prompts["query"] == query_prompt("Find recipes")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert len(model.tokenize([LONG_TEXT])["input_ids"][0]) == 16
    emb = model.encode(TEXTS, convert_to_tensor=True).float()
    reference = trainer_embeddings(peft_model, tokenizer, TEXTS, 16)
    assert torch.nn.functional.cosine_similarity(emb, reference).min() > 0.99  # bf16, same tokens
    with pytest.raises(ValueError, match="not empty"):
        export_checkpoint(ExportArguments(checkpoint_dir=str(step), output_dir=str(out)))


def test_exported_folder_loads_with_sentence_transformers_only(lora_export, monkeypatch):
    # Make every e5_mistral import fail while loading: the folder must be self-contained (no custom code,
    # no trust_remote_code), readable by sentence-transformers alone.
    from sentence_transformers import SentenceTransformer

    for name in [m for m in sys.modules if m == "e5_mistral" or m.startswith("e5_mistral.")]:
        monkeypatch.setitem(sys.modules, name, None)
    model = SentenceTransformer(str(lora_export), device="cpu", trust_remote_code=False)
    assert model.encode(["how to cook rice"], prompt_name="query").shape == (1, 64)
    assert (model.similarity_fn_name, model.default_prompt_name) == ("cosine", None)
    modules = json.loads((lora_export / "modules.json").read_text())
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)
    assert "auto_map" not in json.loads((lora_export / "config.json").read_text())
    assert not list(lora_export.glob("*.py"))


def _one_error_line(capsys) -> str:
    """The single error line (progress bars and log records may precede it, tracebacks may not)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("e5-mistral export: error: "), err
    return lines[0]


def test_bad_checkpoint_path_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert export_main([str(missing), str(tmp_path / "out")]) == 1
    assert str(missing) in _one_error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_main([str(empty), str(tmp_path / "out")]) == 1
    assert "neither a PEFT adapter" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as usage:
        export_main([str(empty)])
    assert usage.value.code == 2 and "OUTPUT_DIR" in capsys.readouterr().err
    assert export_main([str(empty), str(tmp_path / "out"), "--private"]) == 2
    assert "--private only applies together with --push-to-hub" in _one_error_line(capsys)


def test_unsupported_architectures_are_named(tmp_path, capsys):
    from transformers import T5Config, T5Model

    t5 = tmp_path / "t5"
    T5Model(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)).save_pretrained(t5)
    assert export_main([str(t5), str(tmp_path / "out")]) == 1
    line = _one_error_line(capsys)
    assert "unsupported architecture T5Model" in line and "encoder-decoder" in line
    weird = tmp_path / "weird"
    weird.mkdir()
    (weird / "config.json").write_text(
        json.dumps({"model_type": "frobnicator", "architectures": ["FrobnicatorModel"]})
    )
    (weird / "model.safetensors").write_bytes(b"")
    assert export_main([str(weird), str(tmp_path / "out")]) == 1
    assert "unsupported architecture FrobnicatorModel" in _one_error_line(capsys)


def test_bad_eval_results_and_run_config_fail_fast(lora_run, tmp_path, capsys):
    ckpt, _, _ = lora_run
    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps({"STSBenchmark": 82.03}))
    assert export_main([str(ckpt), str(tmp_path / "out"), "--eval-results", str(bad)]) == 1
    assert "'STSBenchmark' has main score 82.03" in _one_error_line(capsys)
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "e5_mistral_config.json").write_text('{"pooling": "max"}')
    assert export_main([str(broken), str(tmp_path / "out")]) == 1
    assert "field 'pooling'" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


class _FailingHub(BaseHTTPRequestHandler):
    def _fail(self):
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "the hub is down"}')

    do_GET = do_POST = do_PUT = do_HEAD = _fail

    def log_message(self, *args):
        pass


def test_push_failure_keeps_the_export_and_hides_the_token(lora_run, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hub_constants

    server = HTTPServer(("127.0.0.1", 0), _FailingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "hf_SECRETtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "is_offline_mode", lambda: False)
    ckpt, _, _ = lora_run
    out = tmp_path / "pushed"
    try:
        code = export_main([str(ckpt), str(out), "--push-to-hub", "someone/tiny-e5", "--private"])
    finally:
        server.shutdown()
    assert code == 1
    line = _one_error_line(capsys)
    assert "someone/tiny-e5" in line and "local export" in line and secret not in line
    for name in (
        "modules.json",
        "model.safetensors",
        "tokenizer.json",
        "config_sentence_transformers.json",
        "README.md",
    ):
        assert (out / name).is_file(), name


def test_push_calls_the_hub_api(lora_run, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(
        HfApi,
        "create_repo",
        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://hf.co/{repo_id}",
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    ckpt, _, _ = lora_run
    out = tmp_path / "pushed"
    export_checkpoint(
        ExportArguments(checkpoint_dir=str(ckpt), output_dir=str(out), push_to_hub="me/e5", private=True)
    )
    assert calls[0] == ("create", "me/e5", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][1]["repo_id"] == "me/e5" and calls[1][1]["folder_path"] == str(out)
    assert 'SentenceTransformer("me/e5")' in (out / "README.md").read_text()


def test_stock_mteb_on_the_export_agrees_with_e5_mistral_evaluate(lora_export, benchmarks_dir, tmp_path):
    """A user's `mteb.evaluate(SentenceTransformer(export), tasks)` gets the paper's instructions from the export's own
    prompts: the same scores as `e5-mistral evaluate`, on a retrieval task and an STS task from local files."""
    import mteb
    from sentence_transformers import SentenceTransformer

    from e5_mistral.evaluation.evaluate import evaluate, resolve_tasks

    names, limits = ["SciFact", "STSBenchmark"], dict(max_rows=16, subsets=None, corpus_per_query=3)
    ours = evaluate(
        str(lora_export),
        names,
        benchmarks_dir=benchmarks_dir,
        output_dir=tmp_path / "ours",
        show_progress_bar=False,
        **limits,
    )
    tasks = resolve_tasks(names, benchmarks_dir, limits["max_rows"], limits["subsets"], limits["corpus_per_query"])
    result = mteb.evaluate(
        SentenceTransformer(str(lora_export), device="cpu"), tasks, cache=None, show_progress_bar=False
    )
    stock = {r.task_name: float(r.get_score()) for r in result.task_results}
    assert set(stock) == set(ours) == set(names)
    for name in names:
        assert abs(stock[name] - ours[name]) <= 1e-4, (name, stock[name], ours[name])

"""The Hub layout (configs per family + all, a card with statistics) and the datasets builder."""

from __future__ import annotations

import pytest
import yaml

from e5_mistral.hub import writer as dataset_module
from e5_mistral.hub.schema import CONFIG_NAMES, columns
from e5_mistral.synthesis.builder import SyntheticEmbeddingData
from e5_mistral.synthesis.runner import generate
from tests.helpers.synthesis_fakes import responder, run_args


@pytest.fixture
def finished_run(fake_openai, tmp_path):
    fake_openai.responder = responder
    args = run_args(fake_openai, tmp_path / "out", num_examples=40)
    return args, generate(args)


def test_layout_card_and_every_config_loads_back(finished_run, tmp_path):
    import datasets

    args, result = finished_run
    folder = result.output / "dataset"
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in front["configs"]] == list(CONFIG_NAMES)
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "short_long/*.parquet"}]
    assert "arXiv:2401.00368" in card and "fake-llm" in card
    assert f"| {result.report['planned']} | {result.report['accepted']} |" in card
    english = sum(r["language"] == "English" for r in result.rows)
    assert english and f"| English | {english} |" in card and "en" in front["language"]
    for config in CONFIG_NAMES:
        ds = datasets.load_dataset(str(folder), config, split="train", cache_dir=str(tmp_path / "cache" / config))
        assert ds.column_names == columns(config)
        expected = [r for r in result.rows if config == "all" or r["family"] == config]
        assert ds.num_rows == len(expected), config
    rows = datasets.load_dataset(str(folder), "all", split="train", cache_dir=str(tmp_path / "cache" / "all2"))
    sts = next(r for r in rows if r["family"] == "sts")
    assert sts["user_query"] is None and sts["S1"] and sts["slots"]["src_lang"] is None and sts["slots"]["unit"]


def test_empty_families_still_have_a_typed_file(tmp_path):
    import datasets
    import pyarrow.parquet as pq

    folder = dataset_module.write_hub_folder([], tmp_path / "empty")
    table = pq.read_table(folder / "bitext" / dataset_module.DATA_FILE)
    assert table.num_rows == 0 and table.column_names == columns("bitext")
    assert datasets.Features.from_arrow_schema(table.schema)["slots"]["tgt_lang"] == datasets.Value("string")


def test_builder_runs_the_journal_and_yields_accepted_rows(finished_run, fake_openai, tmp_path):
    args, result = finished_run
    fake_openai.reset_stats()
    builder = SyntheticEmbeddingData(
        config_name="short_long", synthesis=args, cache_dir=str(tmp_path / "builder-cache")
    )
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")
    assert fake_openai.stats.requests == 0  # resumed from the journal: everything was answered already
    assert ds["request_id"] == [r["request_id"] for r in result.rows if r["family"] == "short_long"]
    assert ds.column_names == columns("short_long")
    with pytest.raises(ValueError, match="not found"):
        SyntheticEmbeddingData(config_name="nope", synthesis=args)


def test_push_to_hub_uploads_the_local_layout(finished_run, monkeypatch):
    _, result = finished_run
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            calls.append(("create", repo_id, repo_type, private))

        def upload_folder(self, repo_id, folder_path, repo_type, commit_message, allow_patterns=None):
            calls.append(("upload", repo_id, folder_path, repo_type))
            return "https://huggingface.co/datasets/me/data/commit/abc"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = dataset_module.push_to_hub(result.output / "dataset", "me/data", private=True)
    assert url.endswith("/commit/abc")
    assert ("create", "me/data", "dataset", True) in calls
    assert ("upload", "me/data", str(result.output / "dataset"), "dataset") in calls
    with pytest.raises(FileNotFoundError, match="not a dataset folder"):
        dataset_module.push_to_hub(result.output, "me/data")

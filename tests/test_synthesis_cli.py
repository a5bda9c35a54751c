"""``e5-mistral generate``: the happy path, one-line errors for bad configuration, and no secrets on disk."""

from __future__ import annotations

import json

import pytest

from e5_mistral.synthesis.cli import main
from tests.fake_openai import FakeOpenAIServer
from tests.helpers import generate_argv, one_line
from tests.helpers.synthesis_fakes import responder


def _argv(base_url, output, *extra, languages=("English", "German")):
    return generate_argv(base_url, output, "--num-examples", "12", "--timeout", "2", *extra, languages=languages)


def test_generate_writes_the_dataset_and_loads_back(fake_openai, tmp_path, capsys, monkeypatch):
    import datasets

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # loopback endpoints need no key
    fake_openai.responder = responder
    code = main(
        _argv(fake_openai.base_url, tmp_path / "out", "--families", "short_long", "sts"), prog="e5-mistral generate"
    )
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert f"{report['accepted']} accepted" in out
    # a private cache: datasets may reuse an older cache entry of another local folder named "dataset"
    ds = datasets.load_dataset(
        str(tmp_path / "out" / "dataset"), "short_long", split="train", cache_dir=str(tmp_path / "cache")
    )
    assert ds.column_names == [
        "request_id",
        "family",
        "task",
        "language",
        "slots",
        "template_version",
        "generator_model",
        "user_query",
        "positive_document",
        "hard_negative_document",
    ]
    assert ds.num_rows == report["per_family"]["short_long"]["accepted"] > 0
    assert set(ds[0]["slots"]) == {"query_type", "query_length", "clarity", "num_words", "difficulty", "language"}
    assert ds[0]["generator_model"] == "fake-llm" and ds[0]["language"] in ("English", "German")


def test_unreachable_endpoint_is_one_line_and_exit_1(tmp_path, capsys):
    code = main(_argv("http://127.0.0.1:9/v1", tmp_path / "out"), prog="e5-mistral generate")
    assert code == 1
    assert "cannot reach the endpoint http://127.0.0.1:9/v1" in one_line(capsys.readouterr().err)


def test_rejected_key_stops_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MY_KEY", "wrong-key")
    with FakeOpenAIServer(responder=responder, api_key="right-key") as server:
        code = main(_argv(server.base_url, tmp_path / "out", "--api-key-env", "MY_KEY"), prog="e5-mistral generate")
    assert code == 1
    line = one_line(capsys.readouterr().err)
    assert "rejected the API key (HTTP 401" in line and "wrong-key" not in line


def test_missing_key_for_a_remote_endpoint_names_the_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    code = main(
        _argv("https://api.example.invalid/v1", tmp_path / "out", "--api-key-env", "NO_SUCH_KEY_VAR"),
        prog="e5-mistral generate",
    )
    assert code == 1
    assert "set the environment variable NO_SUCH_KEY_VAR" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "extra,code,message",
    [
        (["--families", "short-long"], 2, "unknown family 'short-long'"),
        (["--languages", "Klingon"], 2, "unknown language 'Klingon'"),
        (["--extra-body", "{oops"], 2, "--extra-body is not valid JSON"),
        (["--max-cost", "5"], 2, "--max-cost needs a price for model 'fake-llm'"),
        (["--backend", "carrier-pigeon"], 2, "--backend must be one of online, batch, vllm-batch, not"),
    ],
)
def test_bad_configuration(tmp_path, capsys, extra, code, message):
    argv = _argv("http://127.0.0.1:9/v1", tmp_path / "out", *extra, languages=None)
    assert main(argv, prog="e5-mistral generate") == code
    assert message in one_line(capsys.readouterr().err)


def test_secrets_never_reach_disk_or_output(fake_openai, tmp_path, capsys, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    fake_openai.responder = responder
    fake_openai.api_key = secret  # the key is really used...
    assert main(_argv(fake_openai.base_url, tmp_path / "out"), prog="e5-mistral generate") == 0
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "report.json" for p in files) and any(p.suffix == ".jsonl" for p in files)
    for path in files:  # ...but never written anywhere
        assert secret.encode() not in path.read_bytes(), path


def test_azure_uses_the_azure_client(tmp_path, monkeypatch):
    import openai

    from e5_mistral.llm.cost import Budget
    from e5_mistral.llm.endpoint import make_backend
    from e5_mistral.synthesis.config import SynthesisArguments

    monkeypatch.setenv("AZURE_KEY", "k")
    args = SynthesisArguments(
        model="my-deployment",
        output=str(tmp_path),
        base_url="https://res.openai.azure.com",
        azure_api_version="2024-10-21",
        api_key_env="AZURE_KEY",
    )
    client, backend = make_backend(args, tmp_path, Budget())
    assert isinstance(client, openai.AsyncAzureOpenAI)
    assert str(client.base_url).startswith("https://res.openai.azure.com/openai")
    assert backend.concurrency == args.concurrency

"""The offline fixtures every other test builds on, and the console command's shape."""

from __future__ import annotations

import subprocess
import sys
import time

import openai
import pytest
import torch

from tests.fake_openai import FaultRates


def test_tiny_model_loads_offline(tiny_model_dir):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    batch = tokenizer(["hello world", "a b"], padding=True, return_tensors="pt")
    out = model(**batch).last_hidden_state
    assert out.shape == (2, batch.input_ids.shape[1], 64)


def test_smollm2_folder_loads_offline(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert tokenizer.eos_token == "<|im_end|>"
    assert "quantization_config" not in config.to_dict()


def test_minilm_is_a_sentence_transformers_folder(minilm_dir):
    assert (minilm_dir / "modules.json").is_file()


def _client(server, timeout=1.0):
    return openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0, timeout=timeout)


def _chat(client, text="hello"):
    return client.chat.completions.create(model="fake", messages=[{"role": "user", "content": text}])


def test_fake_server_answers_openai_client(fake_openai):
    fake_openai.responder = lambda body: '{"echo": "%s"}' % body["messages"][-1]["content"]
    reply = _chat(_client(fake_openai), "ping")
    assert reply.choices[0].message.content == '{"echo": "ping"}'
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0
    assert fake_openai.stats.outcomes["ok"] == 1 and fake_openai.stats.requests == 1


def test_fake_server_injects_each_fault(fake_openai):
    fake_openai.responder = lambda body: '{"query": "a long enough answer", "doc": "text"}'
    fake_openai.faults = FaultRates(retry_after=7, slow_seconds=2.0)
    client = _client(fake_openai, timeout=0.5)

    fake_openai.force("429")
    with pytest.raises(openai.RateLimitError) as err:
        _chat(client)
    assert err.value.response.headers["retry-after"] == "7"

    fake_openai.force("500")
    with pytest.raises(openai.InternalServerError):
        _chat(client)

    fake_openai.force("timeout")
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        _chat(client)
    assert time.monotonic() - started < 1.5

    fake_openai.force("malformed")
    content = _chat(client).choices[0].message.content
    with pytest.raises(ValueError):
        import json

        json.loads(content)

    fake_openai.force("truncated")
    reply = _chat(client)
    assert reply.choices[0].finish_reason == "length"
    assert fake_openai.stats.outcomes == {"429": 1, "500": 1, "timeout": 1, "malformed": 1, "truncated": 1}


def test_fake_server_fault_rates_are_seeded(fake_openai):
    rates = FaultRates(rate_429=0.3, rate_500=0.2, seed=3)
    draws = [rates.draw(f"p{i}", 0) for i in range(1000)]
    assert 250 < draws.count("429") < 350 and 150 < draws.count("500") < 250
    assert draws == [rates.draw(f"p{i}", 0) for i in range(1000)]


def test_console_command_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "e5_mistral.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("generate", "export", "evaluate", "decontaminate", "quickstart"):
        assert command in out


def test_bad_arguments_exit_nonzero_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "e5_mistral.cli", "quickstart", "--no-such-flag"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--no-such-flag" in proc.stderr


def test_pooling_is_padding_side_invariant():
    from e5_mistral.pooling import pool

    hidden = torch.randn(2, 4, 8)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    hidden_left = hidden.clone()
    hidden_left[0, 1:] = hidden[0, :3]
    assert torch.allclose(pool(hidden, right), pool(hidden_left, left))
    assert torch.allclose(pool(hidden, right, "lasttoken", normalize=False)[0], hidden[0, 2])
    assert torch.allclose(pool(hidden_left, left, "cls", normalize=False)[0], hidden[0, 0])
    assert torch.allclose(pool(hidden, right, "mean", normalize=False)[0], hidden[0, :3].mean(0))


def test_instruction_format_matches_paper():
    from e5_mistral.instructions import evaluation_instruction, format_query

    assert (
        format_query("Retrieve semantically similar text.", "a cat")
        == "Instruct: Retrieve semantically similar text.\nQuery: a cat"
    )
    assert format_query(None, "doc") == "doc"
    assert evaluation_instruction("STSBenchmark") == "Retrieve semantically similar text."
    assert evaluation_instruction("CQADupstackEnglishRetrieval").startswith("Given a question, retrieve detailed")
    assert evaluation_instruction("NoSuchTask") is None

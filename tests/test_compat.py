"""Every private name of a library that e5_mistral.compat uses still means what compat assumes."""

from __future__ import annotations

import inspect

import httpx2 as httpx  # the HTTP library openai is built on
import openai

from e5_mistral import compat


def test_openai_constants_match_the_library():
    from openai import _constants

    assert compat.OPENAI_RAW_RESPONSE_HEADER == _constants.RAW_RESPONSE_HEADER
    assert compat.OPENAI_MAX_RETRY_AFTER_DELAY == _constants.MAX_RETRY_AFTER_DELAY


def test_openai_retry_policy_shims():
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="x")
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")

    def response(status: int, **headers: str) -> httpx.Response:
        return httpx.Response(status, headers=headers, request=request)

    assert compat.openai_should_retry(client, response(429)) and compat.openai_should_retry(client, response(503))
    assert not compat.openai_should_retry(client, response(400))
    assert compat.openai_should_retry(client, response(400, **{"x-should-retry": "true"}))
    assert not compat.openai_should_retry(client, response(500, **{"x-should-retry": "false"}))
    assert compat.openai_retry_after(client, httpx.Headers({"retry-after-ms": "1500"})) == 1.5
    assert compat.openai_retry_after(client, httpx.Headers({"retry-after": "2"})) == 2.0
    assert compat.openai_retry_after(client, httpx.Headers({})) is None


def test_trainer_save_model_still_takes_internal_call():
    from transformers import Trainer

    assert "_internal_call" in inspect.signature(Trainer.save_model).parameters


def test_load_task_data_gives_a_known_mteb_task_local_data():
    import mteb
    from datasets import Dataset, DatasetDict

    task = mteb.get_task("STSBenchmark")
    data = {
        "default": DatasetDict({"test": Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "score": [1.0]})})
    }
    compat.load_task_data(task, data, ["test"], ["default"])
    assert task.dataset is data and task.data_loaded and task.hf_subsets == ["default"]
    assert task.metadata.eval_splits == ["test"] or task.eval_splits == ["test"]

"""A real local model behind a real server: Qwen2.5-Coder-0.5B-Instruct (PyPI data wheels, sha256-checked) served by
llama.cpp's own server (xllamacpp) on 127.0.0.1, with the JSON schemas enforced."""

from __future__ import annotations

import json

import pytest

from e5_mistral.families import FAMILIES
from e5_mistral.local_models import GENERATOR_MODELS, generator_gguf
from e5_mistral.local_server import llama_cpp_serve
from e5_mistral.quickstart import LLAMA_CPP_SAMPLING, QUICKSTART_LANGUAGES, SAMPLING_SEED
from e5_mistral.synthesis.config import SynthesisArguments
from e5_mistral.synthesis.runner import generate


NUM_EXAMPLES = 24


@pytest.mark.slow
def test_qwen_on_llama_cpp_writes_valid_examples_for_every_family(tmp_path):
    gguf = generator_gguf("qwen2.5-coder-0.5b")
    assert gguf.stat().st_size == GENERATOR_MODELS["qwen2.5-coder-0.5b"].size
    assert (gguf.parent / "Qwen2.5-Coder-NOTICE.txt").is_file()  # Qwen's licence notice travels with the file
    with llama_cpp_serve(gguf, log_path=tmp_path / "server.log") as base_url:
        args = SynthesisArguments(
            model="qwen2.5-coder-0.5b",
            base_url=base_url,
            output=str(tmp_path / "out"),
            num_examples=NUM_EXAMPLES,
            family_mix=json.dumps({family: 1 for family in FAMILIES}),
            languages=[json.dumps(QUICKSTART_LANGUAGES)],
            examples_per_task=2,
            max_tokens=512,
            extra_body=json.dumps(LLAMA_CPP_SAMPLING),
            sampling_seed=SAMPLING_SEED,
            concurrency=1,
            no_progress=True,
        )
        report = generate(args).report
    assert report["response_format"]["chosen"] == "json_schema"  # auto found the shape llama.cpp enforces
    assert report["planned"] == NUM_EXAMPLES and report["failed"] == 0
    assert report["accepted"] >= 0.9 * NUM_EXAMPLES, (report["rejected"], report["duplicates_removed"])
    assert all(report["per_family"][family]["accepted"] >= 1 for family in FAMILIES), report["per_family"]
    assert report["acceptance"]["rate"] == round(report["accepted"] / NUM_EXAMPLES, 4)
    assert report["duplicates_removed"] <= 1  # each request its own sampling seed: equal prompts differ

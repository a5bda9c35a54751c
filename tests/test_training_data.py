"""Mixture loading: synthetic families mapped as paper §1.3, labeled rows, sampling ratios, bad rows."""

from __future__ import annotations

from collections import Counter

import pytest

from e5_mistral.instructions import STS_TASK, format_query
from e5_mistral.training.data import build_mixture, same_dataset_order, sample_indices
from e5_mistral.training.e5_config import E5DatasetConfig
from tests.helpers.training import synthetic_row, write_labeled, write_synthetic_folder


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return write_synthetic_folder(tmp_path_factory.mktemp("synthetic"), rows_per_family=3)


@pytest.mark.parametrize(
    "family, query_key, positive_key, negative_key",
    [
        ("short_long", "user_query", "positive_document", "hard_negative_document"),
        ("long_short", "input_text", "label", "misleading_label"),
        ("short_short", "input", "positive_document", None),
        ("long_long", "input", "positive_document", None),
        ("sts", "S1", "S2", "S3"),
        ("bitext", "S1", "S2", "S3"),
    ],
)
def test_synthetic_family_maps_to_query_positive_negative(
    synthetic_dir, family, query_key, positive_key, negative_key
):
    dataset, infos = build_mixture([E5DatasetConfig(path=str(synthetic_dir), name=family)])
    source = synthetic_row(family, 1)
    row = dataset[1]
    assert row["query"] == format_query(source["task"], source[query_key])
    assert row["query"].startswith("Instruct: ") and "\nQuery: " in row["query"]
    assert row["positive"] == source[positive_key]  # documents carry no instruction
    assert row["negatives"] == ([source[negative_key]] if negative_key else [])
    assert infos[0].num_rows == 3
    if family == "sts":
        assert row["query"] == f"Instruct: {STS_TASK}\nQuery: {source['S1']}"


def test_all_config_and_mixture_ids(synthetic_dir, tmp_path):
    labeled = write_labeled(
        tmp_path / "lab" / "train.jsonl",
        [
            {"query": "q1", "positive": "p1", "negative": "n1"},
            {"query": "q2", "positive": "p2", "negative": ["n2a", "n2b"], "instruction": "Own task"},
            {"query": "q3", "positive": "p3"},
        ],
    )
    configs = [
        E5DatasetConfig(path=str(synthetic_dir), name="all"),
        E5DatasetConfig(
            path="json",
            data_files=str(labeled),
            instruction="Given a web search query, retrieve passages",
            in_batch_negatives=False,
        ),
    ]
    dataset, infos = build_mixture(configs, num_hard_negatives=1)
    assert [i.num_rows for i in infos] == [18, 3]
    assert Counter(dataset["dataset_id"]) == {0: 18, 1: 3}
    labeled_rows = [r for r in dataset if r["dataset_id"] == 1]
    assert labeled_rows[0]["query"] == "Instruct: Given a web search query, retrieve passages\nQuery: q1"
    assert labeled_rows[1]["query"] == "Instruct: Own task\nQuery: q2"  # the per-row instruction wins
    assert labeled_rows[1]["negatives"] == ["n2a"]  # cut to num_hard_negatives
    assert labeled_rows[2]["negatives"] == []
    assert all(not r["in_batch_negatives"] for r in labeled_rows)


def test_sampling_ratio(tmp_path):
    data = write_labeled(tmp_path / "d.jsonl", [{"query": f"q{i}", "positive": f"p{i}"} for i in range(20)])
    dataset, infos = build_mixture(
        [E5DatasetConfig(path="json", data_files=str(data), sampling_ratio=0.1, instruction="t")]
    )
    assert infos[0].num_rows == 2 and len(set(dataset["positive"])) == 2
    dataset, infos = build_mixture(
        [E5DatasetConfig(path="json", data_files=str(data), sampling_ratio=1.5, instruction="t")]
    )
    assert infos[0].num_rows == 30 and len(set(dataset["positive"])) == 20
    assert sample_indices(10, 0.5, seed=1) == sample_indices(10, 0.5, seed=1)


@pytest.mark.parametrize(
    "bad_row, field",
    [
        ({"query": "q", "negative": "n"}, "'positive' is missing"),
        ({"query": "q", "positive": "   "}, "'positive' is empty"),
        ({"query": 3, "positive": "p"}, "'query' must be a string"),
        ({"query": "q", "positive": "p", "negative": ["ok", ""]}, "'negative'[1]"),
    ],
)
def test_bad_labeled_row_names_dataset_row_and_field(tmp_path, bad_row, field):
    rows = [{"query": "q0", "positive": "p0"}] * 3 + [bad_row]
    data = write_labeled(tmp_path / "bad.jsonl", [dict(r) for r in rows])
    with pytest.raises(ValueError) as err:
        build_mixture([E5DatasetConfig(path="json", data_files=str(data), instruction="t")])
    assert "row 3" in str(err.value) and field in str(err.value) and "json" in str(err.value)


def test_bad_synthetic_row(tmp_path):
    folder = write_synthetic_folder(tmp_path / "syn", rows_per_family=2, families=("short_long",))
    path = folder / "short_long" / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"positive_document": "', '"positive_document": "  ", "x": "')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"short_long.*row 1: field 'positive_document' is empty"):
        build_mixture([E5DatasetConfig(path=str(folder), name="short_long")])


def test_config_validation():
    with pytest.raises(ValueError, match="sampling_ratio"):
        E5DatasetConfig(path="x", sampling_ratio=0)
    with pytest.raises(ValueError, match="instruction"):
        E5DatasetConfig(path="x", instruction=" ")


def test_same_dataset_order_makes_homogeneous_global_batches():
    ids = [0] * 10 + [1] * 7 + [2] * 3
    order = same_dataset_order(ids, global_batch_size=4, seed=0)
    assert len(order) == 8 + 4  # incomplete tails dropped; dataset 2 has no full batch
    assert len(set(order)) == len(order)
    for start in range(0, len(order), 4):
        assert len({ids[i] for i in order[start : start + 4]}) == 1
    assert same_dataset_order(ids, 4, seed=0) == order and same_dataset_order(ids, 4, seed=1) != order


def test_rewritten_local_folder_is_not_read_from_a_stale_cache(tmp_path):
    """datasets keys a local folder's cache by path; a new synthesis run into the same folder must be seen."""
    import shutil

    folder = write_synthetic_folder(tmp_path / "syn", rows_per_family=2, families=("sts",))
    assert len(build_mixture([E5DatasetConfig(path=str(folder), name="sts")])[0]) == 2
    shutil.rmtree(folder)
    write_synthetic_folder(folder, rows_per_family=3, families=("sts",))
    assert len(build_mixture([E5DatasetConfig(path=str(folder), name="sts")])[0]) == 3


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "recipe",
    [
        "smollm2-135m/cpu.yaml",
        "e5-mistral-7b/full.yaml",
        "e5-mistral-7b/synthetic-only.yaml",
        "e5-mistral-7b/synthetic-msmarco.yaml",
    ],
)
def test_recipes_parse(recipe, tmp_path):
    from e5_mistral.training.run import parse_args

    model_args, data_args, args = parse_args(
        [str(REPO / "recipes" / recipe), "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"]
    )
    assert args.temperature == 0.02 and args.lora_r == 16 and args.lora_alpha == 32 and args.pooling == "lasttoken"
    if recipe.startswith("e5-mistral-7b"):
        assert model_args.model_name_or_path == "mistralai/Mistral-7B-v0.1"
        assert (
            args.learning_rate == 1e-4
            and args.warmup_steps == 100
            and args.weight_decay == 0.1
            and args.max_seq_length == 512
        )
        assert args.lora_dropout == 0.1 and set(args.lora_target_modules) == {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        }
    if recipe.endswith("full.yaml"):
        ratios = {d.path.split("/")[-1]: d.sampling_ratio for d in data_args.dataset_mixture}
        # synthetic + the 13 labeled datasets, MS-MARCO counted twice (passage and document, own ratios)
        assert len(data_args.dataset_mixture) == 15
        assert ratios["eli5"] == 0.1 and ratios["msmarco-bm25"] == 0.5 and ratios["msmarco-document"] == 0.2
        assert ratios["quora-duplicates"] == 0.1 and ratios["t2ranking"] == 0.5
        assert all(d.instruction for d in data_args.dataset_mixture[1:])


def test_bundled_sample_feeds_the_cpu_recipe(monkeypatch):
    from e5_mistral.training.run import parse_args

    sample = REPO / "e5_mistral" / "data" / "synthetic_sample"
    if not (sample / "README.md").is_file():
        pytest.skip("the bundled sample is not there yet")
    monkeypatch.chdir(REPO)
    _, data_args, args = parse_args(
        [str(REPO / "recipes" / "smollm2-135m" / "cpu.yaml"), "--output_dir", "/tmp/unused"]
    )
    dataset, infos = build_mixture(data_args.dataset_mixture, num_hard_negatives=args.num_hard_negatives)
    assert all(info.num_rows > 0 for info in infos) and len(infos) == 6
    assert all(q.startswith("Instruct: ") for q in dataset["query"])


def test_in_batch_negatives_and_batch_groups_per_family_inside_one_all_config(tmp_path):
    import math

    import torch
    import torch.nn.functional as F

    from e5_mistral.training.loss import info_nce_loss

    data = write_synthetic_folder(tmp_path / "data", rows_per_family=2, families=("long_short", "short_long"))
    entry = E5DatasetConfig(
        path=str(data), name="all", in_batch_negatives={"long_short": False}, group_batches_by="family"
    )
    dataset, _ = build_mixture([entry])
    families = ["long_short", "long_short", "short_long", "short_long"]
    assert dataset["in_batch_negatives"] == [f != "long_short" for f in families]
    groups = dataset["batch_group"]
    assert groups[0] == groups[1] != groups[2] == groups[3]
    order = same_dataset_order(groups, global_batch_size=2, seed=0)
    assert all(groups[order[s]] == groups[order[s + 1]] for s in (0, 2))
    # a task text works as a key too, and "*" sets the rest
    by_task = E5DatasetConfig(path=str(data), name="all", in_batch_negatives={"*": False, dataset_task(data): True})
    assert build_mixture([by_task])[0]["in_batch_negatives"] == [False, False, True, True]

    # the loss of that batch, by hand: classification rows see only their own positive and hard negative,
    # retrieval rows every positive and every hard negative of the batch
    q = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [1.0, 1.0], [-0.5, 1.0]]), dim=-1)
    p = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5], [-1.0, 1.0]]), dim=-1)
    n = F.normalize(torch.tensor([[0.5, 1.0], [1.0, 0.1], [0.0, 1.0], [1.0, -1.0]]), dim=-1)
    tau = 0.5
    total = 0.0
    for i, sees_batch in enumerate(dataset["in_batch_negatives"]):
        candidates = list(range(4)) if sees_batch else [i]
        scores = [float(q[i] @ p[j]) for j in candidates] + [float(q[i] @ n[j]) for j in candidates]
        total += -math.log(math.exp(float(q[i] @ p[i]) / tau) / sum(math.exp(s / tau) for s in scores))
    got = info_nce_loss(q, p, n, temperature=tau, in_batch_negatives=torch.tensor(dataset["in_batch_negatives"]))
    assert got.item() == pytest.approx(total / 4, rel=1e-6)


def dataset_task(data) -> str:
    import json

    return json.loads((data / "short_long" / "train.jsonl").read_text().splitlines()[0])["task"]


def test_a_bad_in_batch_negatives_policy_names_the_dataset():
    with pytest.raises(ValueError, match="dataset_mixture: d: in_batch_negatives must be true, false or a mapping"):
        E5DatasetConfig(path="d", in_batch_negatives={"long_short": "no"})
    with pytest.raises(ValueError, match="group_batches_by must be family or task"):
        E5DatasetConfig(path="d", group_batches_by="language")


def test_two_table_14_instructions_are_picked_per_row_seeded(tmp_path):
    """instruction: [nli, nli_symmetric] resolves both keys of TRAINING_INSTRUCTIONS and gives each row one of them,
    the same one on every build with the same seed."""
    from e5_mistral.instructions import TRAINING_INSTRUCTIONS

    data = write_labeled(tmp_path / "nli.jsonl", [{"query": f"premise {i}", "positive": f"h{i}"} for i in range(40)])
    config = E5DatasetConfig(path="json", data_files=str(data), instruction=["nli", "nli_symmetric"])
    assert config.instruction == [TRAINING_INSTRUCTIONS["nli"], TRAINING_INSTRUCTIONS["nli_symmetric"]]
    first, infos = build_mixture([config], seed=3)
    again, _ = build_mixture([config], seed=3)
    other, _ = build_mixture([config], seed=4)
    expected = {
        format_query(TRAINING_INSTRUCTIONS[k], f"premise {i}") for k in ("nli", "nli_symmetric") for i in range(40)
    }
    assert set(first["query"]) <= expected
    used = Counter(TRAINING_INSTRUCTIONS["nli"] in q for q in first["query"])
    assert used[True] >= 10 and used[False] >= 10  # both instructions, about half each
    assert first["query"] == again["query"] and first["query"] != other["query"]
    assert infos[0].instruction == config.instruction
    single = E5DatasetConfig(path="json", data_files=str(data), instruction="quora_duplicates")
    assert single.instruction == TRAINING_INSTRUCTIONS["quora_duplicates"]
    with pytest.raises(ValueError, match="instruction must be a non-empty text or a list"):
        E5DatasetConfig(path="x", instruction=["nli", ""])


def test_instructed_documents_put_the_rows_instruction_on_positive_and_negatives(synthetic_dir):
    """STS is scored with the instruction on both sides; instructed_documents trains it that way, and says so in the
    run metadata."""
    dataset, infos = build_mixture(
        [E5DatasetConfig(path=str(synthetic_dir), name="sts", instructed_documents=True)], num_hard_negatives=1
    )
    source = synthetic_row("sts", 1)
    assert dataset[1]["query"] == format_query(STS_TASK, source["S1"])
    assert dataset[1]["positive"] == format_query(STS_TASK, source["S2"])
    assert dataset[1]["negatives"] == [format_query(STS_TASK, source["S3"])]
    assert infos[0].to_dict()["instructed_documents"] is True
    with pytest.raises(ValueError, match="dataset_mixture: d: instructed_documents must be true or false, got 'yes'"):
        E5DatasetConfig(path="d", instructed_documents="yes")


def test_two_local_folders_of_the_same_name_are_read_each_as_it_is(tmp_path, monkeypatch):
    """datasets keys a local folder's cache by its name and takes the features it finds there: another run's
    `dataset` folder, with other columns, must not be read with the first one's features (nor fail to cast)."""
    import datasets
    from datasets import load_dataset

    from e5_mistral.adaptation.run import EXTRA_COLUMNS
    from e5_mistral.hub.writer import write_hub_folder
    from e5_mistral.local_data import fresh_read_options

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = [synthetic_row("short_long", i) for i in range(3)]
    first = write_hub_folder(rows, tmp_path / "run1" / "dataset", {"adaptation": None})
    extra = {"passage_id": "d1@0", "positive_passage_id": "d1@0", "negative_passage_id": None, "relabel": "seed"}
    second = write_hub_folder(
        [{**r, **extra} for r in rows[:2]],
        tmp_path / "run2" / "dataset",
        {"adaptation": None},
        extra_columns=EXTRA_COLUMNS,
    )

    def read(folder):
        return load_dataset(str(folder), "short_long", split="train", **fresh_read_options(folder))

    assert "relabel" not in read(first).column_names and len(read(first)) == 3
    assert read(second)["relabel"] == ["seed", "seed"]
    assert len(build_mixture([E5DatasetConfig(path=str(second), name="short_long")])[0]) == 2
    assert fresh_read_options(first) != fresh_read_options(second)
    assert "download_mode" not in fresh_read_options(first, refresh=False)  # a later process finds the copy
    assert fresh_read_options("org/hub-dataset") == {}
    pattern = fresh_read_options("json", data_files=str(second / "short_long" / "*.parquet"))  # a glob is read afresh
    assert (
        pattern["download_mode"] == "force_redownload"
        and pattern["cache_dir"] != fresh_read_options(first)["cache_dir"]
    )

"""Decontamination (paper Appendix B): normalized string match, n-gram overlap, report and cleaned copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e5_mistral.evaluation.decontamination import TestIndex, read_training_data
from e5_mistral.evaluation.decontamination_cli import main as decontaminate_main
from e5_mistral.text import match_key


PROG = "e5-mistral decontaminate"
SAMPLE = Path(__file__).resolve().parents[1] / "e5_mistral" / "data" / "synthetic_sample"
LEAKED = "A man is playing a large flute in the park today."
LEAKED_CORPUS = "Glucose metabolism in tumour cells is reprogrammed by oncogenic signalling pathways."


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _sample_rows() -> list[dict]:
    rows = []
    for file in sorted(SAMPLE.glob("*/train.jsonl")):
        rows.extend(json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip())
    return rows


@pytest.fixture()
def test_sets(tmp_path) -> Path:
    root = tmp_path / "bench"
    _jsonl(
        root / "LeakSTS" / "test.jsonl",
        [
            {"sentence1": LEAKED, "sentence2": "A man plays the flute.", "score": 4.0},
            {"sentence1": "i need a coffee", "sentence2": "what does that mean", "score": 1.0},
        ],
    )
    _jsonl(root / "LeakRetrieval" / "corpus.jsonl", [{"_id": "d1", "title": "", "text": LEAKED_CORPUS}])
    _jsonl(
        root / "LeakRetrieval" / "queries.jsonl",
        [{"_id": "q1", "text": "does oncogenic signalling rewire glucose metabolism in tumours?"}],
    )
    (root / "LeakRetrieval" / "qrels").mkdir()
    (root / "LeakRetrieval" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8"
    )
    return root


class TestMatching:
    def test_case_and_whitespace_are_ignored_short_texts_are_not_contamination(self):
        index = TestIndex(min_words=5)
        index.add("T", [LEAKED, "i need a coffee"])
        assert match_key("  A  man\tis\nPLAYING ") == "a man is playing"
        assert index.match("a MAN is   playing a large flute\nin the park today.") == [("T", "exact")]
        assert index.match("I need a COFFEE") == []  # 4 words: low entropy, as the paper
        assert index.match("A man is playing a large flute in the park") == []  # not the same text
        assert index.sizes == {"T": 1}

    def test_ngram_overlap_is_optional(self):
        index = TestIndex(min_words=5, ngram=6)
        index.add("T", [LEAKED])
        text = "Yesterday a man is playing a large flute in the street."
        assert index.match(text) == [("T", "6-gram")]
        assert TestIndex(min_words=5).match(text) == []


class TestDecontaminateCLI:
    def test_report_and_cleaned_hub_layout(self, tmp_path, test_sets, capsys):
        """One planted leak in short_long (altered case/spacing) and one in sts: found once each, removed everywhere."""
        from datasets import load_dataset

        from e5_mistral.hub.writer import write_hub_folder

        rows = _sample_rows()
        short_long = next(r for r in rows if r["family"] == "short_long")
        short_long["user_query"] = "  a MAN is playing a large   flute in the park TODAY. "
        sts = next(r for r in rows if r["family"] == "sts")
        sts["S3"] = LEAKED_CORPUS  # the corpus of a retrieval task: not contamination unless asked
        dataset = write_hub_folder(rows, tmp_path / "dataset")
        out, report = tmp_path / "clean", tmp_path / "report.json"
        argv = [str(dataset), "--against", "LeakSTS", "LeakRetrieval", "--benchmarks-dir", str(test_sets)]
        assert decontaminate_main([*argv, "--remove", "--output", str(out), "--report", str(report)], prog=PROG) == 0
        data = json.loads(report.read_text())
        assert data["rows_checked"] == len(rows)  # the 'all' config is cleaned but not counted twice
        assert data["rows_affected"] == data["rows_removed"] == 1
        assert data["tasks"]["LeakSTS"]["matches"] == 1 and data["tasks"]["LeakSTS"]["rows_affected"] == 1
        example = data["tasks"]["LeakSTS"]["examples"][0]
        assert example["config"] == "short_long" and example["field"] == "user_query" and example["match"] == "exact"
        assert data["tasks"]["LeakRetrieval"]["rows_affected"] == 0
        assert data["configs"]["all"]["rows_affected"] == 1
        printed = capsys.readouterr().out
        assert "| LeakSTS | 2 | 1 | 1 |" in printed  # 2 test texts of 5+ words and "removed 1 row(s)" in printed

        n_short_long = sum(r["family"] == "short_long" for r in rows)
        cache = str(tmp_path / "hf-cache")  # a fresh datasets cache: recycled pytest tmp paths can hit stale entries
        cleaned = load_dataset(str(out), "short_long", split="train", cache_dir=cache)
        assert len(cleaned) == n_short_long - 1 and short_long["request_id"] not in cleaned["request_id"]
        assert len(load_dataset(str(out), "all", split="train", cache_dir=cache)) == len(rows) - 1
        assert len(load_dataset(str(out), "sts", split="train", cache_dir=cache)) == sum(
            r["family"] == "sts" for r in rows
        )
        card = (out / "README.md").read_text()  # the counts are the cleaned copy's
        assert f"| `short_long` | {n_short_long - 1} |" in card and f"| `all` | {len(rows) - 1} |" in card
        assert f"({len(rows) - 1} examples)" in card and "## Decontamination" in card
        assert data["rows_removed_per_config"] == {
            "short_long": 1,
            "long_short": 0,
            "short_short": 0,
            "long_long": 0,
            "sts": 0,
            "bitext": 0,
            "all": 1,
        }
        assert (
            len(load_dataset(str(dataset), "short_long", split="train", cache_dir=cache)) == n_short_long
        )  # input untouched

        # Checking one config still removes its rows from `all`, which repeats them.
        only = tmp_path / "clean-short-long"
        argv_only = [*argv, "--configs", "short_long", "--remove", "--output", str(only)]
        assert decontaminate_main(argv_only, prog=PROG) == 0
        assert len(load_dataset(str(only), "all", split="train", cache_dir=cache + "2")) == len(rows) - 1

        # Retrieval corpora count only when asked.
        assert decontaminate_main([*argv, "--include_corpus", "--report", str(report)], prog=PROG) == 0
        assert json.loads(report.read_text())["tasks"]["LeakRetrieval"]["rows_affected"] == 1

    def test_plain_jsonl_file_and_generic_fields(self, tmp_path, test_sets):
        train = tmp_path / "pairs.jsonl"
        _jsonl(
            train,
            [
                {"query": "q one two three four", "positive": "p", "negatives": ["n", LEAKED]},
                {"query": "clean text with five words", "positive": "p"},
            ],
        )
        files = read_training_data(train)
        assert [len(f.rows) for f in files] == [2]
        out = tmp_path / "clean"
        argv = [
            str(train),
            "--against",
            "LeakSTS",
            "--benchmarks-dir",
            str(test_sets),
            "--remove",
            "--output",
            str(out),
        ]
        assert decontaminate_main(argv, prog=PROG) == 0
        kept = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
        assert [r["query"] for r in kept] == ["clean text with five words"]

    def test_bad_input_is_one_line(self, tmp_path, test_sets, capsys):
        assert (
            decontaminate_main(
                [str(tmp_path / "missing"), "--against", "LeakSTS", "--benchmarks-dir", str(test_sets)], prog=PROG
            )
            == 1
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "missing" in err[0]
        _jsonl(tmp_path / "d.jsonl", [{"query": "x"}])
        assert (
            decontaminate_main(
                [str(tmp_path / "d.jsonl"), "--against", "NoSuchTask", "--benchmarks-dir", str(test_sets)], prog=PROG
            )
            == 1
        )
        assert "unknown task 'NoSuchTask'" in capsys.readouterr().err

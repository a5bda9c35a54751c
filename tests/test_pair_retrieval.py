import json

import pytest

from benchmarks.pair_retrieval import main, text_id


def test_pairs_become_a_beir_folder_with_the_paraphrases_as_labels(tmp_path):
    pairs = [
        {"sentence1": "storm hits coast", "sentence2": "coast hit by a storm", "label": 1},
        {"sentence1": "storm hits coast", "sentence2": "storm season begins soon", "label": 0},
        {"sentence1": "storm hits coast", "sentence2": "a storm reached the coast", "label": 1},
        {"sentence1": "team wins cup", "sentence2": "cup final tonight", "label": 0},
        {"sentence1": "team wins cup", "sentence2": "coast hit by a storm", "label": 0},
    ]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert main([str(source), str(tmp_path / "beir")]) == 0

    corpus = [json.loads(line) for line in (tmp_path / "beir" / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (tmp_path / "beir" / "queries.jsonl").read_text().splitlines()]
    qrels = (tmp_path / "beir" / "qrels" / "test.tsv").read_text().splitlines()
    assert sorted(d["text"] for d in corpus) == sorted({p["sentence2"] for p in pairs})  # label-0 partners stay
    assert [q["text"] for q in queries] == ["storm hits coast"]  # a query without a paraphrase is left out
    storm = text_id("q", "storm hits coast")
    assert qrels[0] == "query-id\tcorpus-id\tscore"
    assert sorted(qrels[1:]) == sorted(
        f"{storm}\t{text_id('d', t)}\t1" for t in ("coast hit by a storm", "a storm reached the coast")
    )


def test_a_row_without_its_label_is_named_and_a_full_folder_is_refused(tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    source.write_text(json.dumps({"sentence1": "a", "sentence2": "b"}) + "\n")
    with pytest.raises(SystemExit, match=r"pairs.jsonl:1: no label"):
        main([str(source), str(tmp_path / "beir")])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main([str(source), str(tmp_path / "full")])
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"

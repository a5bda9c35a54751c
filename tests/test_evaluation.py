"""Evaluation stage: offline task folders -> mteb tasks, the paper's instructions through mteb prompts, CLI."""

from __future__ import annotations

import importlib
import json
import logging
import shutil

import pytest

from e5_mistral.evaluation.cli import main as evaluate_main
from e5_mistral.evaluation.offline_tasks import detect_type, load_offline_task
from e5_mistral.evaluation.prompts import model_prompts_for
from e5_mistral.instructions import EVALUATION_INSTRUCTIONS, query_prompt
from tests.helpers import WORDS, sentence, write_jsonl


PROG = "e5-mistral evaluate"


class TestOfflineTasks:
    def test_types_are_recognised_from_files_and_fields(self, tiny_tasks):
        assert detect_type(tiny_tasks / "TinySTS") == "STS"
        assert detect_type(tiny_tasks / "TinyPairs") == "PairClassification"
        assert detect_type(tiny_tasks / "TinyBitext") == "BitextMining"
        assert detect_type(tiny_tasks / "TinyRetrieval") == "Retrieval"
        assert detect_type(tiny_tasks / "TinyClassification" / "en") == "Classification"
        task = load_offline_task(tiny_tasks / "TinyClassification")
        assert task.metadata.name == "TinyClassification" and task.metadata.type == "Classification"
        assert task.hf_subsets == ["en"] and len(task.dataset["en"]["train"]) == 40

    def test_retrieval_keeps_judged_queries_and_subsamples(self, tiny_tasks):
        task = load_offline_task(tiny_tasks / "TinyRetrieval")
        split = task.dataset["default"]["test"]
        assert split["queries"]["id"] == [f"q{i}" for i in range(6)]  # q6, q7 have no qrels (dropped, as mteb does)
        assert split["relevant_docs"]["q2"] == {"d2": 1}
        small = load_offline_task(tiny_tasks / "TinyRetrieval", max_rows=2)
        part = small.dataset["default"]["test"]
        assert part["queries"]["id"] == ["q0", "q1"]
        assert {"d0", "d1"} <= set(part["corpus"]["id"]) and len(part["corpus"]) == 2 + 2 * 10
        fewer = load_offline_task(tiny_tasks / "TinyRetrieval", max_rows=2, corpus_per_query=3).dataset["default"][
            "test"
        ]
        assert {"d0", "d1"} <= set(fewer["corpus"]["id"]) and len(fewer["corpus"]) == 2 + 2 * 3

    def test_shared_tasks_use_mteb_task_classes(self, benchmarks_dir):
        sick = load_offline_task(benchmarks_dir / "SICK-R")
        assert type(sick).__name__ == "SickrSTS" and len(sick.dataset["default"]["test"]) == 9927  # full.jsonl
        amazon = load_offline_task(benchmarks_dir / "AmazonCounterfactualClassification", max_rows=10)
        assert amazon.hf_subsets == ["en"] and list(amazon.eval_splits) == ["test"] and amazon.samples_per_label == 32
        assert (
            len(amazon.dataset["en"]["test"]) == 10 and len(amazon.dataset["en"]["train"]) == 256
        )  # pool max(2N, 256)
        assert (
            len(
                load_offline_task(benchmarks_dir / "AmazonCounterfactualClassification", max_rows=200).dataset["en"][
                    "train"
                ]
            )
            == 400
        )
        twitter = load_offline_task(benchmarks_dir / "TwitterURLCorpus", max_rows=10)
        assert twitter.metadata.main_score == "max_ap" and set(twitter.dataset["default"]["test"]["labels"]) <= {0, 1}

    def test_subsets_keep_only_those_language_pairs(self, benchmarks_dir):
        tatoeba = load_offline_task(benchmarks_dir / "Tatoeba", max_rows=5, subsets=["deu-eng", "fra-eng"])
        assert tatoeba.hf_subsets == ["deu-eng", "fra-eng"] and set(tatoeba.dataset) == {"deu-eng", "fra-eng"}
        assert len(tatoeba.dataset["fra-eng"]["test"]) == 5
        sick = load_offline_task(benchmarks_dir / "SICK-R", max_rows=5, subsets=["deu-eng"])  # one subset: left whole
        assert len(sick.dataset["default"]["test"]) == 5
        with pytest.raises(ValueError, match=r"Tatoeba: no subset xxx-eng \(it has afr-eng"):
            load_offline_task(benchmarks_dir / "Tatoeba", max_rows=5, subsets=["deu-eng", "xxx-eng"])

    def test_bad_folders_name_the_problem(self, tiny_tasks, tmp_path):
        with pytest.raises(ValueError, match=r"Nothing matches no task format"):
            load_offline_task(tiny_tasks / "Nothing")
        bad = tmp_path / "BadSTS"
        write_jsonl(bad / "test.jsonl", [{"sentence1": "a b", "sentence2": "c d", "score": 1.0}])
        (bad / "test.jsonl").write_text((bad / "test.jsonl").read_text() + '{"sentence1": "x", "sentence2": "y"}\n')
        with pytest.raises(ValueError, match=r"test.jsonl: row 2 lacks field\(s\) score"):
            load_offline_task(bad)


class TestInstructions:
    def test_retrieval_queries_only_symmetric_everything(self, tiny_tasks, benchmarks_dir, caplog):
        sci = load_offline_task(benchmarks_dir / "SciFact", max_rows=2)
        sts = load_offline_task(tiny_tasks / "TinySTS")
        with caplog.at_level(logging.WARNING):
            prompts = model_prompts_for([sci, sts], "paper")
        assert prompts["SciFact-query"] == query_prompt(EVALUATION_INSTRUCTIONS["SciFact"])
        assert prompts["SciFact-document"] == "" and prompts["SciFact"] == ""
        sts_prefix = "Instruct: Retrieve semantically similar text.\nQuery: "
        assert prompts["TinySTS-query"] == prompts["TinySTS-document"] == prompts["TinySTS"] == sts_prefix
        assert "TinySTS is not in the paper's instruction table" in caplog.text and "SciFact" not in caplog.text
        assert set(model_prompts_for([sci, sts], "none").values()) == {""}
        with pytest.raises(ValueError, match="--instructions"):
            model_prompts_for([sts], "some")

    def test_model_prompt_named_after_task_beats_the_type_default(self, tiny_tasks, benchmarks_dir):
        sts = load_offline_task(tiny_tasks / "TinySTS")
        sick = load_offline_task(benchmarks_dir / "SICK-R", max_rows=3)
        own = {"TinySTS": "Instruct: Compare two tiny sentences\nQuery: ", "SICK-R": "ignored: the paper's table wins"}
        prompts = model_prompts_for([sts, sick], "paper", own)
        assert prompts["TinySTS"] == own["TinySTS"]
        assert prompts["SICK-R"] == query_prompt("Retrieve semantically similar text.")

    def test_prompts_reach_the_model_through_mteb(self, tiny_tasks, minilm_dir):
        """What the encoder is asked to embed: instructed queries, bare documents; both STS sides instructed."""
        import mteb

        from e5_mistral.evaluation.evaluate import _wrap, load_model

        st_model = load_model(str(minilm_dir))
        seen: list[tuple[str | None, list[str]]] = []
        encode = st_model.encode

        def spy(inputs, prompt=None, **kwargs):
            seen.append((prompt, list(inputs)))
            return encode(inputs, prompt=prompt, **kwargs)

        st_model.encode = spy
        tasks = [load_offline_task(tiny_tasks / "TinyRetrieval"), load_offline_task(tiny_tasks / "TinySTS")]
        wrapper = _wrap(st_model, "minilm", model_prompts_for(tasks, "paper"))
        mteb.evaluate(wrapper, tasks, cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 64})
        retrieval_prefix = query_prompt("Given a query, retrieve relevant documents that answer the query")
        by_prompt = {}
        for prompt, texts in seen:
            by_prompt.setdefault(prompt, []).extend(texts)
        assert any(t.startswith("which ") for t in by_prompt[retrieval_prefix])  # queries
        assert f"{WORDS[0]} {sentence(0)}" in by_prompt[""]  # documents (mteb joins title and text), no instruction
        assert not any(t.startswith("which ") for t in by_prompt[""])
        sts_texts = by_prompt["Instruct: Retrieve semantically similar text.\nQuery: "]
        assert sentence(0) in sts_texts and sentence(23 + 23 % 3) in sts_texts  # sentence1 and sentence2


class TestEvaluateCLI:
    @pytest.mark.slow
    def test_minilm_reproduces_published_mteb_scores(self, minilm_dir, benchmarks_dir, tmp_path, capsys):
        """all-MiniLM-L6-v2, no instruction: STSBenchmark 0.8203 as on the MTEB leaderboard (its 1,379 pairs)."""
        out = tmp_path / "out"
        argv = [str(minilm_dir), "--tasks", "STSBenchmark", "--benchmarks-dir", str(benchmarks_dir)]
        assert (
            evaluate_main([*argv, "--instructions", "none", "--batch-size", "128", "--output", str(out)], prog=PROG)
            == 0
        )
        summary = json.loads((out / "summary.json").read_text())
        assert set(summary) == {"STSBenchmark"}
        assert summary["STSBenchmark"] == pytest.approx(0.8203, abs=0.001)
        # mteb's own results format, readable by mteb
        import mteb

        files = sorted(out.glob("results/*/*/STSBenchmark.json"))
        assert len(files) == 1
        result = mteb.TaskResult.from_disk(files[0])
        assert result.get_score() == pytest.approx(summary["STSBenchmark"])
        table = capsys.readouterr().out
        assert "| STSBenchmark | 82.03 |" in table

    def test_classification_on_unnormalized_embeddings_by_default_skips_only_the_final_normalize(
        self, minilm_dir, tiny_tasks, tmp_path, monkeypatch
    ):
        import numpy as np
        from sentence_transformers import SentenceTransformer

        evaluate_module = importlib.import_module("e5_mistral.evaluation.evaluate")  # the package exports the function
        model = SentenceTransformer(str(minilm_dir))
        raw = evaluate_module.without_normalize(model)
        assert [type(m).__name__ for m in raw] == ["Transformer", "Pooling"] and raw.prompts == model.prompts
        texts = ["A man is playing a guitar.", "Stocks fell sharply."]
        unnormalised = raw.encode(texts)
        norms = np.linalg.norm(unnormalised, axis=1)
        assert not np.allclose(norms, 1.0)
        assert np.allclose(unnormalised / norms[:, None], model.encode(texts), atol=1e-5)
        assert evaluate_module.without_normalize(raw) is raw  # nothing to remove

        seen = {}  # task type -> was the encoder's last module a Normalize
        real_wrap = evaluate_module._wrap
        monkeypatch.setattr(
            evaluate_module,
            "_wrap",
            lambda st, *a: seen.setdefault(id(st), type(list(st)[-1]).__name__) and real_wrap(st, *a),
        )
        tasks = ["TinyClassification", "TinySTS"]
        scores = evaluate_module.evaluate(
            str(minilm_dir),
            tasks,
            tmp_path / "out",
            benchmarks_dir=tiny_tasks,
            max_rows=10,
            show_progress_bar=False,
        )
        assert set(scores) == set(tasks) and sorted(seen.values()) == ["Normalize", "Pooling"]
        settings = json.loads((tmp_path / "out" / "evaluation.json").read_text())
        assert settings["classification_embeddings"] == "unnormalized" and settings["max_rows"] == 10
        seen.clear()
        evaluate_module.evaluate(
            str(minilm_dir),
            ["TinyClassification"],
            tmp_path / "normalized",
            benchmarks_dir=tiny_tasks,
            max_rows=10,
            classification_embeddings="normalized",
            show_progress_bar=False,
        )
        assert list(seen.values()) == ["Normalize"]  # mteb's way: the model's own output

    def test_truncate_dim_scores_the_first_dimensions_of_both_encoders(
        self, minilm_dir, tiny_tasks, tmp_path, monkeypatch
    ):
        evaluate_module = importlib.import_module("e5_mistral.evaluation.evaluate")
        widths, norms = [], []
        real_wrap = evaluate_module._wrap

        def wrap(st, *a):
            embedding = st.encode(["x"])
            widths.append(embedding.shape[-1])
            norms.append(float((embedding**2).sum()) ** 0.5)
            return real_wrap(st, *a)

        monkeypatch.setattr(evaluate_module, "_wrap", wrap)
        tasks = ["TinyClassification", "TinySTS"]
        truncated = evaluate_module.evaluate(
            str(minilm_dir),
            tasks,
            tmp_path / "96",
            benchmarks_dir=tiny_tasks,
            max_rows=10,
            truncate_dim=96,
            show_progress_bar=False,
        )
        assert widths == [96, 96]  # the STS encoder and the classification one (before Normalize)
        # the normalised encoder is normalised after the cut, as training scores it (dot products, clustering, pair
        # classification see unit vectors); the classification one stays raw, as the paper classifies
        assert norms[0] == pytest.approx(1.0, abs=1e-5) and norms[1] != pytest.approx(1.0, abs=1e-3)
        assert json.loads((tmp_path / "96" / "evaluation.json").read_text())["truncate_dim"] == 96
        full = evaluate_module.evaluate(
            str(minilm_dir),
            ["TinySTS"],
            tmp_path / "full",
            benchmarks_dir=tiny_tasks,
            max_rows=10,
            show_progress_bar=False,
        )
        assert widths[-1] == 384 and truncated["TinySTS"] != pytest.approx(full["TinySTS"], abs=1e-9)

    @pytest.mark.slow
    def test_two_cpu_processes_give_the_one_process_scores(self, minilm_dir, tiny_tasks, tmp_path):
        evaluate_module = importlib.import_module("e5_mistral.evaluation.evaluate")
        tasks = ["TinySTS", "TinyRetrieval"]  # one pool (classification starts a second, for its raw encoder)
        kwargs = {"benchmarks_dir": tiny_tasks, "max_rows": 10, "show_progress_bar": False}
        one = evaluate_module.evaluate(str(minilm_dir), tasks, tmp_path / "one", **kwargs)
        two = evaluate_module.evaluate(str(minilm_dir), tasks, tmp_path / "two", devices=["cpu", "cpu"], **kwargs)
        assert list(two) == tasks and two == pytest.approx(one, abs=1e-5)

    @pytest.mark.slow
    def test_several_models_one_table(self, minilm_dir, tiny_tasks, tmp_path, capsys):
        out = tmp_path / "out"
        copy = tmp_path / "minilm-copy"
        shutil.copytree(minilm_dir, copy)
        tasks = ["TinySTS", "TinyPairs", "TinyBitext", "TinyClassification", "TinyRetrieval"]
        argv = [
            str(minilm_dir),
            str(copy),
            "--tasks",
            *tasks,
            "--benchmarks-dir",
            str(tiny_tasks),
            "--output",
            str(out),
            "--max-rows",
            "10",
        ]
        assert evaluate_main(argv, prog=PROG) == 0
        summary = json.loads((out / "summary.json").read_text())
        labels = [minilm_dir.resolve().name, "minilm-copy"]
        assert list(summary) == labels and all(list(summary[m]) == tasks for m in labels)
        for task in tasks:
            assert -1.0 <= summary[labels[0]][task] <= 1.0
            assert summary[labels[0]][task] == pytest.approx(summary[labels[1]][task], abs=1e-6)
        assert summary[labels[0]]["TinyBitext"] == pytest.approx(1.0)  # case-only differences are found
        for label in labels:
            assert len(list((out / label).glob("results/*/*/TinyRetrieval.json"))) == 1
        table = capsys.readouterr().out
        assert f"| Task | {labels[0]} | minilm-copy | minilm-copy - {labels[0]} (95 % CI) |" in table
        assert "| **Average** |" in table

    @pytest.mark.parametrize(
        "case, message",
        [
            ("unknown-task", "unknown task 'NoSuchTask'"),
            ("bad-folder", "Nothing matches no task format"),
            ("bad-model", "could not load model"),
            ("too-wide", "--truncate-dim 1000 is larger than the embedding"),
        ],
    )
    def test_bad_input_is_one_line_and_non_zero(self, case, message, tiny_tasks, minilm_dir, tmp_path, capsys):
        model, task = str(minilm_dir), "TinySTS"
        if case == "unknown-task":
            task = "NoSuchTask"
        elif case == "bad-folder":
            task = "Nothing"
        elif case == "bad-model":
            model = str(tmp_path / "not-a-model")
            (tmp_path / "not-a-model").mkdir()
        argv = [model, "--tasks", task, "--benchmarks-dir", str(tiny_tasks), "--output", str(tmp_path / "out")]
        argv += ["--truncate-dim", "1000"] if case == "too-wide" else []
        assert evaluate_main(argv, prog=PROG) == 1
        err = capsys.readouterr().err.strip().splitlines()
        if case == "too-wide":  # the model loaded (its progress bar) before its width was known
            err = [line for line in err if not line.startswith("Loading weights")]
        assert len(err) == 1 and err[0].startswith(f"{PROG}: error:") and message in err[0]
        if case == "bad-model":
            assert "not-a-model" in err[0]

"""Corpus adaptation (`e5-mistral adapt`): every corpus format, stable passage ids and resume, the relabel step on a
planted corpus, the encoder student's training and export, and the demo at a reduced size."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.fake_openai import FakeOpenAIServer
from tests.helpers import one_line, write_jsonl


# A planted corpus: every document about one thing; d0's seed query below asks about d1's subject.
TOPICS = [
    "The apple orchard harvest of red apples happens in autumn when apples are ripe and sweet.",
    "Glaciers carve deep valleys as ice moves slowly downhill over thousands of years.",
    "A violin has four strings tuned in fifths and is played with a bow made of horsehair.",
    "Volcanoes erupt when magma rises through cracks in the crust and releases gas and lava.",
    "Bread dough rises because yeast ferments sugars and releases carbon dioxide bubbles.",
    "Honey bees communicate the location of flowers to the hive through a waggle dance.",
    "Solar panels convert sunlight into electricity using layers of silicon semiconductors.",
    "The chess opening known as the Sicilian defence begins with the pawn move c5.",
    "Coral reefs are built by colonies of tiny animals that secrete calcium carbonate skeletons.",
    "Submarines dive by flooding ballast tanks with seawater and surface by blowing them out.",
    "Penguins huddle together through the Antarctic winter to keep their eggs warm.",
    "Lighthouses guide ships at night with a rotating lamp and a large Fresnel lens.",
]
QUERIES = {  # passage id -> the query the fake LLM writes for it (d0's asks about glaciers: d1 is its best passage)
    "d0@0": "how do glaciers carve valleys over thousands of years",
    "d2@0": "how many strings does a violin have",
    "d3@0": "why do volcanoes erupt magma and lava",
}


def write_corpus(folder, n=len(TOPICS)):
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": TOPICS[i]} for i in range(n)])
    return folder


def _passage(prompt: str) -> str:
    return prompt.split('"""')[1].strip()


def _query_for(passage: str) -> str:
    index = next((i for i, text in enumerate(TOPICS) if text in passage), None)
    return QUERIES.get(f"d{index}@0") or f"what is said about {' '.join(passage.split()[1:])}"


def responder(body: dict) -> str:
    """The fake LLM: step 1 writes a query about a planted subject; the judge finds a document relevant when it
    shares the query's subject word."""
    prompt = body["messages"][-1]["content"]
    if "Does the document satisfy the query" in prompt:
        query = prompt.split("Query: ", 1)[1].split("\n", 1)[0]
        document = prompt.split("Document: ", 1)[1]
        subject = next((w for w in ("glacier", "violin", "volcano", "orchard") if w in query), "apple")
        return json.dumps({"relevant": "yes" if subject in document.lower() else "no"})
    if '"""' not in prompt:  # a probe of the endpoint's structured outputs
        return "{}"
    query = _query_for(_passage(prompt))
    return json.dumps({"task": "Given a question, retrieve passages that answer it", "query": query})


def adapt_argv(server, corpus, output, *extra):
    return [
        str(corpus),
        "--output",
        str(output),
        "--model",
        "fake-llm",
        "--base-url",
        server.base_url,
        "--retry-initial-wait",
        "0.01",
        "--no-progress",
        *extra,
    ]


def run_adapt(*argv):
    from e5_mistral.adaptation.cli import main

    return main(list(argv))


# -- corpus formats ---------------------------------------------------------------------------------------------
def _documents(source, **columns):
    from e5_mistral.adaptation.corpus import CorpusColumns, read_documents

    return [(d.doc_id, d.title, d.text) for d in read_documents(str(source), CorpusColumns(**columns))]


def test_every_corpus_format_reads_the_same_documents(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"_id": f"d{i}", "title": f"t{i}", "text": TOPICS[i]} for i in range(3)]
    expected = [(r["_id"], r["title"], r["text"]) for r in rows]
    beir = write_corpus(tmp_path / "beir", 3)
    write_jsonl(beir / "corpus.jsonl", rows)
    assert _documents(beir) == expected
    assert _documents(beir / "corpus.jsonl") == expected
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    assert _documents(tmp_path / "c.parquet") == expected
    (tmp_path / "c.csv").write_text(
        "_id,title,text\n" + "".join(f'{r["_id"]},{r["title"]},"{r["text"]}"\n' for r in rows), encoding="utf-8"
    )
    assert _documents(tmp_path / "c.csv") == expected
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert _documents(tmp_path / "saved") == expected
    # another schema: columns named by flags
    write_jsonl(tmp_path / "other.jsonl", [{"key": "a", "body": "some text"}])
    assert _documents(tmp_path / "other.jsonl", text="body", doc_id="key") == [("a", "", "some text")]
    # a folder of text files (recursive, ids are relative paths), and a PDF through pypdf
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "a.md").write_text("# Apples\nRed and sweet.", encoding="utf-8")
    (notes / "sub" / "b.txt").write_text("Glaciers move.", encoding="utf-8")
    (notes / "c.pdf").write_bytes(_pdf("Volcanoes erupt lava"))
    (notes / "ignored.bin").write_bytes(b"\x00\x01")
    docs = _documents(notes)
    assert [d[0] for d in docs] == ["a.md", "c.pdf", "sub/b.txt"]
    assert docs[0][2] == "# Apples\nRed and sweet." and "Volcanoes erupt lava" in docs[1][2]


def _pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` (built by hand: the offsets of its cross-reference table are computed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


@pytest.mark.parametrize(
    "make, flags, message",
    [
        (lambda p: write_jsonl(p / "c.jsonl", [{"text": "  "}]) or p / "c.jsonl", {}, "holds no text"),
        (lambda p: write_jsonl(p / "c.jsonl", [{"body": "x"}]) or p / "c.jsonl", {}, "no column 'text' (it has body)"),
        (
            lambda p: write_jsonl(p / "c.jsonl", [{"text": "x"}]) or p / "c.jsonl",
            {"id_column": "key"},
            "no column 'key'",
        ),
        (lambda p: (p / "d").mkdir() or (p / "d" / "x.txt").write_bytes(b"ab\x00cd") and p / "d", {}, "is not text"),
        (lambda p: (p / "x.txt").write_bytes(b"\xff\xfe bad") and p / "x.txt", {}, "is not UTF-8 text"),
        (lambda p: (p / "x.docx").write_bytes(b"PK") and p / "x.docx", {}, "unknown file type .docx"),
        (lambda p: p / "missing.jsonl", {}, "not found"),
        (
            lambda p: write_jsonl(p / "c.jsonl", [{"_id": 1, "text": "a"}, {"_id": 1, "text": "b"}]) or p / "c.jsonl",
            {},
            "document id '1' appears twice",
        ),
    ],
)
def test_bad_corpora_are_one_line_naming_the_file_and_column(tmp_path, capsys, make, flags, message):
    source = make(tmp_path)
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    code = run_adapt(
        str(source),
        "--output",
        str(tmp_path / "out"),
        "--model",
        "m",
        "--no-relabel",
        "--negatives",
        "none",
        "--base-url",
        "http://127.0.0.1:9/v1",
        *extra,
    )
    assert code == 1
    assert message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out" / "journal").exists()  # nothing was sent


def test_long_documents_become_overlapping_windows_with_stable_ids(minilm_dir):
    from transformers import AutoTokenizer

    from e5_mistral.adaptation.corpus import Document, chunk, draw

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    text = " ".join(f"word{i}" for i in range(300))
    passages = chunk([Document("long", "A title", text), Document("short", "", "tiny text")], tokenizer, 64, 8)
    long = [p for p in passages if p.doc_id == "long"]
    assert len(long) > 3 and all(len(tokenizer(p.text)["input_ids"]) <= 64 + 2 for p in long)  # + CLS and SEP
    assert all(p.text.startswith("A title ") for p in long)
    assert long[0].passage_id == "long@0" and all(p.passage_id == f"long@{text.index(p.text[8:])}" for p in long)
    assert long[1].text.split()[2] in long[0].text  # windows overlap
    assert passages[-1].passage_id == "short@0" and passages[-1].text == "tiny text"
    # a drawn passage stays drawn when a document is added: at most the new one comes before it
    first = draw(passages, 3, seed=1)
    grown = chunk([Document("new", "", "another document")], tokenizer, 64, 8) + passages
    assert {p.passage_id for p in first} <= {p.passage_id for p in draw(grown, 4, seed=1)}
    assert [p.passage_id for p in draw(passages, 3, seed=1)] == [p.passage_id for p in first]
    assert [p.passage_id for p in draw(passages, 3, seed=2)] != [p.passage_id for p in first]


# -- the command ------------------------------------------------------------------------------------------------
def test_relabel_picks_a_better_neighbour_and_a_judged_negative_then_resumes(tmp_path, capsys, caplog):
    corpus, out = write_corpus(tmp_path / "corpus"), tmp_path / "out"
    with FakeOpenAIServer(responder=responder) as server:
        argv = adapt_argv(
            server,
            corpus,
            out,
            "--num-examples",
            "12",
            "--judge-model",
            "fake-llm",
            "--judge-base-url",
            server.base_url,
            "--candidates",
            "6",
            "--negative-rank",
            "2",
        )
        assert run_adapt(*argv) == 0
        sent = server.stats.requests
        report = json.loads((out / "report.json").read_text())
        assert report["adaptation"]["queries"]["planned"] == 12 and report["adaptation"]["accepted_queries"] == 12
        assert (report["planned"], report["accepted"], report["rejected"]) == (12, 12, {})
        rows = {r["passage_id"]: r for r in _rows(out)}
        planted = rows["d0@0"]  # the seed (apples) does not answer the glacier query; d1 does, and ranks above it
        assert planted["relabel"] == "relabelled" and planted["positive_passage_id"] == "d1@0"
        assert planted["positive_document"] == TOPICS[1] and planted["user_query"] == QUERIES["d0@0"]
        assert rows["d2@0"]["relabel"] == "seed" and rows["d2@0"]["positive_passage_id"] == "d2@0"
        for row in rows.values():  # a negative the judge found relevant is never taken
            assert row["negative_passage_id"] not in (None, row["positive_passage_id"], row["passage_id"])
            assert (
                row["task"] == "Given a question, retrieve passages that answer it" and row["family"] == "short_long"
            )
        assert report["adaptation"]["relabel"]["decisions"]["relabelled"] >= 1
        # the rows load as every other command reads them, and train as the retrieval family
        from datasets import load_dataset

        loaded = load_dataset(str(out / "dataset"), "short_long", split="train", cache_dir=str(tmp_path / "c"))
        assert len(loaded) == 12 and "positive_passage_id" in loaded.column_names
        assert "Grounded in a corpus" in (out / "dataset" / "README.md").read_text()
        # the round-trip filter takes the output as it is, and the passage ids travel with the kept rows
        from e5_mistral.mining.consistency import main as filter_main

        assert filter_main([str(out), "--output", str(tmp_path / "filtered"), "--top-k", "3"]) == 0
        kept = load_dataset(
            str(tmp_path / "filtered" / "dataset"), "short_long", split="train", cache_dir=str(tmp_path / "c")
        )
        assert 0 < len(kept) <= 12 and set(kept["passage_id"]) <= set(rows)
        filtered_card = (tmp_path / "filtered" / "dataset" / "README.md").read_text()  # the run's report travels on
        assert "Grounded in a corpus" in filtered_card and _card_statistics(filtered_card)[:3] == ["12", "12", "0"]
        # a rerun pays nothing twice
        assert run_adapt(*argv) == 0 and server.stats.requests == sent
        # a changed corpus: only the changed passage's queries and verdicts are asked
        changed = TOPICS[:]
        changed[2] = "A viola has four strings and a violin-like body, tuned a fifth lower than the violin."
        write_jsonl(corpus / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(changed)])
        assert run_adapt(*argv) == 0
        assert "1 passages drawn then have other text now" in caplog.text and "0 are gone" in caplog.text
        new_queries = [r for r in server.stats.log[sent:]]
        assert 1 <= len(new_queries) <= 1 + 6  # one query, and the judge's questions about it
    # someone else's folder is never written into
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert run_adapt(*adapt_argv(server, corpus, tmp_path / "mine", "--no-relabel", "--negatives", "none")) == 1
    assert "not empty and was not written by e5-mistral adapt" in capsys.readouterr().err


def _rows(out):
    import pyarrow.parquet as pq

    return pq.read_table(out / "dataset" / "short_long" / "train-00000-of-00001.parquet").to_pylist()


def test_step_one_rejects_preambles_and_copies(tmp_path):
    corpus, out = write_corpus(tmp_path / "corpus", 4), tmp_path / "out"
    answers = {  # by passage: a preamble, the passage itself, an essay, a query
        0: "Here are two questions: 1. what",
        1: json.dumps({"task": "t", "query": TOPICS[1]}),
        2: json.dumps({"task": "t", "query": "x " * 80}),
        3: json.dumps({"task": "Given a question, retrieve passages", "query": "how do penguins keep warm"}),
    }

    def scripted(body):
        prompt = body["messages"][-1]["content"]
        return answers[next(i for i, text in enumerate(TOPICS) if text in prompt)] if '"""' in prompt else "{}"

    with FakeOpenAIServer(responder=scripted) as server:
        argv = adapt_argv(server, corpus, out, "--num-examples", "4", "--no-relabel", "--negatives", "mined")
        assert run_adapt(*argv, "--response-format", "none", "--candidates", "3", "--negative-rank", "1") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["rejected"] == {"invalid_json": 1, "query_copied_from_passage": 1, "query_too_long": 1}
    assert report["accepted"] == report["adaptation"]["accepted_queries"] == 1
    (row,) = _rows(out)
    assert row["relabel"] == "seed, unjudged" and row["negative_passage_id"] is not None  # mined, unjudged
    assert row["user_query"] == "how do penguins keep warm" and row["passage_id"] == "d3@0"
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejected) == sorted(report["rejected"])
    # the card states the run's own totals, and none of generate's sections that an adapt run has no numbers for
    card = (out / "dataset" / "README.md").read_text()
    queries = report["adaptation"]["queries"]
    assert _card_statistics(card)[:6] == ["4", "1", "3", "0", "0", str(queries["prompt_tokens"])]
    assert queries["prompt_tokens"] > 0 and "Structured outputs: `none`" in card
    assert "Brainstormed tasks" not in card and "brainstorm-then-generate" not in card and "### Acceptance" not in card
    assert "LLM wrote a retrieval task and a query" in card and "Not recorded: each query is asked in" in card


def _card_statistics(card: str) -> list[str]:
    """The cells of a dataset card's statistics row (planned, accepted, rejected, duplicates, failed, tokens...)."""
    lines = card.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| planned |"))
    row = lines[header + 2]  # below the header and its |---| line
    return [cell.strip() for cell in row.strip("|").split("|")]


@pytest.mark.parametrize(
    ("query", "task", "kept"),
    [  # echoes a 0.5B wrote for SciFact's passages, and queries that share only common words with the prompt
        ("Brainstorm a text retrieval task for which this passage is a relevant result", None, False),
        ("brainstorm text retrieval task for PD 0332991 and antitumor activity", None, False),
        ("Given a web search query, retrieve relevant passages that answer the query", None, False),
        ("write one search query of that task about MDA5", "Find tweets on a story", False),
        ("What is the language of the Hittites?", None, True),
        ("which kind of query do web search engines rank first", None, True),
        ("Does a single sentence of text describe the retrieval of memories?", None, True),
    ],
)
def test_step_one_rejects_a_query_that_repeats_the_prompt(query, task, kept):
    from e5_mistral.adaptation.corpus import Passage
    from e5_mistral.adaptation.queries import parse_query
    from e5_mistral.llm.answers import Rejected

    content = json.dumps({"query": query} if task else {"task": "Given a claim, retrieve abstracts", "query": query})
    record = {"status": "ok", "finish_reason": "stop", "content": content}
    passage = Passage("d@0", "d", "Penguins keep warm with dense feathers and a layer of fat.")
    if kept:
        assert parse_query(record, passage, task)[1] == query
    else:
        with pytest.raises(Rejected, match="query_repeats_prompt"):
            parse_query(record, passage, task)


def test_a_named_task_is_what_every_query_is_written_for(tmp_path):
    """--task: the user says what the corpus is searched for (Promptagator's point); the LLM writes only queries,
    and every row carries that task, the instruction the model is trained and scored with."""
    corpus, out = write_corpus(tmp_path / "corpus", 4), tmp_path / "out"
    task = "Given a news headline, retrieve tweets about the same story"
    bodies = []

    def scripted(body):
        prompt = body["messages"][-1]["content"]
        if '"""' not in prompt:
            return "{}"
        bodies.append(body)
        passage = _passage(prompt)
        if TOPICS[3] in passage:  # a small LLM echoes the instruction as the query: rejected
            return json.dumps({"query": "Given a news headline: " + _query_for(passage)})
        return json.dumps({"query": _query_for(passage)})

    with FakeOpenAIServer(responder=scripted, structured="openai") as server:  # enforces the schema sent
        argv = adapt_argv(server, corpus, out, "--num-examples", "4", "--no-relabel", "--negatives", "none")
        assert run_adapt(*argv, "--response-format", "json_schema", "--task", task) == 0
    rows = _rows(out)
    assert len(rows) == 3 and {row["task"] for row in rows} == {task}
    assert json.loads((out / "report.json").read_text())["rejected"] == {"query_repeats_task": 1}
    card = (out / "dataset" / "README.md").read_text()
    assert "Structured outputs: `json_schema`" in card and _card_statistics(card)[:3] == ["4", "3", "1"]
    assert "LLM wrote a query of the named task" in card
    assert all(f'"{task}"' in body["messages"][-1]["content"] for body in bodies) and len(bodies) == 4
    schema = bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["query"] and list(schema["properties"]) == ["query"]
    from e5_mistral.adaptation.queries import prompt_version

    assert rows[0]["template_version"] == prompt_version(task) != prompt_version(None)
    assert json.loads((out / "adapt.json").read_text())["task"] == task


def test_the_demo_passes_the_task_on(tmp_path, monkeypatch):
    from e5_mistral.adaptation.quickstart import AdaptQuickstartArguments, generate
    from e5_mistral.quickstart import Step

    commands = []
    monkeypatch.setattr(Step, "command", lambda self, name, argv, env=None: commands.append(argv))
    task = "Given a news headline, retrieve tweets about the same story"
    args = AdaptQuickstartArguments(
        corpus=str(write_corpus(tmp_path / "c", 3)), base_url="http://127.0.0.1:9", task=task
    )
    generate(args, tmp_path / "out", Step({}, tmp_path))
    ((*_, adapt, corpus),) = [argv[: argv.index("adapt") + 2] for argv in commands]
    (argv,) = commands
    assert argv[argv.index("--task") + 1] == task and corpus == args.corpus


def test_an_empty_task_is_refused(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", 3)
    assert run_adapt(str(corpus), "--output", str(tmp_path / "o"), "--model", "m", "--task", " ") != 0
    assert "--task is empty" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_the_query_prompt_brings_no_domain_of_its_own():
    """A small generator copies the prompt's example: a domain named there leaks into queries on any corpus
    (an example about medical findings made it ask tweets for "medical findings")."""
    from e5_mistral.adaptation.corpus import Passage
    from e5_mistral.adaptation.queries import query_request

    passage = Passage("recipes.txt@0", "recipes.txt", "Knead the dough for ten minutes, then let it rise overnight.")
    domains = ("medic", "abstract", "scien", "claim", "legal", "financ", "patient", "disease", "stock", "product")
    for seed in range(5):  # the query's slots vary with the seed
        body = query_request(passage, 0, seed, {"model": "m"}).body()
        prompt = body["messages"][-1]["content"].replace(passage.text, "").lower()
        assert [word for word in domains if word in prompt] == []


def test_needs_a_judge_for_relabelling_or_says_so(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", 3)
    assert run_adapt(str(corpus), "--output", str(tmp_path / "o"), "--model", "m") == 1
    assert "needs --judge-model" in one_line(capsys.readouterr().err)


# -- the encoder student, the demo ------------------------------------------------------------------------------
def test_the_demo_adapts_minilm_and_scores_it_before_and_after(tmp_path, minilm_dir):
    from tests.helpers import sentence

    corpus = tmp_path / "Planted"
    texts = TOPICS + [sentence(i) for i in range(36)]  # 48 rows: three steps of the recipe's batch of 16
    write_jsonl(corpus / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(texts)])
    write_jsonl(
        corpus / "queries.jsonl", [{"_id": f"q{i}", "text": f"tell me about {TOPICS[i].split()[1]}"} for i in range(6)]
    )
    (corpus / "qrels").mkdir()
    (corpus / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6))
    )
    out = tmp_path / "demo"
    with FakeOpenAIServer(responder=responder) as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "e5_mistral.cli",
                "quickstart-adapt",
                str(corpus),
                "--output-dir",
                str(out),
                "--num-examples",
                "48",
                "--base-url",
                server.base_url,
                "--generator",
                "fake-llm",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "model-minilm" / "e5_mistral_config.json").read_text())
    assert config["pooling"] == "mean" and config["instructed_queries"] is False and config["lora"] is None
    st = json.loads((out / "export-minilm" / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": "", "document": ""}  # trained on bare queries: nothing is prefixed
    modules = json.loads((out / "export-minilm" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "export-minilm" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    assert "without instructions" in (out / "export-minilm" / "README.md").read_text()
    assert (
        "| Planted (6 items) |" in result.stdout
        and "all-MiniLM-L6-v2 adapted - all-MiniLM-L6-v2 (95 % CI)" in result.stdout
    )
    assert "--no-relabel --negatives none" in result.stdout  # the generate step's command, to rerun it alone
    from sentence_transformers import SentenceTransformer

    before, after = SentenceTransformer(str(minilm_dir)), SentenceTransformer(str(out / "export-minilm"))
    texts = ["glaciers carve valleys"]
    assert abs(float((before.encode(texts) * after.encode(texts)).sum()) - 1) > 1e-4  # the weights moved
    # WiSE-FT: half of the fine-tuning kept, weight by weight
    import torch
    from safetensors.torch import load_file

    from e5_mistral.export.cli import main as export_main

    assert export_main([str(out / "model-minilm"), str(tmp_path / "half"), "--interpolate", "0.5"]) == 0
    base, trained, half = (
        load_file(str(p / "model.safetensors")) for p in (minilm_dir, out / "export-minilm", tmp_path / "half")
    )
    name = next(k for k in trained if k.endswith("layer.0.attention.self.query.weight"))
    assert not torch.equal(trained[name], base[name])
    assert torch.allclose(half[name], (base[name] + trained[name]) / 2, atol=1e-6)
    assert (
        "interpolated with the base model: base + 0.5 x (trained - base)"
        in (tmp_path / "half" / "README.md").read_text()
    )
    # rows written without a negative are mined as any other rows
    from e5_mistral.mining.cli import main as mine_main

    assert (
        mine_main([str(out / "data"), "--output", str(tmp_path / "mined"), "--range-max", "5", "--no-progress"]) == 0
    )
    mined = json.loads((tmp_path / "mined" / "report.json").read_text())["configs"]
    assert mined["short_long"]["rows"] == 48 and mined["short_long"]["mined_negatives"] > 0


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("q300-smollm2-256", {"max_seq_length": 256}),
        ("q200-smollm2", {"max_steps": 48}),
        ("q300-smollm2-35-steps", {"max_steps": 35}),
        ("q300-smollm2-140-steps", {"max_steps": 140}),
        ("q600-smollm2-current-prompt", {"max_steps": 120}),
    ],
)
def test_the_adapt_study_recipe_cells_change_only_their_key(tmp_path, name, change):
    import yaml

    from benchmarks import adapt_study
    from e5_mistral.adaptation.quickstart import STUDENTS
    from e5_mistral.resources import resource

    cells = {c.name: c for c in adapt_study.CELLS}
    assert adapt_study.student_for(cells["q300-smollm2"], tmp_path) == STUDENTS["smollm2"]
    student = adapt_study.student_for(cells[name], tmp_path)
    stock = yaml.safe_load(resource("recipes/smollm2-135m/adapt.yaml").read_text())
    changed = yaml.safe_load(resource(student.recipe).read_text())
    assert {k: v for k, v in changed.items() if stock[k] != v} == change
    assert student.instructions == "paper" and student.name == "smollm2"


def test_the_adapt_study_table_shows_a_screen_with_one_seed():
    from benchmarks import adapt_study

    scores = {  # one seed scored: the row shows it and leaves the other seed open
        adapt_study.ZERO_SHOT: {"ndcg_at_10": 0.645},
        "q300-smollm2-256/42": {"ndcg_at_10": 0.51, "minus_zero_shot": None},
    }
    (row,) = [line for line in adapt_study.table(scores).splitlines() if line.startswith("| q300-smollm2-256 ")]
    assert "| 51.00, — | 51.00 | -13.50 | n/a, — |" in row


def test_the_adapt_study_judged_cell_drops_only_the_negatives_the_judge_finds_relevant():
    from benchmarks import adapt_study

    cells = {c.name: c for c in adapt_study.CELLS}
    chosen = ("q300", "q300-no-negative", "q300-judged-negative", "q300-current-prompt", "q600-smollm2-current-prompt")
    assert {name: cells[name].data_name for name in chosen} == {
        "q300": "300",
        "q300-no-negative": "300-no-negative",
        "q300-judged-negative": "300-judged-negative",
        "q300-current-prompt": "scifact-600-300",  # the second run's rows never share a folder with the first's
        "q600-smollm2-current-prompt": "scifact-600-600",
    }

    rows = [{"user_query": q, "hard_negative_document": f"doc {q}", "negative_passage_id": f"{q}@0"} for q in "abc"]
    kept = adapt_study.without_relevant_negatives(rows, [True, False, None])  # relevant, not relevant, unanswered
    assert [r["negative_passage_id"] for r in kept] == [None, "b@0", "c@0"]
    assert kept[0]["hard_negative_document"] is None and kept[0]["user_query"] == "a"
    with pytest.raises(ValueError):
        adapt_study.without_relevant_negatives(rows, [True])


def test_an_adapt_study_cell_trains_on_the_first_passages_drawn_in_its_own_run(tmp_path, monkeypatch):
    """Two runs over one corpus draw the same passages in another order here: a cell's share is its run's first N
    drawn, and the runs' shares never meet in one cached folder."""
    import pyarrow.parquet as pq

    from benchmarks import adapt_study
    from e5_mistral.adaptation.run import EXTRA_COLUMNS
    from e5_mistral.hub.writer import write_hub_folder

    kept = pq.read_table(adapt_study.ADAPT_DATA / adapt_study.FIRST_RUN / "dataset" / "short_long")
    rows = kept.to_pylist()[:4]
    ids = [r["passage_id"] for r in rows]
    for run, order in ((adapt_study.FIRST_RUN, ids), (adapt_study.CURRENT_RUN, ids[::-1])):
        write_hub_folder(rows, tmp_path / "runs" / run / "dataset", {"adaptation": None}, extra_columns=EXTRA_COLUMNS)
        lines = [json.dumps({"passage_id": i}) for i in order]
        (tmp_path / "runs" / run / "passages.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(adapt_study, "ADAPT_DATA", tmp_path / "runs")

    def share(cell):
        return [r["passage_id"] for r in pq.read_table(adapt_study.subset(cell, tmp_path / "out") / "all").to_pylist()]

    first = adapt_study.Cell("a", "", 2)
    current = adapt_study.Cell("b", "", 2, run=adapt_study.CURRENT_RUN)
    assert sorted(share(first)) == sorted(ids[:2])
    assert sorted(share(current)) == sorted(ids[2:])
    assert sorted(share(first)) == sorted(ids[:2])  # the first run's cached share is not the second's


def test_the_adapt_study_scores_the_zero_shot_model_again_where_its_predictions_are_missing(tmp_path, monkeypatch):
    """scores.json keeps the zero-shot nDCG@10, not its per-query predictions: in a fresh --output the paired
    difference must not come out empty."""
    from benchmarks import adapt_study
    from e5_mistral.adaptation.quickstart import STUDENTS
    from e5_mistral.evaluation import paired

    evaluate_module = importlib.import_module("e5_mistral.evaluation.evaluate")

    evaluated = []

    def fake_evaluate(path, student, folder, benchmarks):
        evaluated.append(folder.name)
        (folder / "predictions").mkdir(parents=True, exist_ok=True)
        return 0.7

    def fake_difference(task, model, baseline):
        both = model.is_dir() and baseline.is_dir()
        return SimpleNamespace(to_dict=lambda: {"difference": 0.055}) if both else None

    monkeypatch.setattr(adapt_study, "evaluate", fake_evaluate)
    monkeypatch.setattr(adapt_study, "SCORES", tmp_path / "scores.json")
    monkeypatch.setattr(evaluate_module, "resolve_tasks", lambda names, benchmarks: ["SciFact"])
    monkeypatch.setattr(paired, "paired_difference", fake_difference)
    out, scores = tmp_path / "out", {adapt_study.ZERO_SHOT: {"ndcg_at_10": 0.645}}

    assert adapt_study.to_score("q300/42", out, scores)
    adapt_study.score(tmp_path / "model", "q300/42", STUDENTS["minilm"], tmp_path, out, scores)
    assert evaluated == ["42", adapt_study.ZERO_SHOT]
    assert scores["q300/42"]["minus_zero_shot"] == {"difference": 0.055}
    assert json.loads((tmp_path / "scores.json").read_text())["q300/42"]["ndcg_at_10"] == 0.7
    assert not adapt_study.to_score("q300/42", out, scores)

    # a score kept without its difference gets it from its predictions, without scoring the model again
    scores["q300/7"] = {"ndcg_at_10": 0.66, "minus_zero_shot": None}
    assert not adapt_study.to_score("q300/7", out, scores)  # no predictions here: nothing to compute it from
    (out / "eval" / "q300" / "7" / "predictions").mkdir(parents=True)
    assert adapt_study.to_score("q300/7", out, scores)
    adapt_study.score(tmp_path / "model", "q300/7", STUDENTS["minilm"], tmp_path, out, scores)
    assert evaluated == ["42", adapt_study.ZERO_SHOT] and scores["q300/7"]["ndcg_at_10"] == 0.66
    assert scores["q300/7"]["minus_zero_shot"] == {"difference": 0.055}

    (out / "eval" / adapt_study.ZERO_SHOT / "predictions").rmdir()
    monkeypatch.setattr(adapt_study, "zero_shot_predictions", lambda benchmarks, out: out / "nowhere")
    scores.pop("q300/7")
    with pytest.raises(RuntimeError, match="no paired difference for q300/7"):
        adapt_study.score(tmp_path / "model", "q300/7", STUDENTS["minilm"], tmp_path, out, scores)

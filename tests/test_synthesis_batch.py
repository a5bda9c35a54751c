"""The Batch API backend against a fake Files/Batches server on 127.0.0.1, and the vllm run-batch import."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from e5_mistral.llm.batch import (
    BatchBackend,
    import_results,
    split_batch_lines,
    write_batch_files,
)
from e5_mistral.llm.journal import Journal, Request
from tests.fake_openai_batch import FakeBatchServer


API_KEY = "sk-test-DO-NOT-STORE-123"


def make_requests(n: int, size: int = 10) -> list[Request]:
    return [
        Request(
            f"req-{i:03d}",
            "example",
            "short_long",
            ({"role": "user", "content": f"prompt {i} " + "x" * size},),
            {"model": "fake-model", "temperature": 1.0, "max_tokens": 64},
        )
        for i in range(n)
    ]


def echo(body: dict) -> str:
    return json.dumps({"echo": body["messages"][0]["content"][:10]})


@pytest.fixture
def batch_server():
    with FakeBatchServer(responder=echo, api_key=API_KEY) as server:
        yield server


def backend(server, tmp_path, **kwargs) -> BatchBackend:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    return BatchBackend(client, tmp_path, poll_interval=0.01, **kwargs)


def run(backend_: BatchBackend, requests, tmp_path) -> dict:
    async def go(journal):
        try:
            await backend_.run(requests, journal)
        finally:
            await backend_.client.close()

    with Journal(tmp_path / "journal") as journal:
        asyncio.run(go(journal))
        return journal.latest()


class TestBatchFiles:
    def test_split_at_line_limit(self, tmp_path):
        files = write_batch_files(make_requests(7), tmp_path, max_lines=3)
        assert [len(ids) for _, ids in files] == [3, 3, 1]
        assert [p.name for p, _ in files] == ["input-0000.jsonl", "input-0001.jsonl", "input-0002.jsonl"]
        lines = [json.loads(line) for p, _ in files for line in p.read_text().splitlines()]
        assert [line["custom_id"] for line in lines] == [f"req-{i:03d}" for i in range(7)]
        first = lines[0]
        assert first["method"] == "POST" and first["url"] == "/v1/chat/completions"
        assert first["body"] == make_requests(1)[0].body()

    def test_split_at_byte_limit(self, tmp_path):
        requests = make_requests(6, size=100)
        line_bytes = [len(line) for _, line in split_batch_lines(requests)[0]]
        assert len(set(line_bytes)) == 1  # equal-sized lines make the expected split exact
        limit = 2 * line_bytes[0] + line_bytes[0] // 2  # room for two lines, not three
        files = write_batch_files(requests, tmp_path, max_bytes=limit)
        assert [len(ids) for _, ids in files] == [2, 2, 2]
        assert all(p.stat().st_size == 2 * line_bytes[0] <= limit for p, _ in files)

    def test_both_limits_apply_together(self, tmp_path):
        requests = make_requests(5, size=100)
        one = len(split_batch_lines(requests)[0][0][1])
        chunks = split_batch_lines(requests, max_lines=2, max_bytes=3 * one)
        assert [len(c) for c in chunks] == [2, 2, 1]
        chunks = split_batch_lines(requests, max_lines=4, max_bytes=one)
        assert [len(c) for c in chunks] == [1, 1, 1, 1, 1]

    def test_line_over_byte_limit_names_the_request(self):
        with pytest.raises(ValueError, match="req-000 is .* bytes"):
            split_batch_lines(make_requests(1, size=500), max_bytes=100)

    def test_batch_answers_are_priced_at_half(self):
        from e5_mistral.llm.cost import load_price_table, record_cost

        prices = load_price_table('{"m": {"input": 1.0, "output": 2.0}}')
        online = {"model": "m", "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}, "source": "online"}
        assert record_cost(online, prices) == pytest.approx(0.003)
        assert record_cost({**online, "source": "batch"}, prices) == pytest.approx(0.0015)  # what the Batch API bills


class TestBatchRoundTrip:
    def test_a_kill_right_after_create_is_adopted_by_the_rerun_not_paid_twice(
        self, batch_server, tmp_path, monkeypatch
    ):
        requests = make_requests(3)
        real_save = BatchBackend.save_state

        def killed_after_create(self, state):
            if any(entry["batch_id"] for entry in state["batches"]):
                raise KeyboardInterrupt  # the process dies before the batch id reaches the state file
            real_save(self, state)

        monkeypatch.setattr(BatchBackend, "save_state", killed_after_create)
        with pytest.raises(KeyboardInterrupt):
            run(backend(batch_server, tmp_path), requests, tmp_path)
        assert len(batch_server.batches) == 1
        monkeypatch.setattr(BatchBackend, "save_state", real_save)
        latest = run(backend(batch_server, tmp_path), requests, tmp_path)
        assert len(batch_server.batches) == 1  # adopted by its metadata, none created
        assert {rec["status"] for rec in latest.values()} == {"ok"} and len(latest) == 3

    def test_a_corrupt_output_line_fails_one_request_and_the_rest_is_collected(self, batch_server, tmp_path):
        requests = make_requests(4)
        batch_server.corrupt_ids = {"req-002"}
        latest = run(backend(batch_server, tmp_path, max_lines=10), requests, tmp_path)
        assert {rid for rid, rec in latest.items() if rec["status"] == "ok"} == {"req-000", "req-001", "req-003"}
        assert "is not a batch result line" in latest["req-002"]["error"]
        state = json.loads((tmp_path / "batch" / "state.json").read_text())
        assert all(entry["collected"] for entry in state["batches"])
        # the next run sends that one request alone, and its answer (whole this time) is collected
        latest = run(backend(batch_server, tmp_path, max_lines=10), requests, tmp_path)
        assert batch_server.received_custom_ids == [[f"req-{i:03d}" for i in range(4)], ["req-002"]]
        assert latest["req-002"]["status"] == "ok"

    def test_round_trip_then_resubmit_only_failures(self, batch_server, tmp_path):
        requests = make_requests(6)
        batch_server.fail_ids = {"req-001", "req-004"}
        latest = run(backend(batch_server, tmp_path, max_lines=4), requests, tmp_path)

        assert batch_server.received_custom_ids == [[f"req-{i:03d}" for i in range(4)], ["req-004", "req-005"]]
        assert set(latest) == {r.request_id for r in requests}  # one record per request
        ok = {rid for rid, rec in latest.items() if rec["status"] == "ok"}
        assert ok == {"req-000", "req-002", "req-003", "req-005"}
        for rid in ok:  # joined on custom_id although the server answers in reverse order
            prompt = requests[int(rid[-3:])].messages[0]["content"]
            assert json.loads(latest[rid]["content"]) == {"echo": prompt[:10]}
            assert latest[rid]["source"] == "batch" and latest[rid]["finish_reason"] == "stop"
            assert latest[rid]["usage"]["completion_tokens"] > 0
        assert latest["req-001"]["status"] == "failed" and "HTTP 500: scripted failure" in latest["req-001"]["error"]

        state = json.loads((tmp_path / "batch" / "state.json").read_text())
        assert [b["status"] for b in state["batches"]] == ["completed", "completed"]
        assert all(b["collected"] for b in state["batches"])

        # the re-run writes a new file with only the failed requests
        batch_server.fail_ids = set()
        latest = run(backend(batch_server, tmp_path, max_lines=4), requests, tmp_path)
        assert batch_server.received_custom_ids[2:] == [["req-001", "req-004"]]
        assert all(rec["status"] == "ok" for rec in latest.values())
        assert (tmp_path / "batch" / "input-001-0000.jsonl").read_text().count("\n") == 2

        # nothing left: a third run submits nothing
        run(backend(batch_server, tmp_path), requests, tmp_path)
        assert len(batch_server.received_custom_ids) == 3

    def test_no_wait_returns_then_later_run_collects(self, batch_server, tmp_path):
        batch_server.polls_to_complete = 2
        requests = make_requests(3)
        first = backend(batch_server, tmp_path, wait=False)
        latest = run(first, requests, tmp_path)
        assert latest == {} and first.running == 1
        state = json.loads((tmp_path / "batch" / "state.json").read_text())
        assert [(b["batch_id"], b["status"], b["collected"]) for b in state["batches"]] == [
            ("batch_0000", "in_progress", False)
        ]
        assert state["batches"][0]["custom_ids"] == ["req-000", "req-001", "req-002"]

        second = backend(batch_server, tmp_path, wait=True)
        latest = run(second, requests, tmp_path)
        assert len(batch_server.received_custom_ids) == 1  # resumed polling, did not resubmit
        assert len([f for f in batch_server.files.values() if f["purpose"] == "batch"]) == 1
        assert second.running == 0
        assert sorted(rid for rid, rec in latest.items() if rec["status"] == "ok") == ["req-000", "req-001", "req-002"]

    def test_batches_of_another_stage_are_left_for_their_own_call(self, batch_server, tmp_path):
        brainstorms, examples = make_requests(4)[:2], make_requests(4)[2:]
        batch_server.polls_to_complete = 1
        run(backend(batch_server, tmp_path, wait=False), brainstorms, tmp_path)  # batch_0000 keeps running
        latest = run(backend(batch_server, tmp_path), examples, tmp_path)
        assert sorted(latest) == ["req-002", "req-003"]  # only the examples' batch was collected
        state = json.loads((tmp_path / "batch" / "state.json").read_text())
        assert [(b["batch_id"], b["collected"]) for b in state["batches"]] == [
            ("batch_0000", False),
            ("batch_0001", True),
        ]
        latest = run(backend(batch_server, tmp_path), brainstorms, tmp_path)
        assert all(rec["status"] == "ok" for rec in latest.values()) and len(latest) == 4
        assert len(batch_server.received_custom_ids) == 2  # nothing submitted twice

    def test_answers_downloaded_for_unknown_requests_are_reused(self, batch_server, tmp_path):
        requests = make_requests(3)
        batch_server.polls_to_complete = 1
        run(backend(batch_server, tmp_path, wait=False), requests, tmp_path)  # submitted with all three
        latest = run(backend(batch_server, tmp_path), requests[:1], tmp_path)  # the plan shrank: collects req-000 only
        assert sorted(latest) == ["req-000"]
        latest = run(backend(batch_server, tmp_path), requests, tmp_path)  # the others come from the saved output
        assert sorted(rid for rid, rec in latest.items() if rec["status"] == "ok") == ["req-000", "req-001", "req-002"]
        assert len(batch_server.received_custom_ids) == 1

    def test_expired_and_unanswered_lines_are_failures(self, batch_server, tmp_path):
        batch_server.expire_ids = {"req-002"}
        batch_server.drop_ids = {"req-003"}
        latest = run(backend(batch_server, tmp_path), make_requests(4), tmp_path)
        assert [latest[f"req-{i:03d}"]["status"] for i in range(4)] == ["ok", "ok", "failed", "failed"]
        assert "batch_expired" in latest["req-002"]["error"]
        assert "ended 'expired' without an answer" in latest["req-003"]["error"]
        # the downloaded files are kept beside the state
        assert sorted(p.name for p in (tmp_path / "batch").glob("*-batch_0000.jsonl")) == [
            "error-batch_0000.jsonl",
            "output-batch_0000.jsonl",
        ]

    def test_api_key_is_never_written(self, batch_server, tmp_path):
        run(backend(batch_server, tmp_path), make_requests(2), tmp_path)
        assert f"Bearer {API_KEY}" in batch_server.auth_headers  # the key was used...
        written = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert sorted(p.name.split("-")[0] for p in written) == ["input", "journal", "output", "state.json"]
        assert not any(API_KEY in p.read_text() for p in written)  # ...and stored nowhere

    def test_corrupt_state_is_a_clear_error(self, batch_server, tmp_path):
        (tmp_path / "batch").mkdir()
        (tmp_path / "batch" / "state.json").write_text("{not json")
        with pytest.raises(ValueError, match="state.json is not valid JSON"):
            run(backend(batch_server, tmp_path), make_requests(1), tmp_path)


class TestImportResults:
    def vllm_line(self, custom_id, content=None, status=200, error=None):
        body = {
            "id": "cmpl-x",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length" if content == "cut" else "stop",
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
        if status != 200:
            body = {"object": "error", "message": error, "code": status}
        return json.dumps(
            {
                "id": f"vllm-{custom_id}",
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": f"vllm-batch-{custom_id}", "body": body},
                "error": None if status == 200 else error,
            }
        )

    def test_import_vllm_output(self, tmp_path):
        requests = make_requests(5)
        lines = [
            self.vllm_line("req-003", '{"a": "3"}'),
            self.vllm_line("req-000", '{"a": "0"}'),
            self.vllm_line("req-001", status=400, error="maximum context length exceeded"),
            self.vllm_line("req-002", "cut"),
            self.vllm_line("someone-else", "{}"),
        ]
        path = tmp_path / "results.jsonl"
        path.write_text("\n".join(lines) + "\n")
        with Journal(tmp_path / "journal") as journal:
            counts = import_results(path, requests, journal)
            latest = journal.latest()
        assert counts == {"ok": 3, "failed": 1, "unknown": 1, "already_ok": 0, "missing": 1}
        assert sorted(latest) == ["req-000", "req-001", "req-002", "req-003"]  # req-004 stays unplanned
        assert latest["req-003"]["content"] == '{"a": "3"}'
        assert latest["req-003"]["usage"] == {"prompt_tokens": 11, "completion_tokens": 7}
        assert latest["req-002"]["finish_reason"] == "length"
        assert latest["req-001"]["status"] == "failed" and "maximum context length" in latest["req-001"]["error"]

        # importing again adds nothing for requests already ok
        with Journal(tmp_path / "journal") as journal:
            again = import_results(path, requests, journal)
        assert again["already_ok"] == 3 and again["ok"] == 0

    def test_import_errors_name_file_and_line(self, tmp_path):
        path = tmp_path / "results.jsonl"
        path.write_text(self.vllm_line("req-000", "{}") + "\nnot json\n" + self.vllm_line("req-001", "{}") + "\n")
        with Journal(tmp_path / "journal") as journal, pytest.raises(ValueError, match=r"results.jsonl: line 2"):
            import_results(path, make_requests(2), journal)
        with Journal(tmp_path / "journal") as journal, pytest.raises(FileNotFoundError, match="missing.jsonl"):
            import_results(tmp_path / "missing.jsonl", make_requests(2), journal)

    def test_unfinished_last_line_is_skipped(self, tmp_path):
        path = tmp_path / "results.jsonl"
        path.write_text(self.vllm_line("req-000", "{}") + "\n" + self.vllm_line("req-001", "{}")[:40])
        with Journal(tmp_path / "journal") as journal:
            counts = import_results(path, make_requests(2), journal)
        assert counts["ok"] == 1 and counts["missing"] == 1


class TestWithSynthesisRun:
    def test_generate_through_batch_backend_with_no_wait(self, tmp_path):
        from e5_mistral.synthesis.config import SynthesisArguments
        from e5_mistral.synthesis.runner import SynthesisRun

        count = iter(range(10**6))

        def responder(body: dict) -> str:
            n = next(count)
            if body["messages"][0]["content"].startswith("Brainstorm"):
                return json.dumps([f"Retrieve documents for need {n}-{i}." for i in range(20)])
            return json.dumps(
                {
                    "user_query": f"query {n}",
                    "positive_document": f"answer to {n}",
                    "hard_negative_document": f"not the answer to {n}",
                }
            )

        # the runner calls the backend once per brainstorm re-ask round (4), each polling once: 5 keeps it running
        with FakeBatchServer(responder=responder, polls_to_complete=5) as server:
            args = dict(
                model="fake",
                base_url=server.base_url,
                output=str(tmp_path),
                num_examples=6,
                families=["short_long"],
                languages=["English"],
                backend="batch",
                batch_poll_interval=0.01,
                no_progress=True,
            )
            first = SynthesisRun(SynthesisArguments(**args, batch_no_wait=True)).run(progress=False)
            assert first.report["accepted"] == 0 and len(server.received_custom_ids) == 1  # brainstorm submitted
            state = json.loads((tmp_path / "batch" / "state.json").read_text())
            assert [(b["status"], b["collected"]) for b in state["batches"]] == [("in_progress", False)]
            final = SynthesisRun(SynthesisArguments(**args)).run(progress=False)  # collects, submits examples, waits
        assert final.report["accepted"] == 6
        assert [len(ids) for ids in server.received_custom_ids] == [1, 6]
        assert len(final.rows) == 6 and all(row["user_query"].startswith("query ") for row in final.rows)

"""The fake OpenAI server plus the Files and Batches endpoints, enough for the Batch API round trip.

    POST /v1/files (multipart)      GET /v1/files/{id}      GET /v1/files/{id}/content
    POST /v1/batches                GET /v1/batches/{id}

A batch stays ``in_progress`` for ``polls_to_complete`` retrieves, then "runs": every input line is answered
with the responder, except custom_ids in ``fail_ids`` (an HTTP 500 line in the error file), ``expire_ids``
(a ``batch_expired`` line in the error file; the batch ends ``expired``) and ``drop_ids`` (no line at all).
Output lines are written in reverse input order, since the real API does not keep the order.
"""

from __future__ import annotations

import json
import time
from email.parser import BytesParser
from email.policy import HTTP

from tests.fake_openai import FakeOpenAIServer, prompt_hash


class FakeBatchServer(FakeOpenAIServer):
    def __init__(self, *args, polls_to_complete: int = 0, **kwargs):
        self.polls_to_complete = polls_to_complete
        self.fail_ids: set[str] = set()
        self.expire_ids: set[str] = set()
        self.drop_ids: set[str] = set()
        self.corrupt_ids: set[str] = set()  # their output line is cut mid-JSON (newline kept)
        self.files: dict[str, dict] = {}  # id -> filename, purpose, data (bytes)
        self.batches: dict[str, dict] = {}  # id -> the Batch object served, plus "_polls"
        self.received_custom_ids: list[list[str]] = []  # per created batch, in its file's order
        self.auth_headers: list[str] = []  # what clients sent, to check keys are not stored elsewhere
        super().__init__(*args, **kwargs)

    # -- files and batches ----------------------------------------------------------------------------
    def _new_file(self, filename: str, purpose: str, data: bytes) -> dict:
        file_id = f"file-{len(self.files):04d}"
        self.files[file_id] = {"filename": filename, "purpose": purpose, "data": data, "created_at": int(time.time())}
        return self._file_object(file_id)

    def _file_object(self, file_id: str) -> dict:
        f = self.files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(f["data"]),
            "created_at": f["created_at"],
            "filename": f["filename"],
            "purpose": f["purpose"],
            "status": "processed",
        }

    def _create_batch(self, body: dict) -> dict:
        data = self.files[body["input_file_id"]]["data"]
        lines = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        batch_id = f"batch_{len(self.batches):04d}"
        self.received_custom_ids.append([line["custom_id"] for line in lines])
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "status": "validating",
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
            "output_file_id": None,
            "error_file_id": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_polls": 0,
            "_lines": lines,
        }
        return self._batch_object(batch_id)

    def _batch_object(self, batch_id: str) -> dict:
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}

    def _retrieve_batch(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        batch["_polls"] += 1
        if batch["status"] in ("validating", "in_progress"):
            if batch["_polls"] > self.polls_to_complete:
                self._finish(batch)
            else:
                batch["status"] = "in_progress"
        return self._batch_object(batch_id)

    def _finish(self, batch: dict) -> None:
        output, errors = [], []
        for n, line in enumerate(batch["_lines"]):
            cid = line["custom_id"]
            if cid in self.drop_ids:
                continue
            if cid in self.expire_ids:
                errors.append(
                    {
                        "id": f"batch_req_{n}",
                        "custom_id": cid,
                        "response": None,
                        "error": {"code": "batch_expired", "message": "not executed before the window expired"},
                    }
                )
            elif cid in self.fail_ids:
                errors.append(
                    {
                        "id": f"batch_req_{n}",
                        "custom_id": cid,
                        "error": None,
                        "response": {
                            "status_code": 500,
                            "request_id": f"req_{n}",
                            "body": {"error": {"message": "scripted failure", "type": "server_error"}},
                        },
                    }
                )
            else:
                self.stats.ok_by_prompt[prompt_hash(line["body"])] += 1
                output.append(
                    {
                        "id": f"batch_req_{n}",
                        "custom_id": cid,
                        "error": None,
                        "response": {
                            "status_code": 200,
                            "request_id": f"req_{n}",
                            "body": self._completion(line["body"], "ok"),
                        },
                    }
                )
        output.reverse()  # the API does not keep the input order

        def line(row: dict) -> str:
            text = json.dumps(row)
            if row["custom_id"] in self.corrupt_ids:
                self.corrupt_ids.discard(row["custom_id"])  # once: a resubmission answers whole
                text = text[: len(text) // 2]
            return text + "\n"

        to_bytes = lambda rows: "".join(line(r) for r in rows).encode()  # noqa: E731
        if output:
            batch["output_file_id"] = self._new_file(f"{batch['id']}_output.jsonl", "batch_output", to_bytes(output))[
                "id"
            ]
        if errors:
            batch["error_file_id"] = self._new_file(f"{batch['id']}_error.jsonl", "batch_output", to_bytes(errors))[
                "id"
            ]
        batch["status"] = (
            "expired" if any(line["custom_id"] in self.expire_ids for line in batch["_lines"]) else "completed"
        )
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(output), "failed": len(errors)}

    # -- HTTP ---------------------------------------------------------------------------------------------
    def _handler_class(self):
        server = self
        Base = super()._handler_class()

        class Handler(Base):
            def _send_bytes(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                server.auth_headers.append(self.headers.get("Authorization", ""))
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                    return False
                return True

            def do_GET(self):
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] not in (["v1", "files"], ["v1", "batches"]):
                    return super().do_GET()
                if not self._authorised():
                    return
                with server._lock:
                    if parts[1] == "files" and len(parts) == 4 and parts[3] == "content" and parts[2] in server.files:
                        return self._send_bytes(server.files[parts[2]]["data"])
                    if parts[1] == "files" and len(parts) == 3 and parts[2] in server.files:
                        return self._send(200, server._file_object(parts[2]))
                    if parts[1] == "batches" and len(parts) == 3 and parts[2] in server.batches:
                        return self._send(200, server._retrieve_batch(parts[2]))
                    if parts[1] == "batches" and len(parts) == 2:  # newest first, one page
                        listed = [server._batch_object(b) for b in reversed(list(server.batches))]
                        return self._send(
                            200,
                            {
                                "object": "list",
                                "data": listed,
                                "has_more": False,
                                "first_id": listed[0]["id"] if listed else None,
                                "last_id": listed[-1]["id"] if listed else None,
                            },
                        )
                self._send(404, {"error": {"message": f"no such object {self.path}"}})

            def do_POST(self):
                path = self.path.split("?")[0].rstrip("/")
                if path not in ("/v1/files", "/v1/batches"):
                    return super().do_POST()
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self._authorised():
                    return
                with server._lock:
                    if path == "/v1/files":
                        return self._send(200, self._upload(raw))
                    body = json.loads(raw)
                    if body.get("input_file_id") not in server.files:
                        return self._send(404, {"error": {"message": f"no file {body.get('input_file_id')}"}})
                    self._send(200, server._create_batch(body))

            def _upload(self, raw: bytes) -> dict:
                header = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = BytesParser(policy=HTTP).parsebytes(header + raw)
                fields, filename, data = {}, "upload", b""
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if part.get_filename() is not None:
                        filename, data = part.get_filename(), part.get_payload(decode=True)
                    else:
                        fields[name] = part.get_payload(decode=True).decode()
                return server._new_file(filename, fields.get("purpose", ""), data)

        return Handler

"""A user's documents as passages: read from a BEIR folder, a JSON Lines / Parquet / CSV file, a ``datasets`` folder
or Hub id, or a folder of ``.txt`` / ``.md`` (and, with ``pypdf`` installed, ``.pdf``) files; cut into windows of
tokens with an overlap.

A passage's id is its document's id and the character offset where it starts (``doc-17@0``, ``notes/a.md@2048``),
so the same text keeps the same id on every run, and a changed document changes only its own passages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import E5MistralError, MissingFileError
from ..local_data import fresh_read_options, read_jsonl


TEXT_SUFFIXES = (".txt", ".md")
PDF_SUFFIX = ".pdf"
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
ID_COLUMNS = ("_id", "id", "doc_id", "docid")  # tried in order when --id-column is not given
BEIR_CORPUS = "corpus.jsonl"


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Passage:
    passage_id: str
    doc_id: str
    text: str  # as an embedder sees it: the title, a space, then the window of the document's text

    @property
    def digest(self) -> str:
        """A hash of the text: a request about this passage changes when its text does."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class CorpusColumns:
    text: str = "text"
    doc_id: str | None = None  # None: the first of ID_COLUMNS present, else the row number
    title: str | None = None  # None: "title" when present


def read_documents(source: str, columns: CorpusColumns = CorpusColumns(), split: str = "train") -> list[Document]:
    """Every document of ``source`` with non-empty text; a one-line error for what cannot be read."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / BEIR_CORPUS).is_file():
        documents = _table_documents(path / BEIR_CORPUS, columns)
    elif path.is_dir() and _is_dataset_folder(path):
        documents = _dataset_documents(str(path), columns, split)
    elif path.is_dir():
        documents = list(_folder_documents(path))
    elif path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        documents = _table_documents(path, columns)
    elif path.is_file() and path.suffix.lower() in (*TEXT_SUFFIXES, PDF_SUFFIX):
        documents = [_file_document(path, path.name)]
    elif path.is_file():
        raise E5MistralError(
            f"corpus {source}: unknown file type {path.suffix or '(none)'}; give a folder, or a "
            f"{', '.join(TABLE_SUFFIXES + TEXT_SUFFIXES + (PDF_SUFFIX,))} file"
        )
    elif source.startswith((".", "/", "~")) or path.suffix:
        raise MissingFileError(f"corpus {source} not found")
    else:
        documents = _dataset_documents(source, columns, split)  # a Hub id
    documents = [d for d in documents if d.text.strip()]
    if not documents:
        raise E5MistralError(f"corpus {source} holds no text")
    duplicate = _first_duplicate(d.doc_id for d in documents)
    if duplicate is not None:
        raise E5MistralError(f"corpus {source}: document id {duplicate!r} appears twice; ids must be unique")
    return documents


def _first_duplicate(ids) -> str | None:
    seen = set()
    for doc_id in ids:
        if doc_id in seen:
            return doc_id
        seen.add(doc_id)
    return None


def _is_dataset_folder(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "README.md").is_file()


def _table_documents(path: Path, columns: CorpusColumns) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = read_jsonl(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        import csv

        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    return _rows_to_documents(rows, columns, str(path))


def _dataset_documents(source: str, columns: CorpusColumns, split: str) -> list[Document]:
    import datasets

    try:
        if Path(source).is_dir() and not (Path(source) / "README.md").is_file():
            loaded = datasets.load_from_disk(source)
            dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            dataset = datasets.load_dataset(source, split=split, **fresh_read_options(source))
    except (FileNotFoundError, ValueError, KeyError, ConnectionError) as err:
        raise E5MistralError(f"corpus {source}: cannot read it as a dataset ({' '.join(str(err).split())[:200]})")
    return _rows_to_documents(dataset.to_list(), columns, source)


def _rows_to_documents(rows: list[dict], columns: CorpusColumns, where: str) -> list[Document]:
    if not rows:
        return []
    names = list(rows[0])
    if columns.text not in names:
        raise E5MistralError(f"corpus {where}: no column {columns.text!r} (it has {', '.join(map(str, names))})")
    id_column = columns.doc_id or next((c for c in ID_COLUMNS if c in names), None)
    if id_column is not None and id_column not in names:
        raise E5MistralError(f"corpus {where}: no column {id_column!r} (it has {', '.join(map(str, names))})")
    title_column = columns.title or ("title" if "title" in names else None)
    if title_column is not None and title_column not in names:
        raise E5MistralError(f"corpus {where}: no column {title_column!r} (it has {', '.join(map(str, names))})")
    documents = []
    for number, row in enumerate(rows):
        text = row.get(columns.text)
        if text is not None and not isinstance(text, str):
            raise E5MistralError(f"corpus {where}, row {number}: column {columns.text!r} is a {type(text).__name__}")
        doc_id = str(row[id_column]) if id_column else str(number)
        documents.append(Document(doc_id, str(row.get(title_column) or "") if title_column else "", text or ""))
    return documents


def _folder_documents(folder: Path) -> Iterator[Document]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts))
    readable = [p for p in files if p.suffix.lower() in (*TEXT_SUFFIXES, PDF_SUFFIX)]
    if not readable:
        raise E5MistralError(
            f"corpus {folder}: no {', '.join(TEXT_SUFFIXES + (PDF_SUFFIX,))} files and no {BEIR_CORPUS} in it"
        )
    for path in readable:
        yield _file_document(path, path.relative_to(folder).as_posix())


def _file_document(path: Path, doc_id: str) -> Document:
    if path.suffix.lower() == PDF_SUFFIX:
        return Document(doc_id, "", _pdf_text(path))
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise E5MistralError(f"corpus file {path} is not text (it holds NUL bytes)")
    try:
        return Document(doc_id, "", data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise E5MistralError(f"corpus file {path} is not UTF-8 text (byte {err.start})") from None


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise E5MistralError(f"corpus file {path}: reading PDFs needs pypdf (pip install 'e5-mistral[pdf]')") from None
    try:
        return "\n\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)
    except (PdfReadError, ValueError, OSError) as err:
        raise E5MistralError(f"corpus file {path} is not a readable PDF ({type(err).__name__})") from None


def chunk(documents: list[Document], tokenizer, max_tokens: int, overlap: int) -> list[Passage]:
    """Windows of at most ``max_tokens`` tokens of each document's text (``overlap`` tokens shared between
    neighbours), each prefixed with its document's title; ids carry the window's character offset."""
    if max_tokens < 8 or not 0 <= overlap < max_tokens // 2:
        raise E5MistralError(
            f"--chunk-tokens must be at least 8 and --chunk-overlap between 0 and half of it, got {max_tokens} and "
            f"{overlap}"
        )
    passages = []
    encoded = tokenizer(
        [d.text for d in documents], add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    for document, offsets in zip(documents, encoded["offset_mapping"]):
        title = document.title.strip()
        room = max_tokens - (len(tokenizer(title, add_special_tokens=False)["input_ids"]) if title else 0)
        if room < max_tokens // 2:
            room = max_tokens // 2  # a very long title: keep windows of text, let the title run over
        for start in range(0, max(len(offsets) - overlap, 1), room - overlap):
            window = offsets[start : start + room]
            if not window:
                break
            begin, end = window[0][0], window[-1][1]
            body = document.text[begin:end].strip()
            if body:
                text = f"{title} {body}" if title else body
                passages.append(Passage(f"{document.doc_id}@{begin}", document.doc_id, text))
            if start + room >= len(offsets):
                break
    return passages


def draw(passages: list[Passage], count: int, seed: int) -> list[Passage]:
    """``count`` passages drawn seeded, by a hash of each id: the draw of a passage does not depend on the others, so
    a changed corpus keeps every unchanged passage's place in it."""

    def rank(passage: Passage) -> str:
        return hashlib.sha256(f"{seed}:{passage.passage_id}".encode("utf-8")).hexdigest()

    return sorted(passages, key=rank)[:count]

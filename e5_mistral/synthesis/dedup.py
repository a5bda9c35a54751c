"""Opt-in dedup beyond the paper's exact match: MinHash near-duplicates and embedding (semantic) duplicates.

Both return a keep-mask over the input texts, in order: ``True`` keeps a text, ``False`` marks it a duplicate
of an earlier *kept* text, so the first occurrence of each group always survives and the result depends only
on the texts and their order. Run the exact dedup first: it is cheaper and removes the ties that the
neighbour limit of the semantic pass (``top_k``) could otherwise hide.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Sequence

from ..errors import E5MistralError


# Han, kana and Hangul have no spaces between words: each character counts as one word, so Chinese or
# Japanese texts still get useful shingles. Everything else splits on non-word characters.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def normalized_words(text: str) -> list[str]:
    """NFKC, case-folded words of ``text``, punctuation dropped."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def shingles(text: str, ngram: int = 3) -> set[str]:
    """Word ``ngram``-shingles of the normalised text; a text shorter than ``ngram`` words is one shingle."""
    words = normalized_words(text)
    if len(words) <= ngram:
        return {" ".join(words)}
    return {" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)}


def near_duplicate_mask(
    texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128, ngram: int = 3
) -> list[bool]:
    """Keep-mask dropping texts whose word-shingle Jaccard similarity to an earlier kept text is ≥ ``threshold``.

    ``datasketch`` MinHash LSH finds the candidates; the exact Jaccard of the two shingle sets confirms them,
    so a false LSH candidate never drops a text; a missed candidate (rare, and rarer far above the threshold)
    keeps one.
    """
    from datasketch import MinHash, MinHashLSH

    if not 0.0 < threshold <= 1.0:
        raise E5MistralError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    sets = [shingles(text, ngram) for text in texts]
    sketches = MinHash.bulk([[s.encode("utf-8") for s in shingle_set] for shingle_set in sets], num_perm=num_perm)
    # Candidates are verified exactly, so trade false positives for recall: with equal weights LSH finds
    # only ~40% of pairs right at the threshold, with these ~95% (num_perm=128, threshold=0.8).
    index = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
    keep = []
    for i, (shingle_set, sketch) in enumerate(zip(sets, sketches)):
        duplicate = any(_jaccard(shingle_set, sets[j]) >= threshold for j in index.query(sketch))
        if not duplicate:
            index.insert(i, sketch)
        keep.append(not duplicate)
    return keep


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def semantic_duplicate_mask(
    texts: Sequence[str],
    model_name_or_path: str | os.PathLike,
    threshold: float = 0.9,
    batch_size: int = 64,
    top_k: int = 100,
    query_chunk_size: int = 1024,
) -> list[bool]:
    """Keep-mask dropping texts whose cosine similarity to an earlier kept text is ≥ ``threshold``.

    Texts are embedded with the sentence-transformers model ``model_name_or_path`` (a path, a Hub id, or an
    already loaded ``SentenceTransformer``); ``sentence_transformers.util.semantic_search`` finds each text's
    ``top_k`` nearest neighbours, ``query_chunk_size`` texts at a time to bound memory.
    """
    from sentence_transformers import SentenceTransformer, util

    if not -1.0 <= threshold <= 1.0:
        raise E5MistralError(f"semantic-duplicate threshold must be in [-1, 1], got {threshold}")
    if not texts:
        return []
    model = (
        model_name_or_path
        if isinstance(model_name_or_path, SentenceTransformer)
        else SentenceTransformer(str(model_name_or_path))
    )
    embeddings = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    keep: list[bool] = []
    for start in range(0, len(texts), query_chunk_size):
        hits = util.semantic_search(
            embeddings[start : start + query_chunk_size], embeddings, top_k=top_k + 1, score_function=util.dot_score
        )
        for offset, neighbours in enumerate(hits):
            i = start + offset
            keep.append(
                not any(h["corpus_id"] < i and keep[h["corpus_id"]] and h["score"] >= threshold for h in neighbours)
            )
    return keep

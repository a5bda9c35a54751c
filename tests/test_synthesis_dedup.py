"""Opt-in MinHash near-duplicate and embedding (semantic) duplicate masks."""

from __future__ import annotations

import pytest

from e5_mistral.synthesis.dedup import near_duplicate_mask, semantic_duplicate_mask, shingles


FOX = "The quick brown fox jumps over the lazy dog near the river bank today"


class TestShingles:
    def test_normalised_word_shingles(self):
        assert shingles("The  CAT, sat on... the mat!") == {"the cat sat", "cat sat on", "sat on the", "on the mat"}
        assert shingles("Hello world") == {"hello world"}  # shorter than the shingle size: one shingle
        assert shingles("") == {""}
        assert shingles("我们去公园") == {"我 们 去", "们 去 公", "去 公 园"}  # no spaces: characters are words


class TestNearDuplicates:
    def test_drops_near_duplicates_keeps_distinct(self):
        # 14 words -> 12 shingles; changing the last word changes one: Jaccard 11/13 = 0.846
        texts = [
            FOX,
            FOX.upper() + "!!",  # same shingles after normalisation: Jaccard 1.0
            FOX.replace("today", "tomorrow"),
            "Completely different sentence about quantum computing and entanglement",
            "我们今天去公园散步然后吃午饭",
            "我们今天去公园散步然后吃晚饭",  # one character changed: 10/14 = 0.71 < 0.8
        ]
        assert near_duplicate_mask(texts, threshold=0.8) == [True, False, False, True, True, True]
        assert near_duplicate_mask(texts, threshold=0.9) == [True, False, True, True, True, True]
        assert near_duplicate_mask(texts, threshold=0.7) == [True, False, False, True, True, False]

    def test_keeps_the_first_occurrence(self):
        texts = [FOX.replace("today", "tomorrow"), "unrelated words entirely here", FOX]
        assert near_duplicate_mask(texts) == [True, True, False]
        assert near_duplicate_mask(list(reversed(texts))) == [True, True, False]

    def test_compares_with_kept_texts_only(self):
        # b is a near-duplicate of a (11/13) and c of b (11/13), but c vs a is 10/14 = 0.71: c survives
        words = FOX.split()
        a = " ".join(words)
        b = " ".join(words[:-1] + ["tomorrow"])
        c = " ".join(words[:-2] + ["x", "tomorrow"])
        assert near_duplicate_mask([a, b, c], threshold=0.8) == [True, False, True]

    def test_empty_input_and_bad_threshold(self):
        assert near_duplicate_mask([]) == []
        with pytest.raises(ValueError, match="threshold"):
            near_duplicate_mask(["a"], threshold=1.5)


class TestSemanticDuplicates:
    @pytest.mark.slow  # importing sentence-transformers alone takes 5-15 s on 2 busy cores
    def test_minilm_drops_paraphrase_keeps_unrelated(self, minilm_dir):
        texts = [
            "How do I reset my password?",
            "The Eiffel Tower is in Paris.",
            "What is the way to reset my password?",  # cosine 0.97 with the first
            "Photosynthesis converts light into chemical energy.",
            "the eiffel tower stands in paris",  # cosine 0.94 with the second
            "How can I change the password of my account?",  # 0.83 with the first: kept at 0.9
        ]
        assert semantic_duplicate_mask(texts, str(minilm_dir), threshold=0.9) == [True, True, False, True, False, True]
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(minilm_dir))  # a loaded model is accepted too
        assert semantic_duplicate_mask(texts, model, threshold=0.8, query_chunk_size=2) == [
            True,
            True,
            False,
            True,
            False,
            False,
        ]
        assert semantic_duplicate_mask([], model) == []

"""A ``datasets`` builder whose generation step runs (or resumes) a synthesis run.

datasets 5.x has no loading scripts, so the builder is used directly::

    from e5_mistral.synthesis import SynthesisArguments, SyntheticEmbeddingData

    args = SynthesisArguments(model="gpt-4o-mini", output="out", num_examples=1000)
    builder = SyntheticEmbeddingData(config_name="short_long", synthesis=args)
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")

Configs: one per family plus ``all``. Rows are the accepted, deduplicated examples of the run, in plan order.
``datasets`` caches by config: pass ``download_mode="force_redownload"`` to resume an unfinished run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import datasets
from datasets.builder import Key

from ..errors import E5MistralError
from ..hub.schema import ALL_CONFIG, CONFIG_NAMES, features
from ..hub.writer import DATA_FILE
from .config import SynthesisArguments


CITATION = """@inproceedings{wang2024improving,
  title = {Improving Text Embeddings with Large Language Models},
  author = {Wang, Liang and Yang, Nan and Huang, Xiaolong and Yang, Linjun and Majumder, Rangan and Wei, Furu},
  booktitle = {Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics},
  year = {2024},
  note = {arXiv:2401.00368}
}"""

DESCRIPTIONS = {
    "short_long": "short query, long document retrieval (user_query, positive_document, hard_negative_document)",
    "long_short": "text classification (input_text, label, misleading_label)",
    "short_short": "short-short matching (input, positive_document)",
    "long_long": "long-long matching (input, positive_document)",
    "sts": "monolingual STS triples (S1, S2, S3)",
    "bitext": "bitext retrieval triples (S1 in src_lang, S2/S3 in tgt_lang)",
    ALL_CONFIG: "every family; columns are the union, null where a column does not apply",
}


@dataclass
class SyntheticEmbeddingDataConfig(datasets.BuilderConfig):
    """``name`` is a family or ``all``; ``synthesis`` holds the run settings (endpoint, model, output, ...)."""

    synthesis: Optional[SynthesisArguments] = None

    def __post_init__(self):
        super().__post_init__()
        if self.name not in CONFIG_NAMES:
            raise E5MistralError(f"unknown config {self.name!r}; choose from {', '.join(CONFIG_NAMES)}")


class SyntheticEmbeddingData(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = SyntheticEmbeddingDataConfig
    BUILDER_CONFIGS = [
        SyntheticEmbeddingDataConfig(name=name, description=DESCRIPTIONS[name]) for name in CONFIG_NAMES
    ]
    DEFAULT_CONFIG_NAME = ALL_CONFIG

    def _info(self):
        return datasets.DatasetInfo(
            description=self.config.description, features=features(self.config.name), citation=CITATION
        )

    def _split_generators(self, dl_manager):
        if self.config.synthesis is None:
            raise E5MistralError(
                "SyntheticEmbeddingData needs synthesis=SynthesisArguments(...) (model, output, endpoint)"
            )
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"synthesis": self.config.synthesis})]

    def _generate_examples(self, synthesis: SynthesisArguments):
        import pyarrow.parquet as pq

        from .runner import generate

        folder = generate(synthesis, progress=False).output / "dataset" / self.config.name
        index = 0
        for batch in pq.ParquetFile(folder / DATA_FILE).iter_batches():  # rows already in the config's columns
            for row in batch.to_pylist():
                yield Key(0, index), row
                index += 1

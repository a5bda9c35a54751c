"""Stage: evaluation (mteb) and test-set decontamination (paper Appendix B).

``evaluate(models, tasks, output_dir, ...)`` runs mteb with the paper's instructions; ``load_offline_task``
turns a local folder into an mteb task; ``find_contamination`` / ``decontaminate`` check training data
against test sets. Heavy libraries (mteb, datasets, torch) load only when these are called.
"""

from .decontamination import decontaminate, find_contamination
from .evaluate import evaluate, markdown_table, resolve_tasks
from .offline_tasks import load_offline_task


__all__ = ["decontaminate", "evaluate", "find_contamination", "load_offline_task", "markdown_table", "resolve_tasks"]

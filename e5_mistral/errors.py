"""The error type for messages meant for users: a bad flag, file, row or field, an endpoint that cannot be reached.

The command line prints these as one line (``e5-mistral CMD: error: ...``) and exits non-zero; every other
exception is a bug or a failure of the machine (CUDA out of memory, NCCL, a library) and keeps its traceback.
It subclasses ``ValueError`` so callers that validated input with ``except ValueError`` keep working.
"""


class E5MistralError(ValueError):
    """A problem the user can fix; its message says what and where (file, row, field, flag)."""


class MissingFileError(E5MistralError, FileNotFoundError):
    """A file or folder the user named does not exist (or is not what it should be)."""

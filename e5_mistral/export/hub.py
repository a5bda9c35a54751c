"""Upload an exported folder to the Hugging Face Hub.

The token comes from the usual places (``HF_TOKEN``, ``hf auth login``), is resolved by ``huggingface_hub``
and never printed: error messages are scrubbed of it before they reach the user.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import E5MistralError


logger = logging.getLogger(__name__)


def push_folder(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; return the repo URL. Failures raise E5MistralError."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    folder = Path(folder)
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message or "Upload e5-mistral export",
        )
    except Exception as err:  # noqa: BLE001 - HTTP, transport, auth and offline errors all end the same way
        # The local export is already complete; the user gets one clear line instead of a traceback.
        message = " ".join(str(err).split())[:400] or type(err).__name__
        token = get_token()
        if token:
            message = message.replace(token, "***")
        raise E5MistralError(
            f"upload to the Hub repo {repo_id} failed ({type(err).__name__}: {message}); "
            f"the local export in {folder} is complete; upload it later with: hf upload {repo_id} {folder}"
        ) from err
    logger.info("uploaded %s to %s", folder, url)
    return str(url)

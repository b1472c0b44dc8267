"""Whether the Hugging Face hub can be used: one quick TCP check, and the offline switches. Torch-free.

    from bitfit import hub
    hub.offline()           # HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set
    hub.reachable(3.0)      # the endpoint answers a TCP connect within 3 s

Model and data loading ask these first, so that offline they fail at once with a message instead of a
minute of retries deep inside the hub client.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def reachable(timeout: float = 3.0) -> bool:
    """True if the Hugging Face endpoint answers a TCP connect within ``timeout`` seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))

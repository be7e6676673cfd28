"""The Hugging Face Hub probe, asked before anything reaches for the Hub: the base model
(rlhf/models.py), a Hub dataset (rlhf/sources.py) and push_to_hub (rlhf/cards.py)."""
from __future__ import annotations

import concurrent.futures
import os
import socket
from urllib.parse import urlparse


def hub_reachable(timeout_s: float = 3.0) -> tuple[bool, str]:
    """Can we open a TCP connection to the model hub within `timeout_s`? Returns (ok, reason).

    Decides in seconds what an offline `from_pretrained` takes ~50 s of retries to find out.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname

    def connect():
        socket.create_connection((host, 443), timeout=timeout_s).close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout_s)  # bounds the DNS lookup too
        return True, f"{host} answered"
    except concurrent.futures.TimeoutError:
        return False, f"{host} did not answer within {timeout_s:g} s"
    except OSError as err:
        return False, f"{host} unreachable ({err})"
    finally:
        pool.shutdown(wait=False)

"""List, then watch from the list's resourceVersion, until stopped: the loop every watcher shares.

A watch that ends is resumed from the last resourceVersion seen; one the API server no longer has
(410 Gone) starts over from a fresh list; connection failures (an API server restarting) are
retried with capped exponential backoff. The caller says how to list and how to watch once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

from kubernetes.client.exceptions import ApiException

from callwarden.kube.client import describe_error

log = logging.getLogger(__name__)

INITIAL_BACKOFF: Final = 0.2
MAX_BACKOFF: Final = 5.0


def follow(
    stopped: threading.Event,
    *,
    listed: Callable[[], bool],
    relist: Callable[[], None],
    watch_once: Callable[[], None],
    forget: Callable[[], None],
    what: str,
) -> None:
    """Until `stopped`: `relist()` whenever not `listed()`, then `watch_once()`; on 410 `forget()`
    the resourceVersion and list again; on any other failure wait and retry. `what` names the
    watch in log lines."""
    backoff = INITIAL_BACKOFF
    while not stopped.is_set():
        try:
            if not listed():
                relist()
            watch_once()
            backoff = INITIAL_BACKOFF
        except ApiException as error:
            if error.status == 410:  # our resourceVersion is gone: start over from a list
                log.info("%s: resourceVersion expired; relisting", what)
                forget()
                continue
            backoff = _pause(stopped, what, error, backoff)
        except Exception as error:  # connection refused or reset: the API server restarting
            backoff = _pause(stopped, what, error, backoff)


def _pause(stopped: threading.Event, what: str, error: Exception, backoff: float) -> float:
    if not stopped.is_set():
        log.warning("%s: %s; retrying in %.1fs", what, describe_error(error), backoff)
        stopped.wait(backoff)
    return min(MAX_BACKOFF, backoff * 2)

"""Finding the local node and its owner token, for the CLI and the SDK.

``ron up`` writes ``node.json`` (its URLs) and ``auth/owner.token`` into its data dir.
A client on the same machine that talks to *that* node (the URL it was given is one of
the node's own URLs) may present the owner token without being told to: that is what
makes ``make run`` followed by ``ron put FILE`` work with no setup. The token is never
sent anywhere else -- a client pointed at another node gets no credentials by
accident -- and it is read with the secret-file rules (a file others can read is
refused).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ron.auth.owner import read_owner_token

__all__ = ["DEFAULT_DATA_DIR", "NODE_FILE", "local_data_dir", "owner_token_for", "read_node_file"]

DEFAULT_DATA_DIR = Path(".ron")
NODE_FILE = "node.json"
"""Written by the kernel once its listeners are bound; removed when it stops."""


def local_data_dir(data_dir: Path | None = None) -> Path:
    """``data_dir``, else ``RON_DATA_DIR``, else ``./.ron`` (the node's own default)."""
    if data_dir is not None:
        return data_dir
    env = os.environ.get("RON_DATA_DIR")
    return Path(env) if env else DEFAULT_DATA_DIR


def read_node_file(data_dir: Path) -> dict[str, Any] | None:
    """The running node's pid and URLs, as written at start; None when no node ran here."""
    try:
        data = json.loads((data_dir / NODE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def owner_token_for(url: str, data_dir: Path | None = None) -> str | None:
    """The owner token, if ``url`` is one of the local node's own URLs; else None."""
    where = local_data_dir(data_dir)
    info = read_node_file(where)
    if info is None:
        return None
    urls = info.get("urls")
    if not isinstance(urls, dict):
        return None
    wanted = url.rstrip("/")
    if not any(isinstance(u, str) and u.rstrip("/") == wanted for u in urls.values()):
        return None
    return read_owner_token(where)

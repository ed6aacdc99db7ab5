"""The index service: address -> bundle location (SQLite, one writer, many readers)."""

from ron.services.index.db import IndexDB, IndexRecord
from ron.services.index.service import IndexAPI, IndexClient, IndexService

__all__ = ["IndexAPI", "IndexClient", "IndexDB", "IndexRecord", "IndexService"]

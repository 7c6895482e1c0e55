"""The two kinds of store the dashboard reads: a store folder, or the tables of an s3:// store
(`traintape ui --store s3://bucket/prefix`, traintape.read.remote.RemoteTables).

An s3:// store holds the published tables only: the dashboard's caches ask its manifests what
each run folder holds (as they list a folder's files), and it has no artifact objects to serve.
"""

from __future__ import annotations

from pathlib import Path

from traintape.errors import ArtifactNotFoundError
from traintape.read.remote import RemoteTables
from traintape.ui.listing import FolderCache

__all__ = ["Store", "listing_of", "objects_of", "root_of"]

Store = Path | RemoteTables
"""A store folder, or the tables of an s3:// store, read-only alike."""


def root_of(store: Store) -> Path:
    """The root of the store's layout paths (an s3:// store's stands for its URL)."""
    return store.root if isinstance(store, RemoteTables) else store


def listing_of(store: Store) -> FolderCache | RemoteTables:
    """Who answers the caches' folder listings: the folders, or an s3:// store's manifests."""
    return store if isinstance(store, RemoteTables) else FolderCache()


def objects_of(store: Store) -> Path:
    """The store folder whose artifact objects the dashboard serves; an s3:// store has none
    (only the tables are published): ArtifactNotFoundError says so (a 404 with the reason)."""
    if isinstance(store, RemoteTables):
        msg = (
            f"{store.url} holds the published tables only, not the artifacts' content: open the "
            "dashboard on the store folder (traintape ui --store DIR) to see images and tables"
        )
        raise ArtifactNotFoundError(msg)
    return store

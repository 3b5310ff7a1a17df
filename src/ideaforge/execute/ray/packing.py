"""Packing for the Ray backend: deterministic tarballs, so equal workspaces get equal names.

The controller ships a trial's `work/` and the hidden files as content-addressed
objects; the names here are also the trial's name on the cluster.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path


def pack_tree(root: Path, members: list[str] | None = None) -> bytes:
    """A tar.gz of `root` (or of `members` under it), byte-identical for identical contents.

    Symlinks (the workspace's data links) are stored as links, never followed: data is
    not shipped.
    """
    root = Path(root)
    if members is None:
        members = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            for name in sorted(dirnames + filenames):
                members.append(os.path.normpath(os.path.join(rel, name)))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in sorted(members):
                info = tar.gettarinfo(str(root / rel), arcname=rel)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if info.isfile():
                    with open(root / rel, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def unpack(blob: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(dest, filter="tar")  # "tar", not "data": absolute data links must survive


def campaign_key(trial_dir: Path) -> str:
    """A short stable name for the campaign that owns `trial_dir` (ROOT/trials/NNNNN)."""
    return hashlib.sha256(str(Path(trial_dir).resolve().parent.parent).encode()).hexdigest()[:12]


def trial_key(trial_dir: Path, trial_id: int) -> str:
    """The trial's name on the cluster (and its node-local scratch directory)."""
    return f"ideaforge-trial-{campaign_key(trial_dir)}-{trial_id}"

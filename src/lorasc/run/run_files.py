"""Writing into a run folder without ever writing through a symbolic link.

A run folder someone sends you may hold links to files outside it (RUN/eval.json -> ~/notes). The one
rule: lorasc replaces a link at a path it writes, never the file the link points to. Files and folders
are written under a temporary name beside their place and renamed into it, so a crash, a kill or a full
disk leaves the previous version or nothing, never half a file; removing a link removes the link only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def remove(path: Path) -> None:
    """Remove what is at `path`: a folder with its contents, a file, or a link itself (never its target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def unlinked(path: Path) -> Path:
    """`path`, with a link there removed: for what lorasc opens in place (the lock, TensorBoard's folder)."""
    if path.is_symlink():
        path.unlink()
    return path


@contextlib.contextmanager
def replacing(path: Path):
    """Yields a fresh temporary path beside `path`; once the block has written a file or a folder there, it
    takes the place of `path` (a file by one atomic rename). On failure the temporary one is removed,
    which also gives back the space a full disk needs."""
    temporary = path.with_name(f".{path.name}.tmp")
    remove(temporary)
    try:
        yield temporary
        publish(temporary, path)
    finally:
        remove(temporary)


def publish(temporary: Path, path: Path) -> None:
    """Rename a complete file or folder into place, replacing what was there (os.replace renames a file
    over a file or a link atomically, but a folder only into an empty place)."""
    if temporary.is_dir():
        remove(path)
    os.replace(temporary, path)


def write_file(path: Path, content: str) -> None:
    try:
        with replacing(path) as temporary, open(temporary, "x", encoding="utf-8") as f:
            f.write(content)
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err  # a full disk fails the flush at close, naming no file

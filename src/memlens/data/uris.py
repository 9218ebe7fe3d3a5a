"""Files by URI: local paths, anything ``pyarrow.fs`` knows (``s3://``, ``gs://``, ``hdfs://``, ``file://``) and,
through fsspec, any other ``scheme://`` an installed fsspec implementation provides (``memory://``, ``az://``...).

Used by the ``parquet`` layout (data sets in object storage) and by image references that are URLs.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from typing import Any

from ..errors import DataError, first_line

__all__ = ["is_uri", "has_glob", "filesystem_for", "read_bytes", "list_files", "join_uri"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(text: str) -> bool:
    """Whether ``text`` starts with ``scheme://`` (a local path does not)."""
    return bool(_SCHEME.match(str(text)))


def has_glob(text: str) -> bool:
    """Whether ``text`` holds a glob pattern (``*``, ``?``, ``[``)."""
    return any(c in str(text) for c in "*?[")


# the environment variables the object-storage clients read their endpoint, region and credentials from
_CLIENT_ENV = ("AWS_", "GOOGLE_", "GCS_", "STORAGE_EMULATOR_HOST", "AZURE_", "HADOOP_", "ARROW_")


def _filesystem(scheme_and_host: str) -> Any:
    """The file system of a bucket or scheme, kept while the client environment stays the same (a new
    endpoint or new credentials in ``os.environ`` give a new client, not one bound to the old endpoint)."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_CLIENT_ENV)))
    return _cached_filesystem(scheme_and_host, env)


@functools.lru_cache(maxsize=32)
def _cached_filesystem(scheme_and_host: str, env: tuple[tuple[str, str], ...]) -> Any:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(scheme_and_host)[0]
    except (ValueError, OSError):  # pyarrow.ArrowInvalid is a ValueError: a scheme pyarrow does not know
        pass
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem
    except ImportError:  # pragma: no cover - fsspec is a dependency of the ray extra
        raise DataError(f"{scheme_and_host}: no file system for this URI (install fsspec and its "
                        "implementation for the scheme)") from None
    protocol = scheme_and_host.split("://", 1)[0]
    try:
        return PyFileSystem(FSSpecHandler(fsspec.filesystem(protocol)))
    except (ImportError, ValueError) as exc:
        raise DataError(f"{scheme_and_host}: no file system for the {protocol}:// scheme ({exc})") from None


def filesystem_for(uri: str) -> tuple[Any, str]:
    """``(pyarrow file system, path within it)`` for a URI or a local path."""
    import pyarrow.fs as pafs

    uri = str(uri)
    if not is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return pafs.LocalFileSystem(), "/" + rest.lstrip("/")
    fs = _filesystem(uri if scheme in ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss") else f"{scheme}://")
    if isinstance(fs, pafs.PyFileSystem):  # fsspec: its own path convention (memory://x -> /x)
        return fs, fs.handler.fs._strip_protocol(uri)
    try:
        return fs, pafs.FileSystem.from_uri(uri)[1]
    except Exception:  # noqa: BLE001
        return fs, rest


def join_uri(base: str, name: str) -> str:
    """``base/name`` for a URI or a local path."""
    if is_uri(base):
        return base.rstrip("/") + "/" + name.lstrip("/")
    return os.path.join(base, name)


def read_bytes(uri: str) -> bytes:
    """The bytes of a file given by URI or local path (an ``OSError`` when it cannot be read)."""
    if not is_uri(uri):
        with open(uri, "rb") as fh:
            return fh.read()
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def list_files(source: str, suffix: str) -> tuple[str, list[str]]:
    """``(root, files)``: the files ending in ``suffix`` that ``source`` names, as URIs (or local paths), sorted.

    ``source`` is a file, a folder (searched recursively; names starting with ``.`` or ``_`` skipped, as
    Parquet tools do) or a glob pattern, local or a URI. ``root`` is the folder the files' names are relative
    to (the folder itself, or the part of the pattern before its first wildcard).
    """
    source = str(source)
    try:
        return _list_files(source, suffix)
    except OSError as exc:  # a network error, no permission, a missing bucket: one line, not a traceback
        raise DataError(f"{source}: cannot list ({first_line(exc)})") from None


def _list_files(source: str, suffix: str) -> tuple[str, list[str]]:
    import pyarrow.fs as pafs

    fs, path = filesystem_for(source)
    scheme = source.split("://", 1)[0] + "://" if is_uri(source) else ""

    def to_uri(p: str) -> str:
        return scheme + p if scheme else p

    if has_glob(path):
        base = path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        deep = "**" in path  # ``*`` stays within one folder level unless the pattern has ``**``
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path)
                       and (deep or i.path.count("/") == path.count("/")))
        root = base
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{source}: no such file or folder")
        if info.type == pafs.FileType.File:
            return to_uri(path.rsplit("/", 1)[0] or "/"), [to_uri(path)]
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        root = path
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
                       and not any(part.startswith((".", "_")) for part in i.path[len(path):].split("/")))
    return to_uri(root), [to_uri(f) for f in files]

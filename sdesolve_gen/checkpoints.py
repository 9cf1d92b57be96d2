r"""Checkpoint files that are written atomically and refuse to load when corrupted.

File layout (version 1)::

    b"SDESOLVE_GEN CHECKPOINT 1\n"                               magic line (26 bytes)
    b"sha256 <64 lowercase hex> <payload length, 20 digits>\n"   digest line (93 bytes)
    <payload>                                                    the bytes of torch.save(obj)

:func:`load_verified` recomputes the SHA-256 of the payload and compares the header *exactly*
(magic, spelling, lowercase hex, length, newlines), so every single-byte change anywhere in the
file is refused with a ``ValueError`` naming the file: a change in the header breaks its exact
form, a change in the payload changes its digest (a SHA-256 collision is not a practical concern).
Only then is the payload read with ``torch.load(weights_only=True)``. The whole file is read into
memory once (checkpoints of the networks in this package are a few MB).

Writes (:func:`atomic_save`, :func:`atomic_write_bytes`) go to ``.<name>.tmp-<pid>`` in the same
directory, are flushed and fsync'ed, then ``os.replace``'d over the target and the directory is
fsync'ed: a crash leaves the old or the new file, never a torn one. If the write fails (a full
disk, ``ENOSPC``; a quota; an I/O error) the temporary file is removed and ONE ``OSError`` naming
the target path is raised (the previous file, if any, is untouched). Temporary files left by
processes that were killed mid-write are removed by :func:`clean_stale_temp_files`; the process
id in the name decides whether the writer is dead (on the local machine: do not share one
checkpoint directory between hosts).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, List, Union

import torch

PathLike = Union[str, os.PathLike]

__all__ = [
    "MAGIC",
    "atomic_save",
    "atomic_write_bytes",
    "load_verified",
    "encode",
    "decode",
    "check_writable",
    "clean_stale_temp_files",
    "temp_path",
]

logger = logging.getLogger(__name__)

MAGIC = b"SDESOLVE_GEN CHECKPOINT 1\n"
_DIGEST_LINE = re.compile(rb"sha256 ([0-9a-f]{64}) ([0-9]{20})\n")
_DIGEST_LEN = len(b"sha256 ") + 64 + 1 + 20 + 1
_HEADER_LEN = len(MAGIC) + _DIGEST_LEN
_TMP = re.compile(r"^\..+\.tmp-([0-9]+)$")


def encode(payload: bytes) -> bytes:
    """Prefix ``payload`` with the magic line and its SHA-256 digest line (the file format above)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    digest = hashlib.sha256(payload).hexdigest().encode("ascii")
    return MAGIC + b"sha256 " + digest + b" " + b"%020d" % len(payload) + b"\n" + payload


def decode(data: bytes, path: PathLike = "<bytes>") -> bytes:
    """Check the header of ``data`` (see the module doc) and return the payload.

    Raises:
        ValueError: naming ``path`` if the header is missing or malformed, the length differs
            (a truncated or extended file) or the digest does not match (a corrupt file).
    """
    if not data.startswith(MAGIC):
        if data[:4] == b"PK\x03\x04":
            raise ValueError(f"checkpoint {path} has no integrity header: it is a bare torch.save file (written by an "
                             "older sdesolve_gen or another program), not a verified sdesolve_gen checkpoint")
        raise ValueError(f"checkpoint {path} is corrupt or truncated, or not an sdesolve_gen checkpoint: bad magic line")
    line = data[len(MAGIC):_HEADER_LEN]
    m = _DIGEST_LINE.fullmatch(line)
    if m is None:
        raise ValueError(f"checkpoint {path} is corrupt or truncated: malformed digest line")
    payload = data[_HEADER_LEN:]
    if int(m.group(2)) != len(payload):
        raise ValueError(f"checkpoint {path} is corrupt or truncated: the header declares {int(m.group(2))} payload bytes, "
                         f"the file holds {len(payload)}")
    if hashlib.sha256(payload).hexdigest().encode("ascii") != m.group(1):
        raise ValueError(f"checkpoint {path} is corrupt or truncated: the SHA-256 of its payload does not match its header")
    return payload


def temp_path(path: PathLike) -> Path:
    """The temporary name ``.<name>.tmp-<pid>`` next to ``path`` used while writing it."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - directories cannot be opened on some platforms
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - or not fsync'ed
        pass
    finally:
        os.close(dfd)


def atomic_write_bytes(data: bytes, path: PathLike) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``, fsync of the directory).

    Args:
        data: the bytes to write (verbatim; no header is added).
        path: the target file; its directory is created if missing.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: naming ``path`` (same ``errno``) if the directory cannot be created or the write
            fails; the temporary file is removed first and an existing ``path`` is unchanged.
    """
    path = Path(path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the directory of {path}: {exc.strerror or exc}") from exc
    tmp = temp_path(path)
    view = memoryview(data)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            what = ("no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc)))
            raise OSError(exc.errno, f"could not write {path}: {what} (needed {len(view)} bytes; the previous "
                                     f"file, if any, is unchanged and no temporary file was left)") from exc
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` with an integrity header (see the module doc), written atomically.

    Raises:
        OSError: naming ``path`` if the write fails (see :func:`atomic_write_bytes`).
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(encode(buf.getvalue()), path)


def load_verified(path: PathLike, *, map_location: Any = "cpu") -> Any:
    """Read a file written by :func:`atomic_save`: verify its digest, then ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming ``path`` if the file is corrupt, truncated, lacks the header, or its
            payload cannot be unpickled with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = decode(path.read_bytes(), path)
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable payloads
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None


def check_writable(directory: PathLike, need_bytes: int = 0) -> Path:
    """Create ``directory`` if needed and check that a file of ``need_bytes`` bytes can be written there.

    The check writes and removes a small probe file (so read-only mounts, permissions and ACLs
    are all caught, even for root) and compares ``need_bytes`` with ``shutil.disk_usage().free``.

    Raises:
        OSError: naming ``directory`` (``errno`` of the cause; ``ENOSPC`` for too little space).
    """
    directory = Path(directory)
    if isinstance(need_bytes, bool) or not isinstance(need_bytes, int) or need_bytes < 0:
        raise ValueError(f"need_bytes must be an int >= 0, got {need_bytes!r}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sdesolve-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"checkpoint directory {directory} is not writable: {exc.strerror or exc}") from exc
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise OSError(errno.ENOSPC, f"checkpoint directory {directory} has {free / 2**20:.1f} MiB free, but a checkpoint "
                                    f"needs about {need_bytes / 2**20:.1f} MiB")
    return directory


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # pragma: no cover - cannot probe safely; keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def clean_stale_temp_files(directory: PathLike) -> List[Path]:
    """Remove ``.<name>.tmp-<pid>`` files in ``directory`` whose writer process no longer exists.

    Returns:
        the removed paths (files of live processes, including this one, are kept).
    """
    directory = Path(directory)
    removed: List[Path] = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TMP.match(p.name)
        if m is None or not p.is_file():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            p.unlink()
        except OSError:  # pragma: no cover - removed concurrently or not ours to remove
            continue
        logger.info("removed stale temporary file %s (its writer, pid %d, is gone)", p, pid)
        removed.append(p)
    return removed

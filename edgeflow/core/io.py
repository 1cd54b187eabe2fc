"""Atomic file and directory writes, stale-temporary cleanup, and hashing.

Nothing edgeflow writes is ever half-written: files go to a temporary name in the same
directory and are renamed into place; directories are built under a temporary name and
renamed when complete.

Outputs keep the process umask (like ``open()`` and ``mkdir``): temporaries are created with
mode 0o666 (files) or 0o777 (directories) and the kernel applies the umask, so under umask 022
a bundle is ``rwxr-xr-x`` with ``rw-r--r--`` files (``tempfile.mkstemp``/``mkdtemp`` would make
them 0600/0700, unreadable to anyone else).

Temporaries are named ``.NAME.PID-RANDOM.tmp`` (``.NAME.PID-RANDOM.old`` for the output an
``overwrite`` replaces). A killed run leaves them behind; the next write of the same output
removes those whose PID is no longer alive, and the un-numbered names of older edgeflow versions
(``.NAME.XXXXXXXX.tmp``, ``.NAME.old``) when they predate this process. Nothing else is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

from edgeflow.core.errors import ConfigError, OutputError, not_a_file, short_reason

#: When this module was imported: legacy temporaries older than this are not being written by us.
_START = time.time()

#: Hidden names that look like an edgeflow temporary of *some* output, per directory (see _candidates).
_CANDIDATES: Dict[str, List[str]] = {}
_ANY_TEMP = re.compile(r"^\..+\.(?:\d+-[0-9a-f]{8}\.(?:tmp|old)|[a-z0-9_]{8}\.tmp|old)$")


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``; else a set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)      # no /proc (macOS): briefly set it, as every tool without /proc must
    os.umask(mask)
    return mask


def make_executable(path: str | Path) -> None:
    """``chmod +x`` as the umask allows (``0o777 & ~umask``), like a file a shell script installer writes."""
    os.chmod(path, 0o777 & ~current_umask())


def _temp_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True      # someone else's process, or not a pid we can ask about: keep its files
    return True


def _is_stale(entry: Path, name: str) -> bool:
    """Whether ``entry`` is a temporary of the output called ``name`` that nobody is writing."""
    m = re.fullmatch(rf"\.{re.escape(name)}\.(\d+)-[0-9a-f]{{8}}\.(?:tmp|old)", entry.name)
    if m:
        return not _pid_alive(int(m.group(1)))
    if re.fullmatch(rf"\.{re.escape(name)}\.(?:[a-z0-9_]{{8}}\.tmp|old)", entry.name):
        with contextlib.suppress(OSError):
            return entry.lstat().st_mtime < _START
    return False


def _remove(entry: Path) -> None:
    with contextlib.suppress(OSError):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink()


def clean_stale_temporaries(path: str | Path, cached: bool = False) -> List[Path]:
    """Remove temporaries of ``path`` left by killed runs (see the module docstring); return what was removed.

    Args:
        path: the output file or directory.
        cached: list ``path``'s folder once per process (for many files written into one big folder).
    """
    path = Path(path)
    parent = path.parent
    key = str(parent.resolve()) if parent.exists() else None
    if key is None:
        return []
    if not cached or key not in _CANDIDATES:
        try:
            _CANDIDATES[key] = [e.name for e in os.scandir(parent) if _ANY_TEMP.match(e.name)]
        except OSError:
            return []
    removed = []
    for name in list(_CANDIDATES[key]):
        entry = parent / name
        if name.startswith(f".{path.name}.") and _is_stale(entry, path.name):
            _remove(entry)
            removed.append(entry)
            _CANDIDATES[key].remove(name)
    return removed


def _output_error(path: Path, exc: OSError) -> OutputError:
    what = exc.strerror or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    return OutputError(f"cannot write {path}: {what}{where}", exc)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno is not None and path.parent.exists() and not path.parent.is_dir():
            raise OutputError(f"cannot write {path}: {path.parent} is not a folder", exc) from None
        raise _output_error(path, exc) from None


def _create(path: Path, directory: bool) -> Path:
    """A new temporary next to ``path``, created with the umask applied (0o777 / 0o666 before it)."""
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise _output_error(path, exc) from None
    raise OutputError(f"cannot write {path}: no free temporary name")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left untouched.

    Raises:
        OutputError: the folder cannot be created or written, or ``path`` cannot be replaced.
    """
    path = Path(path)
    _make_parent(path)
    clean_stale_temporaries(path, cached=True)
    tmp_path = _create(path, directory=False)
    try:
        yield tmp_path
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise _output_error(path, exc) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _swap_in(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename ``tmp`` onto ``path``; an existing ``path`` (file or folder) is moved aside, then removed."""
    if not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    if not overwrite:
        raise OutputError(f"{path} exists")
    old = _temp_name(path, "old")
    os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; rename it to ``path`` when the block succeeds.

    Args:
        path: final directory.
        overwrite: replace an existing ``path`` (only after the new one is complete).

    Raises:
        OutputError: ``path`` exists and ``overwrite`` is false, or the folder cannot be written.
    """
    path = Path(path)
    _make_parent(path)
    clean_stale_temporaries(path)
    tmp = _create(path, directory=True)
    try:
        yield tmp
        try:
            _swap_in(tmp, path, overwrite)
        except OutputError:
            raise
        except OSError as exc:
            raise _output_error(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_user_json(path: str | Path, what: str, max_bytes: int = 16 << 20) -> Any:
    """A user's json file (a model's config), read with a size bound: ConfigError in one line if it is missing,
    a folder, too large or not json. Callers check the structure themselves."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(not_a_file(what, path))
    if path.stat().st_size > max_bytes:
        raise ConfigError(f"{path}: too large for a {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable json ({short_reason(exc)})") from None


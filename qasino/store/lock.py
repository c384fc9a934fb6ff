"""One server per data directory: an exclusive lock on a file inside it.

``DataDirLock.acquire(db_dir)`` takes ``flock(LOCK_EX | LOCK_NB)`` on
``db_dir/qasino.lock`` and writes the holder's PID into the file. A second
process asking for the same directory gets :class:`DataDirBusy` at once,
naming the directory and that PID, and has changed nothing in it (it only
opened the existing lock file to try the lock).

``flock`` belongs to the open file, not to the process: it is released when
the holder closes it or dies (also after ``kill -9``), and a second
``acquire`` in the same process fails too (two stores on one directory are
a mistake there as well).
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Optional

from qasino.core.errors import StoreError

LOCK_FILE = "qasino.lock"


class DataDirBusy(StoreError):
    """Another process holds the data directory's lock."""

    def __init__(self, db_dir: str, pid: Optional[int]) -> None:
        holder = f"process {pid}" if pid else "another process (its PID is not known)"
        super().__init__(
            f"the data directory {db_dir} is in use by {holder}; "
            "one server per --db-dir (stop that one or give another --db-dir)"
        )
        self.db_dir = db_dir
        self.pid = pid


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class DataDirLock:
    """The held lock; ``release`` (or process exit) lets another server in."""

    def __init__(self, db_dir: str, path: str, fd: int) -> None:
        self.db_dir = db_dir
        self.path = path
        self._fd: Optional[int] = fd

    @classmethod
    def acquire(cls, db_dir: str) -> DataDirLock:
        """Lock ``db_dir`` (created if missing). Raises DataDirBusy, or
        StoreError when the directory or lock file cannot be made."""
        path = os.path.join(db_dir, LOCK_FILE)
        try:
            os.makedirs(db_dir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"cannot open the lock file {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirBusy(db_dir, pid) from None
            raise StoreError(f"cannot lock {path}: {e.strerror or e}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass  # the lock holds all the same; only the PID hint is missing
        return cls(db_dir, path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def renew_if_gone(self) -> Optional[str]:
        """If the lock file was deleted or replaced (``rm -rf`` of the data
        directory), lock a new one so a second server still cannot start.
        Returns what happened, for the log, or None if all was well."""
        if self._fd is None:
            return None
        try:
            held = os.fstat(self._fd)
            st: Optional[os.stat_result] = os.stat(self.path)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            return None
        try:
            fresh = DataDirLock.acquire(self.db_dir)
        except StoreError as e:
            return f"the lock file {self.path} was deleted under the server, and now: {e.message}"
        old, self._fd, fresh._fd = self._fd, fresh._fd, None
        os.close(old)
        return f"the lock file {self.path} was deleted under the server; locked a new one"

    def release(self) -> None:
        """Give the lock up (the lock file stays; it is empty of meaning)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the file releases the flock

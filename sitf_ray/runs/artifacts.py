"""Run-directory artifacts: atomic writes, JSONL with line-numbered errors, checksummed stage ledger.

Every file is written to a temporary name, fsynced and renamed, so a crash never leaves half a file under
the real name. Each iteration keeps `stages.json`: for every finished stage its figures and the sha256 of
the artifacts it wrote. On resume a stage counts as done only if all its artifacts still hash the same;
otherwise it is recomputed with a message naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

from sitf_ray.runs.console import check_interrupt


class ArtifactError(RuntimeError):
    pass


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, default=_default) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    path, rows = Path(path), []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ArtifactError(f"{path}:{i}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ArtifactError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    return rows


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict
        return asdict(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def digest(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names + bytes, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class Ledger:
    """stages.json of one iteration folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "stages.json"
        self.data: dict = read_json(self.path) if self.path.exists() else {}

    def done(self, stage: str) -> bool:
        entry = self.data.get(stage)
        if not entry:
            return False
        for rel, want in entry.get("artifacts", {}).items():
            p = self.folder / rel
            if not p.exists():
                print(f"[resume] {p}: missing; recomputing stage '{stage}'", flush=True)
                return False
            if digest(p) != want:
                print(f"[resume] {p}: checksum mismatch (corrupted or edited); recomputing stage '{stage}'",
                      flush=True)
                return False
        return True

    def get(self, stage: str) -> dict:
        return self.data.get(stage, {}).get("figures", {})

    def mark(self, stage: str, artifacts: Optional[list[str]] = None, **figures) -> None:
        """Record a finished stage. If it was recomputed with a different result, every stage recorded
        after it is dropped too: their inputs changed, so they run again."""
        arts = {a: digest(self.folder / a) for a in (artifacts or [])}
        old = self.data.get(stage)
        if old is not None and old.get("artifacts") != arts:
            names = list(self.data)
            for later in names[names.index(stage) + 1:]:
                del self.data[later]
        self.data[stage] = {"artifacts": arts, "figures": figures}
        write_json(self.path, self.data)
        check_interrupt()      # a Ctrl-C during the stage stops the run here at the latest, the stage recorded


class RunClock:
    """The run's wall-clock record, `timings.json`, across every call that worked on it (run, quickstart,
    resume): each call adds an entry to `calls` ({'started': ISO time, 'seconds'}); `total_seconds` is their
    sum; `weight_syncs` keeps every call's syncs. Nothing an earlier call recorded is rewritten or lost, and
    a call that is killed keeps what it spent up to its last flush (a daemon thread flushes every `every` s).

    extra: a callable returning more top-level fields to write (e.g. per-stage seconds from the ledgers).
    """

    def __init__(self, root: str | Path, weight_syncs: list, extra=None, every: float = 10.0):
        import threading
        import time
        self.path = Path(root) / "timings.json"
        old = read_json(self.path) if self.path.exists() else {}
        calls = old.get("calls")
        if calls is None and "total_seconds" in old:   # written before calls were kept
            calls = [{"started": None, "seconds": old["total_seconds"]}]
        self.calls, self.old_syncs = list(calls or []), list(old.get("weight_syncs", []))
        self.syncs, self.extra, self.t0 = weight_syncs, extra, time.time()
        self.calls.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": 0.0})
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.flush()
        self._thread = threading.Thread(target=self._loop, args=(every,), name="sitf-run-clock", daemon=True)
        self._thread.start()

    def _loop(self, every: float):
        while not self._stop.wait(every):
            try:
                self.flush(extra=False)
            except Exception:       # a record must never stop the run
                pass

    def flush(self, extra: bool = True) -> dict:
        import time
        with self._lock:
            self.calls[-1]["seconds"] = round(time.time() - self.t0, 3)
            rec = {"total_seconds": round(sum(c["seconds"] for c in self.calls), 3), "calls": self.calls,
                   "weight_syncs": self.old_syncs + list(self.syncs)}
            prev = read_json(self.path) if self.path.exists() else {}
            rec.update({k: v for k, v in prev.items() if k not in rec})     # fields written by `extra` before
            if extra and self.extra is not None:
                rec.update(self.extra())
            write_json(self.path, rec)
            return rec

    def stop(self) -> dict:
        """Final flush (with `extra`); the clock stops."""
        self._stop.set()
        return self.flush()


def mirror_up(local: str | Path, uri: str) -> None:
    """Copy a run directory to a bucket or other filesystem URI (s3://, gs://, file://) with pyarrow."""
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local).resolve()), path, destination_filesystem=fs)


def mirror_down(uri: str, local: str | Path) -> Path:
    """Fetch a run directory from a URI (to resume it on a new machine)."""
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise ArtifactError(f"{uri}: nothing stored there")
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local.resolve()), source_filesystem=fs)
    return local

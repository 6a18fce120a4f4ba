"""A catalog kept as a local folder of images, with its feature index beside it.

Layout::

    DIR/                     the images, in any sub-folders (keys are DIR-relative paths)
    DIR/manifest.json        optional: source URLs, in the seed's format (see below)
    DIR/.harmony/catalog.json   key -> sha256, size, mtime, url
                             (a read-only DIR keeps its index under ~/.cache/harmony/ instead)
    DIR/.harmony/records-v<N>/<sha256>.npz   one feature record per distinct image content

:meth:`LocalCatalog.sync` brings the index up to date incrementally: unchanged files (same size
and modification time) are not read again, changed and new files are hashed and, unless a record
for that content already exists, decoded and featurised (in parallel); deleted files leave it.

Manifest: the seed's format (see :mod:`harmony_image.manifest`), keys relative to DIR. Entries
without a manifest URL use their key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from harmony_image import (
    DEFAULT_MAX_PIXELS,
    FEATURE_VERSION,
    MANIFEST_NAME,
    HarmonyError,
    ImageFeatures,
    IndexFormatError,
    SearchIndex,
    extract_features,
    parse_manifest,
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
INDEX_DIRNAME = ".harmony"
_CATALOG_VERSION = 1

Progress = Callable[[int, int], None]


@dataclass
class SyncReport:
    """What :meth:`LocalCatalog.sync` did."""

    total: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    featurised: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(root: Path) -> dict[str, str]:
    """:func:`parse_manifest` of ``root/manifest.json`` (empty if there is none)."""
    path = root / MANIFEST_NAME
    return parse_manifest(path.read_bytes()) if path.exists() else {}


def default_index_dir(root: Path) -> Path:
    """``root/.harmony`` — or, when the catalog folder is read-only, a folder per catalog under
    ``$XDG_CACHE_HOME/harmony`` (``~/.cache/harmony``)."""
    beside = root / INDEX_DIRNAME
    if os.access(beside if beside.exists() else root, os.W_OK):
        return beside
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harmony"
    return cache / f"{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"


class _Claim:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None


class LocalCatalog:
    """A folder of images and its incrementally maintained feature index."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        workers: int | None = None,
        max_pixels: int | None = None,
        index_dir: str | os.PathLike | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise HarmonyError(f"catalog folder {self.root} does not exist; create it or pass another --catalog")
        self.index_dir = Path(index_dir).resolve() if index_dir else default_index_dir(self.root)
        # one folder per feature version: records of another version are never mistaken for current
        self.records_dir = self.index_dir / f"records-v{FEATURE_VERSION}"
        self.workers = workers or min(8, (os.cpu_count() or 1) + 1)
        self.max_pixels = max_pixels
        self._state = self._load_state()
        self._claims: dict[str, _Claim] = {}
        self._claims_lock = threading.Lock()

    # -- state -------------------------------------------------------------------------
    def _load_state(self) -> dict[str, dict]:
        path = self.index_dir / "catalog.json"
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
        except ValueError:
            return {}  # a damaged state file only costs a re-scan: records are content-addressed
        if state.get("version") != _CATALOG_VERSION or state.get("feature_version") != FEATURE_VERSION:
            return {}
        return state.get("entries", {})

    def _save_state(self) -> None:
        state = {"version": _CATALOG_VERSION, "feature_version": FEATURE_VERSION, "entries": self._state}
        write_atomic(self.index_dir / "catalog.json", json.dumps(state, indent=1, sort_keys=True).encode())

    def _record_path(self, sha256: str) -> Path:
        return self.records_dir / f"{sha256}.npz"

    # -- scanning ----------------------------------------------------------------------
    def image_files(self) -> Iterator[tuple[str, os.stat_result]]:
        """(key, stat) of every image file under the root, skipping hidden folders."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                path = Path(dirpath) / name
                yield path.relative_to(self.root).as_posix(), path.stat()

    def needs_sync(self) -> bool:
        """Whether any file was added, changed or removed since the last sync (stat only)."""
        seen = 0
        for key, st in self.image_files():
            seen += 1
            known = self._state.get(key)
            if known is None or known["size"] != st.st_size or known["mtime_ns"] != st.st_mtime_ns:
                return True
        return seen != len(self._state) or self._manifest_changed()

    def _manifest_changed(self) -> bool:
        urls = read_manifest(self.root)
        return any(entry.get("url") != urls.get(key) for key, entry in self._state.items())

    # -- sync --------------------------------------------------------------------------
    def sync(self, *, progress: Progress | None = None) -> SyncReport:
        """Bring the index up to date with the folder; see the module docstring."""
        started = time.perf_counter()
        report = SyncReport()
        urls = read_manifest(self.root)
        files = list(self.image_files())
        report.total = len(files)
        present = {key for key, _ in files}
        for key in list(self._state):
            if key not in present:
                del self._state[key]
                report.removed += 1
        todo: list[tuple[str, os.stat_result]] = []
        for key, st in files:
            known = self._state.get(key)
            if known and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns:
                known["url"] = urls.get(key)
                report.unchanged += 1
                if "error" in known:
                    report.failed[key] = known["error"]
            else:
                todo.append((key, st))
        done = report.unchanged
        if progress:
            progress(done, report.total)
        self._claims.clear()
        if todo:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                for key, st, outcome in pool.map(self._index_file, todo):
                    done += 1
                    if isinstance(outcome, str):
                        # remembered with the file's stat, so an unchanged bad file is not retried
                        report.failed[key] = outcome
                        self._state[key] = {
                            "error": outcome,
                            "size": st.st_size,
                            "mtime_ns": st.st_mtime_ns,
                            "url": None,
                        }
                    else:
                        sha256, featurised = outcome
                        if key in self._state and "error" not in self._state[key]:
                            report.updated += 1
                        else:
                            report.added += 1
                        report.featurised += featurised
                        self._state[key] = {
                            "sha256": sha256,
                            "size": st.st_size,
                            "mtime_ns": st.st_mtime_ns,
                            "url": urls.get(key),
                        }
                    if progress:
                        progress(done, report.total)
        self._save_state()
        self._collect_garbage()
        report.seconds = time.perf_counter() - started
        return report

    def _index_file(self, item: tuple[str, os.stat_result]) -> tuple[str, os.stat_result, tuple[str, bool] | str]:
        key, st = item
        try:
            data = (self.root / key).read_bytes()
            sha256 = hashlib.sha256(data).hexdigest()
            with self._claims_lock:  # copies of one image in one sync are featurised once
                other = self._claims.get(sha256)
                claim = other or self._claims.setdefault(sha256, _Claim())
            if other is not None:
                claim.done.wait()
                if claim.error:
                    return key, st, claim.error
                return key, st, (sha256, False)
            try:
                record = self._record_path(sha256)
                if record.exists():
                    return key, st, (sha256, False)
                features = extract_features(data, query=False, max_pixels=self.max_pixels or DEFAULT_MAX_PIXELS)
                write_atomic(record, features.to_bytes())
                return key, st, (sha256, True)
            except HarmonyError as exc:
                claim.error = exc.message
                raise
            finally:
                claim.done.set()
        except HarmonyError as exc:
            return key, st, exc.message
        except OSError as exc:
            return key, st, f"cannot read: {exc.strerror or exc}"

    def _collect_garbage(self) -> None:
        for stale in self.index_dir.glob("records*"):
            if stale.is_dir() and stale != self.records_dir:
                shutil.rmtree(stale, ignore_errors=True)
        if not self.records_dir.exists():
            return
        live = {entry["sha256"] for entry in self._state.values() if "sha256" in entry}
        for path in self.records_dir.glob("*.npz"):
            if path.stem not in live:
                path.unlink(missing_ok=True)

    # -- list and remove ---------------------------------------------------------------
    def entries(self, prefix: str = "") -> list[dict[str, object]]:
        """Every image file under ``prefix``: ``{"key", "size", "source_url", "indexed"}``, in key
        order. ``indexed``: the last sync saw the file as it is now and its record exists."""
        urls = read_manifest(self.root)
        out: list[dict[str, object]] = []
        for key, st in self.image_files():
            if not key.startswith(prefix):
                continue
            known = self._state.get(key)
            indexed = bool(
                known
                and "sha256" in known
                and known["size"] == st.st_size
                and known["mtime_ns"] == st.st_mtime_ns
                and self._record_path(known["sha256"]).exists()
            )
            out.append({"key": key, "size": st.st_size, "source_url": urls.get(key), "indexed": indexed})
        return sorted(out, key=lambda e: str(e["key"]))

    def path_of(self, key: str) -> Path:
        """The file of catalog key ``key``; HarmonyError when the key leaves the folder (``..``, an
        absolute path, a symlink out) or names the index."""
        parts = Path(key).parts
        if not key or Path(key).is_absolute() or ".." in parts or any(p.startswith(".") for p in parts):
            raise HarmonyError(f"{key!r} is not a key of {self.root} (relative, no '..', no hidden parts)")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path.is_relative_to(self.index_dir):
            raise HarmonyError(f"{key!r} is outside the catalog folder {self.root}")
        return path

    def remove(self, keys: list[str]) -> dict[str, str]:
        """Delete the files of ``keys`` and forget their records: key -> "removed" or "missing".
        Every key is checked first (:meth:`path_of`): a refused key deletes nothing."""
        paths = {key: self.path_of(key) for key in keys}
        out: dict[str, str] = {}
        for key, path in paths.items():
            rel = path.relative_to(self.root).as_posix()
            if path.is_file():
                path.unlink()
                out[key] = "removed"
            else:
                out[key] = "missing"
            self._state.pop(rel, None)
        self._save_state()
        self._collect_garbage()  # a record no other file shares goes with its file
        return out

    # -- loading -----------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(1 for entry in self._state.values() if "error" not in entry)

    def load_index(self) -> SearchIndex:
        """A :class:`SearchIndex` of the synced entries (call :meth:`sync` first)."""
        index = SearchIndex()
        by_hash: dict[str, ImageFeatures] = {}
        stale: list[str] = []

        def load(sha256: str) -> tuple[str, ImageFeatures | None]:
            path = self._record_path(sha256)
            try:
                return sha256, ImageFeatures.from_bytes(path.read_bytes())
            except OSError:
                return sha256, None
            except IndexFormatError:
                path.unlink(missing_ok=True)  # damaged: the next sync writes it anew
                return sha256, None

        hashes = sorted({e["sha256"] for e in self._state.values() if "sha256" in e})
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for sha256, features in pool.map(load, hashes):
                if features is not None:
                    by_hash[sha256] = features
        for key, entry in sorted(self._state.items()):
            if "error" in entry:
                continue
            features = by_hash.get(entry["sha256"])
            if features is None:
                stale.append(key)
                continue
            index.add(key, features, url=entry.get("url"))
        if stale:  # a record vanished or is damaged: forget the entries so the next sync redoes them
            for key in stale:
                self._state.pop(key, None)
            self._save_state()
        return index

    def open(self, *, progress: Progress | None = None) -> tuple[SearchIndex, SyncReport | None]:
        """Sync if anything changed, then load: the usual way to get a ready index."""
        report = self.sync(progress=progress) if self.needs_sync() else None
        entries = len(self)
        index = self.load_index()
        if len(self) < entries:  # load_index forgot entries whose record was missing or damaged: redo them
            report = self.sync(progress=progress)
            index = self.load_index()
        return index, report

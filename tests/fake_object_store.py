"""A Beam filesystem that behaves like GCS, backed by a local folder: ``fakegcs://bucket/key``.

Why: the ingestion tools take ``gs://`` inputs, outputs and model files, and nothing here can
reach GCS. This filesystem has GCS's semantics where they differ from a local disk: there
are no folders (``has_dirs`` is False, listing is by key prefix, ``exists`` is true only for
an object), ``mkdirs`` does nothing, and a rename is copy + delete. Beam finds it by its
``scheme()`` once this module is imported, so tests use it with the single-process
DirectRunner only (worker processes would not import it).
"""
from __future__ import annotations

import os
import shutil

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem

SCHEME = "fakegcs"


class FakeObjectStore(FileSystem):
    ROOT: str | None = None  # the local folder holding the buckets; set by the test

    @classmethod
    def scheme(cls):
        return SCHEME

    # ------------------------------------------------------------ paths
    @staticmethod
    def _local(path: str) -> str:
        prefix = SCHEME + "://"
        if not path.startswith(prefix):
            raise ValueError(f"{path}: expected a {prefix} path")
        if FakeObjectStore.ROOT is None:
            raise RuntimeError("FakeObjectStore.ROOT is not set")
        return os.path.join(FakeObjectStore.ROOT, path[len(prefix):])

    @staticmethod
    def _url(local: str) -> str:
        rel = os.path.relpath(local, FakeObjectStore.ROOT).replace(os.sep, "/")
        return f"{SCHEME}://{rel}"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def has_dirs(self):
        return False

    def mkdirs(self, path):
        pass  # object stores have no folders

    def _objects(self, prefix: str):
        base = self._local(prefix)
        top = base if os.path.isdir(base) else os.path.dirname(base)
        for root, _, files in os.walk(top):
            for f in files:
                local = os.path.join(root, f)
                if local.startswith(base):
                    yield local

    def _list(self, dir_or_prefix):
        for local in self._objects(dir_or_prefix):
            yield FileMetadata(self._url(local), os.path.getsize(local), os.path.getmtime(local))

    # ------------------------------------------------------------ objects
    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO):
        local = self._local(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        return open(local, "wb")

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO):
        return open(self._local(path), "rb")

    def copy(self, source_file_names, destination_file_names):
        for s, d in zip(source_file_names, destination_file_names):
            os.makedirs(os.path.dirname(self._local(d)), exist_ok=True)
            shutil.copyfile(self._local(s), self._local(d))

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)
        self.delete(source_file_names)

    def exists(self, path):
        return os.path.isfile(self._local(path))

    def size(self, path):
        return os.path.getsize(self._local(path))

    def last_updated(self, path):
        return os.path.getmtime(self._local(path))

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), self.last_updated(path))

    @staticmethod
    def _prune(folder: str) -> None:
        """An object store has no empty folders: remove the local ones a delete leaves."""
        while folder != FakeObjectStore.ROOT and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
            folder = os.path.dirname(folder)

    def delete(self, paths):
        missing = {}
        for p in paths:
            if self.exists(p):
                os.remove(self._local(p))
                self._prune(os.path.dirname(self._local(p)))
            else:
                missing[p] = FileNotFoundError(p)
        if missing:
            raise BeamIOError("Delete operation failed", missing)

"""Files through Hadoop's FileSystem API (via the driver's JVM), so local paths, HDFS and S3 all work.

Listing inputs follows the embedded runner's rule (``sessionflow.inputs``): a file is named as
given; a directory yields every file below it, sorted, skipping names that start with ``.`` or
``_``, each named by the given path plus its relative path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sessionflow.errors import InputError, OutputError, UsageError
from sessionflow.inputs import local_files, skipped
from sessionflow.runtimes.backfill.stages import path_key


@dataclass(frozen=True, slots=True)
class InputFile:
    source: str  # what rejections name as their source: the same string the embedded runner uses
    uri: str  # what Spark reads
    archive: bool = False  # an object of the AWS runtime's raw archive (one JSON line per record)


def has_scheme(path: str) -> bool:
    head, sep, _ = path.partition("://")
    return (bool(sep) and head.isalnum()) or path.startswith("file:")


class HadoopFs:
    """The few FileSystem calls the backfill needs, on the driver."""

    def __init__(self, spark: Any) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, uri: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(uri)

    def _fs(self, uri: str) -> Any:
        try:
            return self._path(uri).getFileSystem(self._conf)
        except Exception as exc:  # py4j wraps the Java exception
            raise UsageError(f"{uri}: no file system for this URI on this cluster ({_java_message(exc)})") from None

    def qualify(self, uri: str) -> str:
        path = self._path(uri)
        return str(self._fs(uri).makeQualified(path).toString())

    def exists(self, uri: str) -> bool:
        return bool(self._fs(uri).exists(self._path(uri)))

    def is_dir(self, uri: str) -> bool:
        fs = self._fs(uri)
        path = self._path(uri)
        return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())

    def list_files(self, uri: str) -> list[str]:
        """Qualified URIs of every file below ``uri``, recursively."""
        iterator = self._fs(uri).listFiles(self._path(uri), True)
        found = []
        while iterator.hasNext():
            found.append(str(iterator.next().getPath().toString()))
        return found

    def list_dirs(self, uri: str) -> list[str]:
        if not self.exists(uri):
            return []
        return [str(s.getPath().getName()) for s in self._fs(uri).listStatus(self._path(uri)) if s.isDirectory()]

    def list_names(self, uri: str) -> list[str]:
        return [str(s.getPath().getName()) for s in self._fs(uri).listStatus(self._path(uri))]

    def no_checksum_files(self, uri: str) -> None:
        """Hadoop's local file system writes a hidden ``.name.crc`` next to every file; the lake has none."""
        self._fs(uri).setWriteChecksum(False)

    def mkdirs(self, uri: str) -> None:
        self._fs(uri).mkdirs(self._path(uri))

    def rename(self, source: str, target: str) -> None:
        """Rename ``source`` to ``target``, which must not exist (Hadoop would move *into* a directory)."""
        fs = self._fs(source)
        if fs.exists(self._path(target)):
            raise OutputError(f"{target}: exists; refusing to move {source} into it")
        fs.mkdirs(self._path(target).getParent())
        if not fs.rename(self._path(source), self._path(target)):
            raise OutputError(f"cannot rename {source} to {target}")

    def delete(self, uri: str) -> None:
        self._fs(uri).delete(self._path(uri), True)

    def read_bytes(self, uri: str) -> bytes:
        stream = self._fs(uri).open(self._path(uri))
        try:
            return bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Create or replace a small file (a ledger)."""
        stream = self._fs(uri).create(self._path(uri), True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()


def expand_inputs(fs: HadoopFs, inputs: list[str]) -> list[InputFile]:
    """The input files in arrival order; a missing input fails before Spark reads anything."""
    files: list[InputFile] = []
    for given in inputs:
        if given == "-":
            raise UsageError("the backfill reads files, not standard input")
        if not has_scheme(given):
            # Local paths: exactly the embedded runner's listing and names.
            files.extend(InputFile(name, fs.qualify(str(path.resolve()))) for name, path in local_files(given))
            continue
        if not fs.exists(given):
            raise InputError(f"{given}: no such file or directory")
        if not fs.is_dir(given):
            files.append(InputFile(given, fs.qualify(given)))
            continue
        root = fs.qualify(given).rstrip("/")
        found = []
        for uri in fs.list_files(given):
            relative = uri[len(root) :].lstrip("/") if uri.startswith(root) else uri.rsplit("/", 1)[-1]
            parts = tuple(relative.split("/"))
            if skipped(parts):
                continue
            found.append((parts, InputFile(given.rstrip("/") + "/" + relative, uri)))
        files.extend(file for _, file in sorted(found, key=lambda item: item[0]))
    keys = [path_key(f.uri) for f in files]
    if len(set(keys)) != len(keys):
        raise UsageError("the same input file is given twice; the backfill reads each file once")
    return files


def _java_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__

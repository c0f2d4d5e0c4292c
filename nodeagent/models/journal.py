"""The staging journal: which ranges of a download in progress are fully written.

``<staging>/journal.jsonl`` starts with a header naming the source; each later line is a
range written completely (path, ETag, size, start, length, and the checksum a whole-object
GET returned). A run killed at any moment leaves at most a torn last line, which is
ignored. On resume the engine trusts nothing blindly: journalled ranges are hashed again
from the staged file, and every object is verified before it is published.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from nodeagent.models.checksums import Checksum


@dataclass(frozen=True)
class Done:
    path: str
    etag: str
    size: int
    start: int
    length: int
    checksum: Checksum | None = None  # from a whole-object GET


class Journal:
    def __init__(self, path: Path, source: str):
        self.path = path
        self.source = source
        self._lock = threading.Lock()
        self._file = None

    def load(self) -> list[Done]:
        """Entries of an earlier run for the same source ([] if none or another source)."""
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return []
        done = []
        for i, line in enumerate(lines):
            try:
                data = json.loads(line)
            except ValueError:
                continue  # the torn last line of a killed run
            if i == 0:
                if data.get("source") != self.source:
                    return []
                continue
            checksum = Checksum(**data["checksum"]) if data.get("checksum") else None
            done.append(Done(data["path"], data["etag"], data["size"], data["start"],
                             data["length"], checksum))
        return done

    def open(self, keep: list[Done]) -> None:
        """Start writing: the header, then the entries still valid."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"source": self.source}) + "\n")
            for entry in keep:
                f.write(self._line(entry))
        tmp.replace(self.path)
        self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the run

    def record(self, entry: Done) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(self._line(entry))
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @staticmethod
    def _line(entry: Done) -> str:
        data = {"path": entry.path, "etag": entry.etag, "size": entry.size,
                "start": entry.start, "length": entry.length}
        if entry.checksum:
            data["checksum"] = {"algorithm": entry.checksum.algorithm,
                                "value": entry.checksum.value, "type": entry.checksum.type}
        return json.dumps(data) + "\n"

"""The wire log: one JSON line per Flower message that crossed the trust boundary.

Each line names the round, phase, sender, receiver and, for every record in the message, its
kind and the shape, dtype and size of each entry, so a reader can check that nothing but the
declared payload left a data owner.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Message, RecordDict


def describe(content: RecordDict) -> tuple[list[dict[str, Any]], int]:
    """Record-by-record summary of a message's content and its payload size in bytes."""
    records: list[dict[str, Any]] = []
    total = 0
    for name, record in content.items():
        entries: dict[str, Any] = {}
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                size = len(array.data)
                entries[key] = {"shape": list(array.shape), "dtype": array.dtype, "bytes": size}
                total += size
        else:
            for key, value in record.items():
                size = len(json.dumps(value, default=str))
                entries[key] = {"type": type(value).__name__, "bytes": size}
                total += size
        records.append({"name": name, "kind": type(record).__name__, "entries": entries})
    return records, total


class WireLog:
    """Append-only JSON-lines log, safe to call from the ServerApp thread."""

    def __init__(self, path: Path, at: dict[str, Any] | None = None) -> None:
        """A new log, or, with ``at`` (a ``state()``), the log as it was then: what a killed
        run wrote after that point is cut off, since the resumed run sends it again."""
        self.path = path
        self._lock = threading.Lock()
        self._file = path.open("r+" if at and path.exists() else "w", buffering=1)
        self._file.truncate(at["offset"] if at else 0)
        self._file.seek(0, 2)
        self.messages = int(at["messages"]) if at else 0
        self.errors = int(at["errors"]) if at else 0
        self.bytes = dict(at["bytes"]) if at else {"to_clients": 0, "from_clients": 0}

    def state(self) -> dict[str, Any]:
        """Where the log stands: enough to reopen it there (``WireLog(path, at=state)``)."""
        with self._lock:
            self._file.flush()
            return {"offset": self._file.tell(), "messages": self.messages,
                    "errors": self.errors, "bytes": dict(self.bytes)}  # fmt: skip

    def log(
        self, *, round: int, phase: str, sender: str, receiver: str, content: RecordDict
    ) -> int:
        records, size = describe(content)
        line = {
            "round": round,
            "phase": phase,
            "sender": sender,
            "receiver": receiver,
            "records": records,
            "bytes": size,
        }
        with self._lock:
            self._file.write(json.dumps(line) + "\n")
            self.messages += 1
            self.bytes["from_clients" if sender != "server" else "to_clients"] += size
        return size

    def to_node(self, round: int, phase: str, node: int, content: RecordDict) -> None:
        self.log(
            round=round, phase=phase, sender="server", receiver=f"node:{node}", content=content
        )

    def from_node(self, round: int, phase: str, reply: Message) -> None:
        """A reply, or an error reply (its reason, and no records: nothing else came)."""
        node = reply.metadata.src_node_id
        if reply.has_error():
            line = {"round": round, "phase": phase, "sender": f"node:{node}",
                    "receiver": "server", "records": [], "bytes": 0,
                    "error": (reply.error.reason or "").strip()[-300:]}  # fmt: skip
            with self._lock:
                self._file.write(json.dumps(line) + "\n")
                self.messages += 1
                self.errors += 1
            return
        self.log(
            round=round,
            phase=phase,
            sender=f"node:{node}",
            receiver="server",
            content=reply.content,
        )

    def close(self) -> None:
        self._file.close()


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def client_records(path: Path) -> list[str]:
    """``record.entry`` names of everything clients sent, from a wire log (for reports)."""
    return sorted(
        {
            f"{rec['name']}.{key}"
            for line in read(path)
            if line["sender"] != "server"
            for rec in line["records"]
            for key in rec["entries"]
        }
    )

"""In-memory stand-ins for ``core`` pieces, shared by the tests of the packages that use them."""

from __future__ import annotations

import json
from typing import Any


class MemoryStore:
    """A JSON document in memory, as ``core.variables.JsonVariable`` keeps it in a Variable.

    It serves both ``core.sharing.DocumentStore`` (an account's lease document) and
    ``export.checkpoint.ProgressStore`` (an export's progress across tries). Each save stores a
    JSON copy, as a Variable would; :attr:`saves` counts the saves asked for, and :attr:`lose_next`
    drops that many of the next writes, like a racing writer.
    """

    def __init__(self) -> None:
        self.document: Any = None
        self.lose_next = 0
        self.saves = 0

    def load(self) -> Any:
        return self.document

    def save(self, document: Any) -> None:
        self.saves += 1
        if self.lose_next:
            self.lose_next -= 1
            return
        self.document = json.loads(json.dumps(document))

    def delete(self) -> None:
        self.document = None

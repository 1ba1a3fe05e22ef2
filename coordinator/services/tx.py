"""What a rule needs of a transaction: ``execute`` (and ``executemany``) with ``?`` placeholders,
returning a cursor whose rows index by column name and by position."""

from __future__ import annotations

from typing import Any, Protocol


class Tx(Protocol):
    def execute(self, sql: str, parameters: Any = (), /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...

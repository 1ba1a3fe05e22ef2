"""What a rule needs of a transaction: the store's ``Tx`` (coordinator/store/db.py), re-exported
here so that services name it without reaching into the store's internals."""

from __future__ import annotations

from coordinator.store.db import Tx as Tx

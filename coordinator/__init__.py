"""The coordinator: the public REST API ``/v0``, the agent protocol, scheduling and storage.

It is a Quart-Trio app served by Hypercorn. Handlers parse and authorise; decisions live in
pure modules (``scheduler``, ``common.states``); every read and write goes through the
``store`` interface, whose default implementation is SQLite in WAL mode.
"""

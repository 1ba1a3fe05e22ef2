"""The store's SQL is written once for SQLite 3.40 and PostgreSQL 15 (coordinator/store/db.py):
a lint over every SQL string in the store and service modules refuses the SQLite-only forms,
so nobody reintroduces one. The dialects themselves, the SQLite core (PRAGMAs, migrations)
and the SQLite backup tool are where such forms belong, and are not linted."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = [*sorted((ROOT / "coordinator" / "store").rglob("*.py")),
          *sorted((ROOT / "coordinator" / "services").rglob("*.py"))]
EXEMPT = {"db.py", "sqlite_core.py", "backup.py", "factory.py", "errors.py", "__init__.py"}
# PostgreSQL-only modules (i14b's backend) speak PostgreSQL; the lint is for the shared SQL.
EXEMPT_PREFIXES = ("postgres",)

# (pattern, what to write instead). Keywords are matched in upper case, the way the store
# writes SQL, so that prose in messages ("it is not") is not taken for SQL.
FORBIDDEN: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bINSERT\s+OR\s+(IGNORE|REPLACE|ABORT|FAIL|ROLLBACK)\b", re.I),
     "INSERT ... ON CONFLICT (...) DO ..."),
    (re.compile(r"\bREPLACE\s+INTO\b", re.I), "INSERT ... ON CONFLICT (...) DO UPDATE"),
    (re.compile(r"\b(rowid|_rowid_|oid|lastrowid|last_insert_rowid)\b", re.I), "a real key column, or RETURNING"),
    (re.compile(r"\bjson_\w+\s*\(", re.I), "tx.dialect.json_text / labels_contain"),
    (re.compile(r"\bIS\s+(NOT\s+)?(?!NULL\b|DISTINCT\b|NOT\b|TRUE\b|FALSE\b)[\w?:'\"]"),
     "IS NOT DISTINCT FROM / IS DISTINCT FROM"),
    (re.compile(r"\b(NOT\s+)?INDEXED\b"), "tx.dialect.indexed_by"),
    (re.compile(r"\b(max|min)\s*\([^()]*,", re.I), "tx.dialect.greatest (two-argument max() is SQLite's)"),
    (re.compile(r"\b(ifnull|group_concat|strftime|julianday|printf|instr|total|changes|unixepoch)\s*\(", re.I),
     "a function both databases have (COALESCE, ...) or Python"),
    (re.compile(r"\bdatetime\s*\(\s*'", re.I), "integer milliseconds computed in Python"),
    (re.compile(r"\b(PRAGMA|GLOB|AUTOINCREMENT|BEGIN\s+IMMEDIATE|BEGIN\s+EXCLUSIVE)\b"), "the core's business"),
    (re.compile(r"\bLIMIT\s+-1\b"), "no LIMIT"),
    (re.compile(r"\bLIKE\b"), "an exact comparison (LIKE folds case on SQLite only)"),
    (re.compile(r"(?<![\w.\"])offset\s*(,|\+|\)|<|>|=)"), 'the column quoted: "offset" (a PostgreSQL keyword)'),
    (re.compile(r"[=(,]\s*[a-z_]+\s*[-+*]\s*excluded\.", re.I),
     "the table's name on the old value (t.col + excluded.col): PostgreSQL finds a bare column ambiguous"),
]


def _sql_strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of ``path`` that are not docstrings, with their line numbers."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docstrings.add(id(node.value))  # an attribute docstring
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


_SUBQUERY = re.compile(r"\bFROM\s*\(\s*SELECT\b", re.I)
_ALIAS = re.compile(r"\s*(AS\s+)?(?!(WHERE|GROUP|ORDER|LIMIT|UNION|JOIN|ON)\b)[A-Za-z_]\w*", re.I)


def _unaliased_subquery(text: str) -> str | None:
    """A ``FROM (SELECT ...)`` with no alias after its closing parenthesis (PostgreSQL 15 needs one)."""
    for match in _SUBQUERY.finditer(text):
        depth, at = 0, text.index("(", match.start())
        while at < len(text):
            depth += {"(": 1, ")": -1}.get(text[at], 0)
            if depth == 0:
                break
            at += 1
        if not _ALIAS.match(text, at + 1):
            return text[at:at + 20].strip()
    return None


def problems(path: Path) -> list[str]:
    """One line per SQLite-only form in ``path``'s strings: where, what, and what to use instead."""
    found = []
    for line, text in sorted(_sql_strings(path)):
        for pattern, instead in FORBIDDEN:
            match = pattern.search(text)
            if match:
                found.append(f"{path.name}:{line}: {match.group(0)!r}: use {instead}")
        unaliased = _unaliased_subquery(text)
        if unaliased is not None:
            found.append(f"{path.name}:{line}: {unaliased!r}: use an alias for the subquery in FROM")
    return found


@pytest.mark.parametrize("path", [p for p in LINTED if p.name not in EXEMPT and not p.name.startswith(EXEMPT_PREFIXES)],
                         ids=lambda p: str(p.relative_to(ROOT / "coordinator")))
def test_store_sql_is_portable(path: Path) -> None:
    assert problems(path) == []


def test_the_lint_catches_each_sqlite_only_form(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text('''"""A docstring may say INSERT OR IGNORE and rowid."""
A = "INSERT OR IGNORE INTO t (a) VALUES (?)"
B = "SELECT * FROM t ORDER BY rowid"
C = "SELECT json_extract(labels, '$.a') FROM t"
D = "UPDATE t SET a = 1 WHERE b IS ?"
E = f"SELECT x FROM t INDEXED BY t_x WHERE y = {1}"
F = "UPDATE t SET a = max(a, ?)"
G = "SELECT ifnull(a, 0) FROM t"
H = "INSERT INTO job_logs (job_id, offset, data) VALUES (?, ?, ?)"
K = "INSERT INTO t (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET n = n + excluded.n"
I = "SELECT a, SUM(b) FROM (SELECT a, b FROM t UNION ALL SELECT a, b FROM u) GROUP BY a"
J = "SELECT a FROM (SELECT a FROM t WHERE b IN (1, 2)) AS x GROUP BY a"
OK = "SELECT MAX(a) FROM t WHERE b IS NOT DISTINCT FROM ? AND c IS NULL AND d IS NOT NULL"
MESSAGE = "the job is no longer queued"
''')
    assert [problem.split(": ", 1)[1].split(":", 1)[0] for problem in problems(module)] == [
        "'INSERT OR IGNORE'", "'rowid'", "'json_extract('", "'IS ?'", "'INDEXED'", "'max(a,'", "'ifnull('",
        "'offset,'", "'= n + excluded.'", "') GROUP BY a'",
    ]



# The query mixins (queries/, shared by every backend's store), the data access (repo/) and
# the services run over a ``Tx``: a driver's own types there would tie them to one database.
SHARED = [p for p in LINTED if p.parent.name in ("repo", "services", "queries")
]


@pytest.mark.parametrize("path", SHARED, ids=lambda p: str(p.relative_to(ROOT / "coordinator")))
def test_shared_store_code_names_no_driver(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported & {"sqlite3", "psycopg", "psycopg_pool"} == set()


@pytest.mark.parametrize("path", [p for p in LINTED if p.name != "__init__.py"],
                         ids=lambda p: str(p.relative_to(ROOT / "coordinator")))
def test_the_store_and_services_raise_no_http_errors(path: Path) -> None:
    """They raise ``coordinator.store.errors``; only the API speaks HTTP (coordinator/app.py maps them)."""
    tree = ast.parse(path.read_text(), str(path))
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {m for m in modules if m == "common.errors" or m.split(".")[0] in ("quart", "werkzeug")} == set()

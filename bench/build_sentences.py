"""Rebuild ``compressor/data/sentences.txt``: English sentences from the docstrings of the Python
standard library (PSF License 2.0), read with ``ast`` (nothing is imported), in a fixed order.

    python -m bench.build_sentences > compressor/data/sentences.txt

Kept: prose sentences of 6-40 words that start upper-case and end with . ! or ?, without code-like
characters; doctest, list and field paragraphs are skipped; tests and IDLE are left out. The file
shipped was built from Python 3.11.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo"}
CODE_LIKE = re.compile(r"[{}\[\]=<>|\\]|__|\w\(\)|::")
NOT_PROSE = re.compile(r"^\s*(>>>|\.\.\.|[-*]\s|\w+\s*:\s*$)", re.M)


def _docstrings(tree: ast.AST) -> list[str]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for n in ast.walk(tree) if isinstance(n, kinds) and (d := ast.get_docstring(n))]


def sentences(root: Path) -> list[str]:
    out: set[str] = set()
    for f in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(f.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for doc in _docstrings(tree):
            for para in re.split(r"\n\s*\n", doc):
                if NOT_PROSE.search(para):
                    continue
                for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(para.split())):
                    words = len(s.split())
                    if 6 <= words <= 40 and s[0].isupper() and s[-1] in ".!?" and not CODE_LIKE.search(s):
                        out.add(s)
    return sorted(out, key=lambda x: hashlib.sha1(x.encode()).hexdigest())


def main() -> int:
    found = sentences(Path(sysconfig.get_paths()["stdlib"]))
    print(len(found), file=sys.stderr)
    print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())

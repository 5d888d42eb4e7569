"""trafilatura vs resiliparse on the bundled corpus's HTML: speed and quality, same pages, same run.

Usage:
    python benchmarks/extract_compare.py [--root DEBS_ROOT] [--limit N] [--show PAGE]

`--root` is a directory where the two Debian packages of scripts/build_sample.sh are unpacked
(default /tmp/debs/root; to make one: ``apt-get download python3.11-doc debian-handbook`` and
``dpkg-deb -x PKG.deb ROOT`` for each). Pages are chosen with the same excludes as the sample build.

Both go through `homegrown.data.extract.extract_html` (the same HTML fixes, tidy-up and language ID),
so the difference is the extractor. Printed per extractor:

* speed: pages/s and MB/s of input HTML (wall time, one process);
* pages with no text (None);
* agreement with trafilatura: bag-of-words overlap of the two texts of each page (precision: share of
  resiliparse's words trafilatura also has; recall: share of trafilatura's words resiliparse has),
  summed over pages;
* code kept: share of the lines of every ``<pre>`` block (lines with 8+ characters) that appear in
  the text — code is the part of technical docs a model most needs verbatim;
* headings kept: share of ``<h1>``–``<h3>`` texts outside navigation that appear in the text.

`--show PAGE` prints both extractions of pages whose path contains PAGE, to look at them.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from pathlib import Path

import lxml.html

from homegrown.data.extract import EXTRACTORS, extract_html
from homegrown.data.sources import is_excluded

# the sources and excludes of scripts/build_sample.sh
SOURCES = {
    "usr/share/doc/python3.11/html": [
        "_*", "includes", "distutils/_setuptools_disclaimer.html", "genindex*", "py-modindex*", "search.html",
        "download.html", "index.html", "contents.html", "faq/index.html", "using/index.html",
    ],
    "usr/share/doc/debian-handbook/html/en-US": [],
}  # fmt: skip
_WORDS = re.compile(r"\w+")
_WS = re.compile(r"\s+")
# sidebars, breadcrumbs and footers: their headings ("Previous topic", "This Page") are not page content
_IN_NAVIGATION = (
    "ancestor::*[@role='navigation' or contains(@class, 'sphinxsidebar') or contains(@class, 'related')"
    " or contains(@class, 'footer') or contains(@class, 'docnav') or @id='banner']"
)


def pages(root: Path) -> list[Path]:
    """The HTML files the bundled corpus is built from, in a fixed order."""
    out = []
    for sub, patterns in SOURCES.items():
        base = root / sub
        if not base.is_dir():
            raise SystemExit(f"{base} not found: unpack python3.11-doc and debian-handbook under --root (see --help)")
        out += [p for p in sorted(base.rglob("*.html")) if not is_excluded(p.relative_to(base).as_posix(), patterns)]
    return out


def _reference(html: bytes) -> tuple[list[str], list[str]]:
    """(code lines of <pre> blocks, h1–h3 texts), whitespace-normalised, from the raw page."""
    tree = lxml.html.fromstring(html)
    code = [
        _WS.sub(" ", line).strip()
        for pre in tree.iter("pre")
        for line in pre.text_content().splitlines()
        if len(line.strip()) >= 8
    ]
    heads = [
        _WS.sub(" ", h.text_content().replace("¶", "")).strip()
        for h in tree.iter("h1", "h2", "h3")
        if not h.xpath(_IN_NAVIGATION)
    ]
    return code, [h for h in heads if h]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/debs/root"))
    parser.add_argument("--limit", type=int, default=0, help="only the first N pages (0 = all)")
    parser.add_argument("--show", default="", help="print both extractions of pages whose path contains this")
    args = parser.parse_args()
    files = pages(args.root)
    if args.limit:
        files = files[:: max(1, len(files) // args.limit)][: args.limit]  # spread over both sources
    htmls = [f.read_bytes() for f in files]
    mb = sum(map(len, htmls)) / 1e6
    extract_html(htmls[0])  # load the language model outside the timings
    texts: dict[str, list[str]] = {}
    print(f"{len(files)} pages, {mb:.1f} MB of HTML")
    print(f"{'extractor':12} {'pages/s':>8} {'MB/s':>6} {'empty':>6} {'words':>9} {'code kept':>10} {'headings':>9}")
    refs = [_reference(h) for h in htmls]
    for name in EXTRACTORS:
        start = time.perf_counter()
        results = [extract_html(h, extractor=name) for h in htmls]
        elapsed = time.perf_counter() - start
        texts[name] = [r.text if r else "" for r in results]
        flat = [_WS.sub(" ", t) for t in texts[name]]
        code = [line in t for (lines, _), t in zip(refs, flat, strict=True) for line in lines]
        heads = [h in t for (_, hs), t in zip(refs, flat, strict=True) for h in hs]
        words = sum(len(_WORDS.findall(t)) for t in texts[name])
        print(
            f"{name:12} {len(files) / elapsed:8.1f} {mb / elapsed:6.2f} {results.count(None):6d} {words:9d} "
            f"{sum(code) / max(1, len(code)):10.3f} {sum(heads) / max(1, len(heads)):9.3f}"
        )
    base, other = (Counter(_WORDS.findall(t)) for t in ("\n".join(texts[n]) for n in EXTRACTORS))
    common = sum((base & other).values())
    precision, recall = common / max(1, sum(other.values())), common / max(1, sum(base.values()))
    print(f"word agreement of {EXTRACTORS[1]} with {EXTRACTORS[0]}: precision {precision:.3f}, recall {recall:.3f}")
    if args.show:
        for f, *pair in zip(files, *(texts[n] for n in EXTRACTORS), strict=True):
            if args.show in str(f):
                for name, text in zip(EXTRACTORS, pair, strict=True):
                    print(f"\n===== {name}: {f}\n{text[:3000]}")


if __name__ == "__main__":
    main()

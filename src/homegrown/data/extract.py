"""HTML → main text, title and language, with trafilatura (default) or resiliparse.

Contract used by the ingest stage: ``extract_html(html, url=None, extractor=DataConfig.extractor)`` returns
``Extracted(text, title, lang, lang_confidence)`` or None; ``identify_language(text) -> (lang, confidence)``;
``EXTRACTORS`` lists the accepted names (`DataConfig.extractor`); ``EXTRACTOR_OPTIONS[name]`` their settings.

The extractor decides what is boilerplate. benchmarks/extract_compare.py measures both on the 618 pages
(46.7 MB of HTML) the bundled corpus is built from, through this module: resiliparse 8.7 pages/s
(0.65 MB/s) vs trafilatura 1.6 pages/s (0.12 MB/s), 5.4× faster on a busy 2-core machine; the same
words (1.580 M vs 1.580 M, bag-of-words agreement 0.993 both ways); code lines of ``<pre>`` kept 0.998
vs 0.995, headings kept 0.996 vs 0.988 (trafilatura drops a few paragraphs and headings of Handbook
pages and runs code into the next line). So resiliparse is the default (`DataConfig.extractor`).
Its known losses: it empties one page, the Python copyright notice (footer-like; the boilerplate
filter rejects it anyway), and in main-content mode it drops a text node that is only "…" between
two inline elements ("if … elif" → "ifelif").
Language identification is py3langid (langid.py's model, shipped inside the package, no download):
ISO 639-1 code and a normalised probability; "zxx" means no linguistic content (code, numbers).

Before either extractor runs, `_prepare` makes a few fixes that are safe for any page and recover
text the extractors would otherwise lose on documentation sites (measured on the bundled corpus, see
data/sample/README.md):

* Whitespace outside ``<pre>`` is collapsed, as a browser would render it, so hard-wrapped or
  tab-indented HTML source does not leak into the text; ``<pre>`` keeps its indentation (code).
* Sphinx permalink anchors (``a.headerlink``, the "¶" after each heading) and empty link targets
  (``<a id=…></a>``, which make trafilatura drop the heading that holds them) are removed.
* Site navigation of the two generators in the bundled corpus is removed (Sphinx: ARIA ``role=navigation``,
  ``div.footer``; Publican: ``ul.docnav``, ``#banner``, ``p#title``): on short pages trafilatura falls
  back to the whole body and would keep it.
* DocBook/Publican boxed notes (TIP, CAUTION …) are ``div.sidebar``, which trafilatura drops as page
  chrome, so they are renamed to ``div.note``; DocBook headings ``h1..h6.title`` are dropped by
  trafilatura's recall mode, so they become paragraphs.

For resiliparse, ``class`` attributes of inline elements are also dropped: its main-content heuristics
remove Sphinx cross-reference markup (``<code class="xref …">``) and with it words from sentences.

trafilatura settings: ``favor_recall=True``, tables on, comments off, formatting off (plain text). Measured on
the bundled corpus as words extracted / words of visible main text: the Handbook keeps 0.97 with
these fixes and recall mode, 0.76 with the fixes in the default balanced mode, 0.61 with neither;
the Python docs keep 0.97 in every mode (the pages trafilatura skips are tables of contents).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from functools import cache

import lxml.html
import trafilatura
from lxml.etree import ParserError
from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree
from trafilatura.metadata import examine_meta, extract_meta_json, extract_title

from homegrown.config import DataConfig
from homegrown.errors import HomegrownError

EXTRACTORS = ("trafilatura", "resiliparse")

# Passed to trafilatura for every page, and recorded in the corpus MANIFEST.json.
TRAFILATURA_OPTIONS: dict[str, bool] = {
    "favor_recall": True,
    "include_comments": False,
    "include_tables": True,
    "include_formatting": False,
    "include_images": False,
    "include_links": False,
}

# Passed to resiliparse's extract_plain_text for every page.
RESILIPARSE_OPTIONS: dict[str, bool] = {"main_content": True, "preserve_formatting": True, "list_bullets": True}
EXTRACTOR_OPTIONS: dict[str, dict[str, bool]] = {"trafilatura": TRAFILATURA_OPTIONS, "resiliparse": RESILIPARSE_OPTIONS}
"""The settings of each extractor, for a corpus MANIFEST to record next to the extractor's name."""

# A page with fewer word characters than this is navigation or an empty stub, not text.
MIN_WORD_CHARS = 20

_WS = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "dd", "div", "dl", "dt", "figcaption", "figure",
        "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "li", "main", "nav", "ol", "p",
        "section", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    }
)  # fmt: skip
_HAS_CLASS = 'contains(concat(" ", normalize-space(@class), " "), " {} ")'
_DOCBOOK_SIDEBAR = f"//div[{_HAS_CLASS.format('sidebar')}][div[{_HAS_CLASS.format('titlepage')}]]"
_DOCBOOK_HEADING = "//*[self::h1 or self::h2 or self::h3 or self::h4 or self::h5 or self::h6][@class='title']"
_SPHINX_HEADERLINK = f"//a[{_HAS_CLASS.format('headerlink')}]"
_EMPTY_ANCHOR = "//a[not(@href)][not(node())]"
_NAV_CHROME = (
    f"//ul[{_HAS_CLASS.format('docnav')}]|//div[@id='banner']|//p[@id='title']"  # Publican
    f"|//*[@role='navigation']|//div[{_HAS_CLASS.format('footer')}]"  # Sphinx: ARIA navigation, footer
)


# Language identification looks at this much text: enough for a confident answer, bounded cost per page.
LANGID_CHARS = 10_000
_INLINE_TAGS = frozenset({"a", "abbr", "b", "cite", "code", "em", "i", "kbd", "samp", "small", "span", "strong", "var"})


@dataclass(frozen=True)
class Extracted:
    """The main text of one page, its title (None when the page has none) and its language."""

    text: str
    title: str | None
    lang: str | None = None
    """ISO 639-1 code from py3langid, "zxx" when the text has no linguistic content."""
    lang_confidence: float = 0.0
    """py3langid's normalised probability of `lang`, 0 … 1."""


@cache
def _language_identifier() -> LanguageIdentifier:
    """Loaded once per process (a few seconds: the model is a compressed numpy archive)."""
    return LanguageIdentifier.from_model_file(MODEL_DIR / MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the first LANGID_CHARS characters of `text`."""
    lang, prob = _language_identifier().classify(text[:LANGID_CHARS])
    return str(lang), float(prob)


def _collapse_whitespace(tree: lxml.html.HtmlElement) -> None:
    """Render whitespace as a browser does: runs become one space, except in <pre> (code keeps its indent)."""
    for el in tree.iter():
        if not isinstance(el.tag, str):  # comments, processing instructions
            continue
        in_pre = el.tag == "pre" or any(a.tag == "pre" for a in el.iterancestors())
        if el.text and not in_pre:
            el.text = _WS.sub(" ", el.text)
            if el.tag in _BLOCK_TAGS:
                el.text = el.text.lstrip()
        # the tail belongs to the parent: it is code only when the parent is (inside) a <pre>
        if el.tail and not (in_pre and el.tag != "pre"):
            el.tail = _WS.sub(" ", el.tail)
            if el.tag in _BLOCK_TAGS:
                el.tail = el.tail.lstrip()


def _decode(data: bytes) -> str:
    """Bytes → text: BOM, then <meta charset> / XML declaration, then uchardet's guess (resiliparse).

    lxml alone assumes Latin-1 for bytes that declare nothing, which garbles every UTF-8 page without
    a <meta charset> ("entiÃ¨res"); undecodable bytes become U+FFFD instead of failing the page.
    """
    return bytes_to_str(data, detect_encoding(data, from_html_meta=True), errors="replace")


def _prepare(html: bytes | str) -> lxml.html.HtmlElement | None:
    """Parse and apply the fixes described in the module docstring; None when the bytes are not HTML."""
    text = html if isinstance(html, str) else _decode(html)
    # lxml refuses str input that carries an XML encoding declaration, and C0 control characters anywhere
    # (not allowed in XML text) make it refuse the whole page; neither is something a reader would see
    markup = _CONTROL_CHARS.sub("", _XML_DECLARATION.sub("", text, count=1))
    try:
        tree = lxml.html.fromstring(markup)
    except (ParserError, ValueError):
        return None
    for el in tree.xpath(_DOCBOOK_SIDEBAR):
        el.set("class", "note")
    for el in tree.xpath(_DOCBOOK_HEADING):
        el.tag = "p"
    for el in tree.xpath(_SPHINX_HEADERLINK) + tree.xpath(_EMPTY_ANCHOR) + tree.xpath(_NAV_CHROME):
        el.drop_tree()
    _collapse_whitespace(tree)
    return tree


def _tidy(text: str) -> str:
    """Strip trailing spaces per line and keep at most one blank line; leading spaces may be code indent."""
    lines = [line.rstrip() for line in text.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


def _trafilatura(tree: lxml.html.HtmlElement, url: str | None) -> tuple[str | None, str | None]:
    # Only the title is wanted from the metadata, and trafilatura's full metadata pass (htmldate's date
    # search, authors, categories) costs more than the text extraction itself. This is the title part of
    # trafilatura.metadata.extract_metadata (meta tags, then JSON-LD, then <title>/<h1>); on 80 bundled
    # pages it gave the same titles and texts as with_metadata=True, in 0.4× the time (benchmarks/ingest.py).
    meta = examine_meta(tree)
    with contextlib.suppress(Exception):  # trafilatura guards this call the same way (bugs in its JSON-LD parser)
        meta = extract_meta_json(tree, meta)
    title = meta.title or extract_title(tree)
    doc = trafilatura.bare_extraction(tree, url=url, with_metadata=False, **TRAFILATURA_OPTIONS)
    if doc is None:
        return None, None
    return doc.text, title


def _resiliparse(tree: lxml.html.HtmlElement) -> tuple[str | None, str | None]:
    for el in tree.iter(*_INLINE_TAGS):
        el.attrib.pop("class", None)
    parsed = HTMLTree.parse(lxml.html.tostring(tree, encoding="unicode"))
    text = extract_plain_text(parsed, **RESILIPARSE_OPTIONS)
    # the page's own <h1> is the title a reader sees; <title> often appends the site name
    h1 = tree.find(".//h1")
    title = h1.text_content() if h1 is not None and h1.text_content().strip() else parsed.title
    return text, title


def extract_html(html: bytes | str, url: str | None = None, extractor: str = DataConfig.extractor) -> Extracted | None:
    """Return the page's main text, title and language, or None when it has no usable text.

    `url` only helps trafilatura's heuristics; provenance is recorded by the caller. `extractor` is
    one of EXTRACTORS.
    """
    if extractor not in EXTRACTORS:
        raise HomegrownError(f"unknown extractor {extractor!r}; choose one of: {', '.join(EXTRACTORS)}")
    tree = _prepare(html)
    if tree is None:
        return None
    raw, title = _trafilatura(tree, url) if extractor == "trafilatura" else _resiliparse(tree)
    if not raw:
        return None
    text = _tidy(raw)
    if len(_WORD.findall(text)) < MIN_WORD_CHARS:
        return None
    title = _WS.sub(" ", title).strip() if title else None
    lang, confidence = identify_language(text)
    return Extracted(text=text, title=title or None, lang=lang, lang_confidence=confidence)

"""HTML extraction with both extractors, title, language identification, extractor selection."""

from __future__ import annotations

import pytest

from homegrown.config import DataConfig
from homegrown.data.extract import EXTRACTORS, extract_html, identify_language
from homegrown.errors import HomegrownError

SPHINX_PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>4. More Control Flow Tools — Python 3.11 documentation</title></head><body>
<div class="related" role="navigation"><h3>Navigation</h3><ul><li><a href="index.html">index</a></li>
<li><a href="modules.html">modules</a></li><li><a href="next.html">next</a></li></ul></div>
<div class="document"><div class="body" role="main">
<section id="more-control-flow-tools"><h1>4. More Control Flow Tools<a class="headerlink" href="#m">¶</a></h1>
<p>Besides the <code class="xref std std-keyword docutils literal notranslate"><span class="pre">while</span></code>
statement just introduced, Python uses the usual flow control statements known from other languages,
with some twists that this chapter explains with small examples.</p>
<section id="if-statements"><h2>4.1. if Statements<a class="headerlink" href="#if">¶</a></h2>
<p>Perhaps the most well-known statement type is the if statement. For example:</p>
<div class="highlight-python3"><div class="highlight">
<pre><span></span>&gt;&gt;&gt; x = int(input("Please enter an integer: "))
&gt;&gt;&gt; if x &lt; 0:
...     x = 0
...     print('Negative changed to zero')
</pre></div></div>
<p>There can be zero or more elif parts, and the else part is optional. The keyword elif is short
for else if, and is useful to avoid excessive indentation in long chains of conditions.</p>
</section></section></div></div>
<div class="sphinxsidebar" role="navigation"><h3>Previous topic</h3>
<p><a href="x.html">3. An Informal Introduction</a></p>
<h3>This Page</h3><ul><li><a href="_sources/x.rst.txt">Show Source</a></li></ul></div>
<div class="footer">© Copyright 2001-2023, Python Software Foundation. Last updated on Mar 01, 2023.</div>
</body></html>"""

FRENCH_PAGE = """<html><head><title>Le serpent</title></head><body><article><h1>Le serpent</h1>
<p>Les serpents sont des reptiles sans pattes qui vivent sur presque tous les continents. Ils se
nourrissent de petits animaux et avalent leurs proies entières, grâce à une mâchoire très souple.</p>
<p>La plupart des espèces ne sont pas dangereuses pour l'homme, mais certaines possèdent un venin
puissant qu'elles utilisent pour chasser et pour se défendre contre leurs prédateurs.</p>
</article></body></html>"""


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_main_text_code_title_and_language(extractor: str) -> None:
    page = extract_html(SPHINX_PAGE, url="https://docs.python.org/3.11/tutorial/controlflow.html", extractor=extractor)
    assert page is not None
    assert page.title == "4. More Control Flow Tools"
    assert "Besides the while statement just introduced" in page.text
    assert "4.1. if Statements" in page.text and "¶" not in page.text
    assert ">>> if x < 0:\n...     x = 0\n...     print('Negative changed to zero')" in page.text  # code keeps indent
    assert "useful to avoid excessive indentation" in page.text
    for chrome in ("Previous topic", "Show Source", "Python Software Foundation", "modules"):
        assert chrome not in page.text
    assert (page.lang, page.lang_confidence > 0.9) == ("en", True)


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_other_languages_and_empty_pages(extractor: str) -> None:
    page = extract_html(FRENCH_PAGE.encode("utf-8"), extractor=extractor)
    assert page is not None and page.title == "Le serpent"
    assert page.lang == "fr" and page.lang_confidence > 0.9
    assert extract_html("<html><body><nav>Home</nav><p>Hi.</p></body></html>", extractor=extractor) is None
    assert extract_html(b"\x00\x01 not html at all", extractor=extractor) is None


def test_identify_language() -> None:
    assert identify_language("The quick brown fox jumps over the lazy dog near the river bank.")[0] == "en"
    lang, confidence = identify_language("Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.")
    assert lang == "de" and 0.5 < confidence <= 1.0


def test_extractor_is_selectable_and_checked() -> None:
    assert DataConfig().extractor in EXTRACTORS
    with pytest.raises(HomegrownError, match="unknown extractor 'boilerpipe'"):
        extract_html(SPHINX_PAGE, extractor="boilerpipe")


def test_control_bytes_and_utf16_do_not_lose_the_page() -> None:
    dirty = FRENCH_PAGE.replace("Ils se", "Ils\x00 se\x07").encode("utf-8")
    page = extract_html(dirty)
    assert page is not None and "Ils se nourrissent" in page.text
    utf16 = extract_html(FRENCH_PAGE.encode("utf-16"))
    assert utf16 is not None and "avalent leurs proies entières" in utf16.text

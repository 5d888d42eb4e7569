#!/usr/bin/env bash
# Rebuild the bundled corpus data/sample/ from the Debian packages of two freely licensed manuals:
#   python3.11-doc   (Python 3.11 documentation, PSF-2.0)
#   debian-handbook  (The Debian Administrator's Handbook, GPL-2.0-or-later OR CC-BY-SA-3.0)
# Needs a Debian/Ubuntu machine whose apt knows both packages (run `apt-get update` first), and the
# homegrown package importable by $PYTHON (default: python). The packages are downloaded and unpacked
# in a temporary directory; nothing is installed. Set DEBS_ROOT to a directory where both packages are
# already unpacked (`dpkg-deb -x pkg.deb DIR`) to skip the download. OUT overrides the output directory.
# The rules here (excludes, licences, URL prefixes) are the ones described in data/sample/README.md.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$repo/data/sample}
python=${PYTHON:-python}

if [[ -n "${DEBS_ROOT:-}" ]]; then
    root=$DEBS_ROOT
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download python3.11-doc debian-handbook)
    root=$work/root
    for deb in "$work"/*.deb; do
        echo "unpacking $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
        dpkg-deb -x "$deb" "$root"
    done
fi

# Python docs: skip Sphinx internals (the top-level _static, _sources, _downloads, _images), fragments
# that are only included into other pages (includes/, distutils/_setuptools_disclaimer.html), generated
# indexes, search, the download page, and pages that are only a table of contents (index.html,
# contents.html, faq/index.html, using/index.html). Not `*/_*`: library/__future__.html is a real page.
"$python" -m homegrown.data.ingest \
    --source "$root/usr/share/doc/python3.11/html:PSF-2.0:https://docs.python.org/3.11/" \
        --exclude '_*' --exclude includes --exclude distutils/_setuptools_disclaimer.html \
        --exclude 'genindex*' --exclude 'py-modindex*' --exclude search.html --exclude download.html \
        --exclude index.html --exclude contents.html --exclude faq/index.html --exclude using/index.html \
    --source "$root/usr/share/doc/debian-handbook/html/en-US:GPL-2.0-or-later OR CC-BY-SA-3.0:https://debian-handbook.info/browse/en-US/stable/" \
    --holdout-fraction 0.05 \
    --out "$out"

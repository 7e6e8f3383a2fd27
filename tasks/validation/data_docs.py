"""Data Docs that open offline.

GX 1.24's pages load bootstrap, jQuery, popper, bootstrap-table, bootstrap-datepicker, Font
Awesome, bootstrap-dark and vega from CDNs, and their logo from S3 (with the project's id in the
query): offline the index is unstyled, its tables empty and its status icons blank. GX offers no
hook for those links (its templates come before any custom view in the Jinja loader), so
:class:`OfflineSiteBuilder`, which ``gx/great_expectations.yml`` names as the site's builder, lets
GX build as usual, then copies the vendored files (``tasks.core.web_assets``) into the site's
``static/vendor/`` and points every page at them. A page still loading anything from outside
after that is an error naming it: a GX upgrade that adds a CDN link fails the tests, not a user.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from great_expectations.render.renderer.site_builder import SiteBuilder

from tasks.core.errors import MlcycleError
from tasks.core.web_assets import VEGA, VEGA_EMBED, VEGA_LITE, VENDOR_DIR, vendored

log = logging.getLogger(__name__)

SITE_VENDOR = Path("static/vendor")  # inside the Data Docs site
SITE_IMAGES = Path("static/images")  # GX copies its own images there

# Each CDN address in GX 1.24's templates and the vendored file that replaces it (popper's and
# bootstrap's integrity hashes in the templates match these copies: tests/unit checks it).
CDN_FILES = {
    "https://cdn.jsdelivr.net/npm/vega@5": VEGA,
    "https://cdn.jsdelivr.net/npm/vega-lite@5": VEGA_LITE,
    "https://cdn.jsdelivr.net/npm/vega-embed@6": VEGA_EMBED,
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery@3.7.1/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": (
        "popper.js@1.12.9/dist/umd/popper.min.js"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap@4.3.1/dist/js/bootstrap.min.js"
    ),
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap@4.3.1/dist/css/bootstrap.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "bootstrap-table@1.19.1/dist/bootstrap-table.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table@1.19.1/dist/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.js": (
        "bootstrap-table@1.19.1/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.min.js"
    ),
    # the templates take the filter-control CSS from 1.19.0 (the JS from 1.19.1): one version
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.css": (
        "bootstrap-table@1.19.1/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.css": (
        "bootstrap-table@1.19.1/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js": "bootstrap-datepicker@1.9.0/dist/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css": (
        "bootstrap-datepicker@1.9.0/dist/css/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "fontawesome-free@6.6.0/css/all.min.css"
    ),
    # the minified build of the same stylesheet (the plain one carries a 700 kB source map)
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css": "bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.min.css",
}

# GX's logo (and its dark-mode variant, which GX does not ship) from S3 -> its local copy
GX_ASSETS_HOST = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
GX_IMAGES = {"logo-long.png": "logo-long.png", "full_logo_dark.png": "logo-long.png"}

_SCRIPT = re.compile(r'<script\b[^>]*?\bsrc="(?P<url>https?://[^"]+)"[^>]*>')
_STYLESHEET = re.compile(r'<link\b[^>]*?\bhref="(?P<url>https?://[^"]+)"[^>]*>')
_GX_IMAGE = re.compile(re.escape(GX_ASSETS_HOST) + r"(?P<name>[\w.-]+)(?:\?[^\"')\s]*)?")
# what a browser fetches by itself: <script src>, <link href>, <img src>, <iframe src>, CSS url()
_FETCHED = re.compile(
    r'<(?:script|link|img|iframe|source|embed)\b[^>]*?\b(?:src|href)="(?P<tag>https?://[^"]+)"'
    r"|url\(\s*['\"]?(?P<css>https?://[^'\")\s]+)"
)


class OfflineSiteBuilder(SiteBuilder):
    """GX's SiteBuilder, whose pages then load every asset from the site's own folder."""

    def build(self, resource_identifiers: Any = None, build_index: bool = True) -> Any:
        built = super().build(resource_identifiers=resource_identifiers, build_index=build_index)
        make_offline(site_directory(self.target_store))
        return built


def site_directory(target_store: Any) -> Path:
    """The folder a filesystem Data Docs site is written to."""
    backend = target_store.store_backends["index_page"]
    folder = getattr(backend, "full_base_directory", None)
    if folder is None:
        raise MlcycleError(
            "gx/great_expectations.yml: data_docs_sites: OfflineSiteBuilder needs a "
            f"filesystem store_backend (TupleFilesystemStoreBackend), not {type(backend).__name__}"
        )
    return Path(folder)


def make_offline(site: Path) -> list[Path]:
    """Copy the vendored assets into ``site`` and rewrite every page that still points at a CDN.
    Returns the pages rewritten; raises naming a page that would still fetch from outside."""
    copy_vendored(site / SITE_VENDOR)
    rewritten = []
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        local = offline_page(text, page.relative_to(site))
        if local != text:
            page.write_text(local, encoding="utf-8")
            rewritten.append(page)
    return rewritten


def copy_vendored(target: Path) -> None:
    """The vendored packages (files and licences) the pages use, into ``target``."""
    for name in CDN_FILES.values():
        vendored(name)  # a missing file is named here, not as a blank page later
    for package in sorted({name.split("/", 1)[0] for name in CDN_FILES.values()}):
        shutil.copytree(VENDOR_DIR / package, target / package, dirs_exist_ok=True)


def offline_page(text: str, page: Path) -> str:
    """``text`` of the page at ``page`` (relative to the site's root) with each CDN asset
    replaced by the site's copy: the tags lose ``integrity``/``crossorigin``, which a page opened
    from ``file://`` cannot satisfy."""
    up = Path(os.path.relpath(".", page.parent))

    def local(folder: Path, name: str) -> str:
        return (up / folder / name).as_posix()

    def script(match: re.Match[str]) -> str:
        name = CDN_FILES.get(match["url"])
        return match[0] if name is None else f'<script src="{local(SITE_VENDOR, name)}">'

    def stylesheet(match: re.Match[str]) -> str:
        name = CDN_FILES.get(match["url"])
        if name is None or "stylesheet" not in match[0]:
            return match[0]
        return f'<link rel="stylesheet" href="{local(SITE_VENDOR, name)}">'

    def gx_image(match: re.Match[str]) -> str:
        name = GX_IMAGES.get(match["name"])
        return match[0] if name is None else local(SITE_IMAGES, name)

    text = _SCRIPT.sub(script, text)
    text = _STYLESHEET.sub(stylesheet, text)
    text = _GX_IMAGE.sub(gx_image, text)
    outside = list(fetched_from_outside(text))
    if outside:  # a report's flaw, not the data's: the gate's verdict stands (tests are strict)
        log.warning(
            "Data Docs page %s: still loads %s from outside; add it to tasks/validation/"
            "data_docs.py CDN_FILES (and vendor it: tasks/static/vendor/update.sh)",
            page,
            ", ".join(outside),
        )
    return text


def fetched_from_outside(text: str) -> Iterable[str]:
    """The addresses beyond this machine a browser would fetch for the page ``text``."""
    for match in _FETCHED.finditer(text):
        yield match["tag"] or match["css"]

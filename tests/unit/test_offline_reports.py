"""The reports a user opens as files load nothing from outside: DVC's page template carries vega
inline, GX's Data Docs point at the site's own copies of the vendored assets.
(tests/browser/test_reports.py opens them in Chromium with the network off.)"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
from pathlib import Path

from tasks.core.web_assets import (
    DVC_PLOTS_TEMPLATE,
    VEGA_SCRIPTS,
    VENDOR_DIR,
    dvc_plots_template,
    licence_of,
)
from tests.helpers import REPO_ROOT

GX_TEMPLATES = (
    Path(importlib.util.find_spec("great_expectations").submodule_search_locations[0])
    / "render/view/templates"
)  # found without importing GX (5 s)
ASSET_TAG = re.compile(r'<(?:script|link)\b[^>]*?\b(?:src|href)="(https?://[^"]+)"[^>]*>')


def test_the_committed_dvc_template_is_the_generated_one():
    """``python -m tasks.core.web_assets`` (update.sh runs it) writes it from the vendored vega."""
    assert (REPO_ROOT / DVC_PLOTS_TEMPLATE).read_text(encoding="utf-8") == dvc_plots_template()


def test_dvc_uses_the_template_and_it_loads_nothing_from_outside():
    from dvc.repo import Repo

    with Repo(str(REPO_ROOT)) as repo:
        configured = Path(repo.dvc_dir) / repo.config["plots"]["html_template"]
    assert configured.resolve() == (REPO_ROOT / DVC_PLOTS_TEMPLATE).resolve()
    page = dvc_plots_template()
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page  # DVC would put its CDN <script> tags there
    assert not re.findall(r'src="https?://', page)
    for name in VEGA_SCRIPTS:  # each library whole, after its licence
        code = (VENDOR_DIR / name).read_text(encoding="utf-8")
        notice = licence_of(name).read_text(encoding="utf-8")
        assert f"{notice}*/\n{code}" in page


def test_every_vendored_package_carries_its_licence():
    packages = [folder for folder in VENDOR_DIR.iterdir() if folder.is_dir()]
    assert len(packages) == 10
    for package in packages:
        assert {"LICENSE", "LICENSE.txt"} & {p.name for p in package.iterdir()}, package


def test_every_cdn_asset_of_gx_templates_has_a_vendored_copy():
    """Read from the installed GX: an upgrade that adds or moves a CDN link fails here."""
    from tasks.validation.data_docs import CDN_FILES

    linked = {
        url
        for template in GX_TEMPLATES.glob("*.j2")
        for url in ASSET_TAG.findall(template.read_text(encoding="utf-8"))
    }
    assert linked and linked <= set(CDN_FILES)
    for name in CDN_FILES.values():
        assert (VENDOR_DIR / name).is_file(), name


def test_vendored_copies_match_the_integrity_hashes_gx_pins():
    """popper's and bootstrap's tags carry SRI hashes of the CDN files: ours are those bytes."""
    from tasks.validation.data_docs import CDN_FILES

    text = (GX_TEMPLATES / "js_script_imports.j2").read_text(encoding="utf-8")
    pinned = re.findall(r'src="([^"]+)" integrity="sha384-([^"]+)"', text)
    assert len(pinned) == 2
    for url, digest in pinned:
        ours = hashlib.sha384((VENDOR_DIR / CDN_FILES[url]).read_bytes()).digest()
        assert base64.b64encode(ours).decode() == digest, url


def test_a_page_deep_in_the_site_points_up_to_the_site_copies():
    from tasks.validation.data_docs import offline_page

    page = (
        '<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/'
        'bootstrap.min.css"/>\n<script src="https://cdnjs.cloudflare.com/ajax/libs/popper.js/'
        '1.12.9/umd/popper.min.js" integrity="sha384-x" crossorigin="anonymous"></script>\n'
        '<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/'
        'logo-long.png?d=20261207T0&dataContextId=711b" alt="GX"/>\n'
        "<style>.a { background: url('https://great-expectations-web-assets.s3.us-east-2."
        "amazonaws.com/full_logo_dark.png') 0 0 }</style>\n"
        '<a href="https://greatexpectations.io">a link is not a fetch</a>'
    )
    local = offline_page(page, Path("validations/raw_samples/__none__/run/page.html"))
    up = "../../../../"
    assert f'href="{up}static/vendor/bootstrap@4.3.1/dist/css/bootstrap.min.css"' in local
    assert f'<script src="{up}static/vendor/popper.js@1.12.9/dist/umd/popper.min.js"></script>' in (
        local
    )
    assert f'<img src="{up}static/images/logo-long.png" alt="GX"/>' in local
    assert f"url('{up}static/images/logo-long.png')" in local
    assert 'href="https://greatexpectations.io"' in local
    assert offline_page(local, Path("validations/raw_samples/__none__/run/page.html")) == local


def test_a_cdn_asset_nobody_vendored_is_named(caplog):
    from tasks.validation.data_docs import offline_page

    page = '<script src="https://cdn.example.org/new-widget.js"></script>'
    offline_page(page, Path("index.html"))  # a warning: the data gate's verdict stands
    assert "index.html: still loads https://cdn.example.org/new-widget.js" in caplog.text


def test_data_docs_of_a_real_validation_load_everything_from_the_site(tmp_path, places):
    from tasks.stages.validate import run_validate
    from tasks.validation.data_docs import CDN_FILES, fetched_from_outside
    from tests.unit.test_validate import PARAMS, clean, raw_batch

    images, labels, meta = clean()
    run_validate(PARAMS, raw_batch(tmp_path / "raw", images, labels, meta), tmp_path / "v", places)
    site = places.data_docs.parent
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 3  # the index, the suite, the validation result
    index = (site / "index.html").read_text(encoding="utf-8")
    assert f"raw_samples-{len(images)}-rows" in index and "__none__" not in index  # Run Name
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not list(fetched_from_outside(text)), page
        for src in re.findall(r'(?:src|href)="([^"#:]+\.(?:js|css))"', text):
            assert (page.parent / src).is_file(), (page, src)
    for name in CDN_FILES.values():  # each copy with its licence
        package = site / "static" / "vendor" / name.split("/", 1)[0]
        assert (site / "static" / "vendor" / name).is_file()
        assert (package / licence_of(name).name).is_file()

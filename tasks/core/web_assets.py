"""The browser assets of the reports a user opens as files, so that they work offline.

DVC's plots page and GX's Data Docs load vega, bootstrap, jQuery, Font Awesome ... from CDNs:
on a machine without internet the charts and tables are blank. The files are vendored from the
npm registry under ``tasks/static/vendor/<package>@<version>/``, byte for byte, each with its
licence (``update.sh`` there fetches them again).

``python -m tasks.core.web_assets`` writes DVC's page template ``.dvc/plots/page.html`` (the one
``.dvc/config`` names as ``plots.html_template``): vega inline, so ``dvc_plots/index.html`` is
one self-contained file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.core.errors import MlcycleError

VENDOR_DIR = Path(__file__).resolve().parent.parent / "static" / "vendor"
DVC_PLOTS_TEMPLATE = Path(".dvc/plots/page.html")  # relative to the repository root

# The majors DVC 3.67's own page loads (vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2) and GX's
# `vega@5`, `vega-lite@5`, `vega-embed@6` resolve to: the newest of each, one copy for both.
VEGA = "vega@5.33.1/build/vega.min.js"
VEGA_LITE = "vega-lite@5.23.0/build/vega-lite.min.js"
VEGA_EMBED = "vega-embed@6.29.0/build/vega-embed.min.js"
VEGA_SCRIPTS = (VEGA, VEGA_LITE, VEGA_EMBED)

# What dvc_render fills in (str.replace on the whole page): inlined code must not contain them.
DVC_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")


def vendored(name: str) -> Path:
    """The vendored file ``name`` (``<package>@<version>/<path>``); an error names it if absent."""
    path = VENDOR_DIR / name
    if not path.is_file():
        raise MlcycleError(
            f"{path}: vendored browser asset missing; run tasks/static/vendor/update.sh"
        )
    return path


def licence_of(name: str) -> Path:
    """The licence file that came with the vendored package holding ``name``."""
    package = VENDOR_DIR / name.split("/", 1)[0]
    for candidate in ("LICENSE", "LICENSE.txt"):
        if (package / candidate).is_file():
            return package / candidate
    raise MlcycleError(f"{package}: no LICENSE or LICENSE.txt beside the vendored files")


def inline_script(name: str) -> str:
    """A ``<script>`` element holding the vendored file ``name``, its licence in a comment
    first (BSD and MIT ask the notice to travel with every copy)."""
    code = vendored(name).read_text(encoding="utf-8")
    notice = licence_of(name).read_text(encoding="utf-8")
    package = name.split("/", 1)[0]
    if "</script" in code.lower() or "*/" in notice:
        raise MlcycleError(f"{VENDOR_DIR / name}: would end its <script> or comment early")
    return f"<script>/*! {package} (tasks/static/vendor/{package})\n{notice}*/\n{code}\n</script>"


# DVC gives a plot whose data file has no rows (the selection scatter when train.model is fixed)
# an empty spec, and vega-embed draws that as nothing at all: say so where the chart would be,
# and show an embedding error there too instead of leaving a blank.
EXPLAIN_BLANK_PLOTS = """<script>
(function () {
  var embed = window.vegaEmbed;
  window.vegaEmbed = function (selector, spec, options) {
    var element = document.querySelector(selector);
    var title = selector.slice(1).replace(/_+/g, " ").trim();
    var say = function (text) {
      var note = document.createElement("p");
      note.className = "plot-note";
      note.textContent = title + ": " + text;
      element.appendChild(note);
    };
    if (!spec || Object.keys(spec).length === 0) {
      say("no data points to draw (its data file has no rows)");
      return Promise.resolve();
    }
    return embed(selector, spec, options).catch(function (error) {
      say("cannot be drawn: " + error);
      throw error;
    });
  };
})();
</script>"""


def dvc_plots_template() -> str:
    """DVC's HTML template (``{plot_divs}`` and ``{refresh_tag}`` are DVC's) with vega,
    vega-lite and vega-embed inline: every chart draws from the file alone. Without DVC's
    ``{scripts}`` placeholder its CDN ``<script>`` tags are never added. A plot with no data
    says so (:data:`EXPLAIN_BLANK_PLOTS`)."""
    scripts = "\n".join(inline_script(name) for name in VEGA_SCRIPTS)
    for placeholder in DVC_PLACEHOLDERS:
        if placeholder in scripts:
            raise MlcycleError(f"a vendored vega script contains DVC's placeholder {placeholder}")
    return (
        "<!DOCTYPE html>\n"
        "<html>\n<head>\n"
        "    {refresh_tag}\n"
        '    <meta charset="utf-8">\n'
        "    <title>DVC plots</title>\n"
        "    <style>\n"
        "        body { font-family: sans-serif; }\n"
        "        table { border-spacing: 15px; }\n"
        "        .plot-note { color: #555; border: 1px dashed #aaa; padding: 12px; }\n"
        "    </style>\n"
        f"{scripts}\n{EXPLAIN_BLANK_PLOTS}\n"
        "</head>\n<body>\n"
        "    {plot_divs}\n"
        "</body>\n</html>\n"
    )


def write_dvc_plots_template(root: Path = Path(".")) -> Path:
    path = root / DVC_PLOTS_TEMPLATE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dvc_plots_template(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(
        f"wrote {write_dvc_plots_template(Path(sys.argv[1]) if len(sys.argv) > 1 else Path('.'))}"
    )

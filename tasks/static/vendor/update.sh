#!/usr/bin/env bash
# Re-vendor the browser assets of the reports from the npm registry (`npm pack`): the files the
# pages load, byte for byte as published, each package's folder with its licence. Run from the
# repository root after changing a version here, in tasks/core/web_assets.py and in the CDN table
# of tasks/validation/data_docs.py; review the diff.
# Two packages publish no licence file: vega (LICENSE copied from github.com/vega/vega) and
# popper.js 1.12.9 (MIT, named in its README and file header): their LICENSE files stay as they are.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

vendor() {  # vendor <npm spec> <folder> <file>...  (files relative to the package root)
  local spec="$1" folder="$2"; shift 2
  (cd "$work" && rm -rf package ./*.tgz && npm pack --silent "$spec" >/dev/null && tar xzf ./*.tgz)
  for file in "$@"; do
    mkdir -p "$here/$folder/$(dirname "$file")"
    cp "$work/package/$file" "$here/$folder/$file"
  done
}

vendor vega@5.33.1 vega@5.33.1 build/vega.min.js
vendor vega-lite@5.23.0 vega-lite@5.23.0 build/vega-lite.min.js LICENSE
vendor vega-embed@6.29.0 vega-embed@6.29.0 build/vega-embed.min.js LICENSE
vendor bootstrap@4.3.1 bootstrap@4.3.1 dist/css/bootstrap.min.css dist/js/bootstrap.min.js LICENSE
vendor jquery@3.7.1 jquery@3.7.1 dist/jquery.min.js LICENSE.txt
vendor popper.js@1.12.9 popper.js@1.12.9 dist/umd/popper.min.js
vendor bootstrap-table@1.19.1 bootstrap-table@1.19.1 dist/bootstrap-table.min.css \
  dist/bootstrap-table.min.js dist/extensions/filter-control/bootstrap-table-filter-control.min.css \
  dist/extensions/filter-control/bootstrap-table-filter-control.min.js LICENSE
vendor bootstrap-datepicker@1.9.0 bootstrap-datepicker@1.9.0 dist/css/bootstrap-datepicker.min.css \
  dist/js/bootstrap-datepicker.min.js LICENSE
vendor @fortawesome/fontawesome-free@6.6.0 fontawesome-free@6.6.0 css/all.min.css \
  webfonts/fa-brands-400.woff2 webfonts/fa-regular-400.woff2 webfonts/fa-solid-900.woff2 \
  webfonts/fa-v4compatibility.woff2 LICENSE.txt
vendor @forevolve/bootstrap-dark@1.1.0 bootstrap-dark@1.1.0 dist/css/bootstrap-prefers-dark.min.css LICENSE
echo "vendored into $here"
# DVC's page template carries vega inline: write it again from the new copies
"${PYTHON:-.venv/bin/python}" -m tasks.core.web_assets

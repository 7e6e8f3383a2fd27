"""The documentation: the site builds strictly, every link stays home, the references are whole.

"Home" is the repository and the built site; a link may leave them only for the tools' own
documentation (ALLOWED_HOSTS) or a service on this machine (a UI at 127.0.0.1). A page that
loads a script, a style or an image from elsewhere would need the network: that is a defect.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tasks.core.config import Params, flatten, read_params_tree
from tests.helpers import REPO_ROOT

# The tools' own documentation: the only places outside the repository a page may link to.
ALLOWED_HOSTS = frozenset(
    {
        "docs.prefect.io",
        "mlflow.org",
        "dvc.org",
        "docs.greatexpectations.io",
        "docs.pytorch.org",
        "pytorch.org",
        "optuna.readthedocs.io",
        "scikit-learn.org",
        "fastapi.tiangolo.com",
        "docs.evidentlyai.com",
        "www.mkdocs.org",
        "squidfunk.github.io",
    }
)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
README_MAX_LINES = 220


class _Links(HTMLParser):
    """Every (tag, attribute, URL) of a page that the browser follows or loads, and its ids."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            elif name in ("href", "src") and value is not None:
                self.links.append((tag, name, value))


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _site_problems(site: Path) -> list[str]:
    pages = sorted(site.rglob("*.html"))
    parsed = {page.resolve(): _parse(page) for page in pages}
    problems = []
    for page, links in parsed.items():
        where = page.relative_to(site.resolve())
        for tag, attribute, url in links.links:
            parts = urlsplit(url)
            if parts.scheme in ("data", "mailto"):
                continue
            if parts.scheme in ("http", "https") or url.startswith("//"):
                if tag != "a":
                    problems.append(f"{where}: <{tag} {attribute}={url}> loads from the network")
                elif parts.hostname not in ALLOWED_HOSTS | LOCAL_HOSTS:
                    problems.append(f"{where}: links outside to {url}")
                continue
            if parts.scheme:
                problems.append(f"{where}: unexpected link {url}")
                continue
            # 404.html links from the site's root: a server answers it for any missing page
            base = site if parts.path.startswith("/") else page.parent
            target = (base / unquote(parts.path).lstrip("/")).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_relative_to(site.resolve()) or not target.is_file():
                problems.append(f"{where}: {url} does not exist in the site")
            elif parts.fragment and parts.fragment not in parsed.get(target, _Links()).ids:
                problems.append(f"{where}: {url}: no anchor #{parts.fragment}")
    return problems


def test_the_site_builds_strictly_with_every_page(docs_site: Path):
    for page in (
        "index.html",
        "guide/pipeline.html",
        "guide/closing-the-loop.html",
        "guide/troubleshooting.html",
        "reference/parameters.html",
        "reference/cli.html",
        "benchmarks.html",
    ):
        assert (docs_site / page).is_file(), page


def test_every_link_in_the_site_resolves_inside_it_or_to_the_tools_docs(docs_site: Path):
    assert _site_problems(docs_site) == []


def test_no_page_of_the_site_loads_anything_from_the_network(docs_site: Path):
    loaded_from_outside = [
        f"{page.relative_to(docs_site)}: {url}"
        for page in docs_site.rglob("*.html")
        for tag, _, url in _parse(page).links
        if tag in ("link", "script", "img", "iframe", "source")
        and urlsplit(url).scheme in ("http", "https")
    ]
    assert loaded_from_outside == []
    # mkdocs-material fetches mermaid from a CDN for a mermaid block, and a repository's facts
    # from GitHub's API when repo_url is set: neither may creep in
    assert not any('class="mermaid"' in page.read_text() for page in docs_site.rglob("*.html"))
    assert "repo_url" not in (REPO_ROOT / "mkdocs.yml").read_text()


def test_the_parameters_page_lists_every_key_of_params_yaml(docs_site: Path):
    page = (docs_site / "reference" / "parameters.html").read_text(encoding="utf-8")
    keys = [key for key, _ in flatten(read_params_tree(REPO_ROOT / "params.yaml"))]
    assert len(keys) > 100  # every section, every family's options
    missing = [key for key in keys if f"<code>{key}</code>" not in page]
    assert missing == []
    for section in Params.model_fields:
        assert f'id="{section}"' in page, section


def test_the_parameters_page_shows_types_bounds_and_values(docs_site: Path):
    page = (docs_site / "reference" / "parameters.html").read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    # a nullable bounded integer, a choice, a list, a bounded float: as the schema declares them
    assert re.search(
        r"collect\.augment_to\s+integer or null\s+≥ 1, or null "
        r"\(empty in the Prefect form: null\)\s+null",
        text,
    )
    assert re.search(r"train\.optimizer\s+choice\s+adam, adamw, sgd\s+adam", text)
    assert re.search(
        r"train\.cnn\.channels\s+list of integer\s+non-empty; each ≥ 1\s+\[32, 64\]", text
    )
    assert re.search(r"monitor\.p_value\s+number\s+> 0; < 1\s+0\.01", text)


def test_the_command_line_page_lists_every_command(docs_site: Path):
    from flows.cli import build_parser

    page = (docs_site / "reference" / "cli.html").read_text(encoding="utf-8")
    commands = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    for name in commands.choices:
        assert f"<code>mlcycle {name}</code>" in page, name


MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<(https?://[^>\s]+)>")
BARE_URL = re.compile(r"https?://[^\s)<>`\"']+")


def _prose_of(markdown: str) -> str:
    """The text outside fenced code blocks and inline code: what renders as prose and links."""
    without_blocks = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", without_blocks)


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation gone, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _readme_problems(readme: Path) -> list[str]:
    prose = _prose_of(readme.read_text(encoding="utf-8"))
    problems = []
    for match in MARKDOWN_LINK.finditer(prose):
        url = match.group(1) or match.group(2)
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):
            if parts.hostname not in ALLOWED_HOSTS | LOCAL_HOSTS:
                problems.append(f"links outside to {url}")
            continue
        target = (readme.parent / unquote(parts.path)).resolve() if parts.path else readme
        if not target.is_relative_to(REPO_ROOT) or not target.exists():
            problems.append(f"{url}: not a file of the repository")
        elif parts.fragment and target.suffix == ".md":
            headings = re.findall(r"^#+ (.+?)(?: \{#[\w-]+\})?$", target.read_text(), re.M)
            explicit = re.findall(r"\{#([\w-]+)\}", target.read_text())
            if parts.fragment not in {*map(_github_anchor, headings), *explicit}:
                problems.append(f"{url}: no heading #{parts.fragment}")
    for url in BARE_URL.findall(re.sub(MARKDOWN_LINK, "", prose)):
        if urlsplit(url).hostname not in ALLOWED_HOSTS | LOCAL_HOSTS:
            problems.append(f"mentions {url}")
    return problems


def test_every_link_of_the_readme_resolves_in_the_repository_or_to_the_tools_docs():
    assert _readme_problems(REPO_ROOT / "README.md") == []


def test_the_link_check_catches_a_link_outside(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "See [the architecture](../shared/ARCHITECTURE.md), [a blog](https://example.com/x),\n"
        "[a page](docs/missing.md) and https://example.org/y; `https://in.code/is.fine`.\n"
    )
    problems = _readme_problems(readme)
    assert len(problems) == 4, problems
    assert any("ARCHITECTURE" in problem for problem in problems)


def test_the_readme_is_a_front_page():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < README_MAX_LINES
    for part in ("## Quick start", "## Three ways to run it", "## The stages", "docs/"):
        assert part in text, part


def test_the_site_check_catches_cdn_assets_outside_links_and_dead_anchors(tmp_path: Path):
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "a.html").write_text('<h2 id="here">here</h2>')
    (tmp_path / "index.html").write_text(
        '<script src="https://cdn.example/x.js"></script>'
        '<a href="https://example.com/blog">a blog</a>'
        '<a href="guide/a.html#here">fine</a><a href="guide/a.html#gone">dead anchor</a>'
        '<a href="guide/b.html">missing page</a><a href="https://docs.prefect.io/v3/">fine</a>'
    )
    problems = _site_problems(tmp_path)
    assert len(problems) == 4, problems

"""Check the built site: no reST left in the HTML, every public module documented, figures.

Run by ``make docs`` after ``mkdocs build``::

    python docs/check_site.py site

Fails (exit status 1), listing the offending pages, when

* a page still contains a reStructuredText role or directive (``:func:``, ``:class:``,
  ``:meth:``, ``:math:``, ``:mod:``, ``:attr:``, ``:data:``, ``:obj:``, ``:exc:``,
  ``.. math::``) or an unexpanded docs directive (``<!-- notebook-figure``,
  ``<!-- notebook-code``, ``<!-- benchmark``);
* a public module of ``xsciml`` has no API page ``docs/api/xsciml.MODULE.md``;
* a capability page shows no figure (an image, or the note that stands for a notebook
  figure when the notebooks were not executed).

It also prints the size of the API pages and which notebook pages carry outputs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from xsciml._docs import SHARED  # markers of docstring text shared between functions

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xsciml"
API_DIR = ROOT / "docs" / "api"

RST = re.compile(r":(?:py:)?(?:func|class|meth|math|mod|attr|data|obj|exc):`|\.\. math::")
DIRECTIVE = re.compile(r"<!--\s*(?:notebook-figure|notebook-code|benchmark)\b")
SHARED_MARKER = re.compile("|".join(re.escape("{" + name + "}") for name in SHARED))
#: pages that must show at least one figure (site paths, directory URLs)
CAPABILITY_PAGES = ["gap-filling", "latent", "forecast", "smooth", "downscale", "inverse", "dask",
                    "tensors", "training", "getting-started"]


def public_modules() -> list[str]:
    """Dotted names of xsciml's public modules (no part starting with ``_``)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            continue  # a subpackage's own page is its modules' pages
        if any(p.startswith("_") for p in parts):
            continue
        names.append(".".join(parts))
    return names


def _text(html: str) -> str:
    """The page without its <script> blocks (search data, MathJax configuration)."""
    return re.sub(r"<script\b.*?</script>", "", html, flags=re.S)


def main(site: Path) -> int:
    if not site.is_dir():
        print(f"check_site: no built site at {site} (run mkdocs build first)")
        return 1
    pages = sorted(site.rglob("*.html"))
    problems: list[str] = []

    for page in pages:
        text = _text(page.read_text(encoding="utf-8"))
        rel = page.relative_to(site)
        found = sorted(set(RST.findall(text)))
        if found:
            problems.append(f"{rel}: reST left in the HTML: {', '.join(found)} "
                            f"({len(RST.findall(text))} occurrences)")
        if SHARED_MARKER.search(text):
            problems.append(f"{rel}: unexpanded shared docstring text {SHARED_MARKER.search(text)[0]!r}")
        if DIRECTIVE.search(text):
            problems.append(f"{rel}: unexpanded docs directive {DIRECTIVE.search(text)[0]!r}")

    for module in public_modules():
        parts = module.split(".")
        # a module inside a package with its own page (the package's exports) is covered there
        covered = any((API_DIR / f"{'.'.join(parts[:i])}.md").exists() for i in range(3, len(parts)))
        if not covered and not (API_DIR / f"{module}.md").exists():
            problems.append(f"public module {module} has no API page docs/api/{module}.md")

    for name in CAPABILITY_PAGES:
        page = site / name / "index.html"
        if not page.exists():
            problems.append(f"capability page {name}/ is missing from the site")
            continue
        text = page.read_text(encoding="utf-8")
        if "<img" not in text and "Figure not built" not in text:
            problems.append(f"{name}/: shows no figure")

    api_pages = sorted((site / "api").rglob("index.html")) if (site / "api").is_dir() else []
    sizes = sorted(((p.stat().st_size, p.parent.relative_to(site)) for p in api_pages), reverse=True)
    total = sum(s for s, _ in sizes)
    print(f"check_site: {len(pages)} pages; {len(api_pages)} API pages, {total / 1e6:.2f} MB in all"
          + (f", largest {sizes[0][1]}/ {sizes[0][0] / 1e3:.0f} kB, median "
             f"{sizes[len(sizes) // 2][0] / 1e3:.0f} kB" if sizes else ""))
    nb_pages = sorted((site / "notebooks").glob("*/index.html")) if (site / "notebooks").is_dir() else []
    executed = [p.parent.name for p in nb_pages if "Outputs not shown" not in p.read_text(encoding="utf-8")]
    print(f"check_site: notebook pages with outputs: {len(executed)} of {len(nb_pages)}"
          + (f" (without: {', '.join(sorted({p.parent.name for p in nb_pages} - set(executed)))};"
             " make notebooks executes them)" if len(executed) < len(nb_pages) else ""))
    if problems:
        print(f"check_site: {len(problems)} problem(s):")
        for line in problems:
            print(f"  {line}")
        return 1
    print("check_site: OK (no reST roles or directives left, every public module documented, "
          "a figure on every capability page)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "site")))

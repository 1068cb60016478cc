"""README.md and docs/*.md: every relative link resolves, and the README stays a front page.

Plain text parsing only (no jax import), so this runs in well under a second.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))

_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
  """The text without fenced code blocks and code spans (a link there is not a link)."""
  return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchors(text: str) -> set[str]:
  """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
  seen, out = {}, set()
  for title in _HEADING.findall(_FENCE.sub("", text)):
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "")
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def _links(page: pathlib.Path):
  for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
      continue
    yield target


def test_pages_found():
  assert (ROOT / "README.md").exists() and len(PAGES) > 1


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  broken = []
  for target in _links(page):
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists():
      broken.append(f"{target} (no such file)")
    elif anchor and dest.suffix == ".md" and anchor.lower() not in _anchors(dest.read_text(encoding="utf-8")):
      broken.append(f"{target} (no heading with that anchor in {dest.relative_to(ROOT)})")
  assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_readme_is_a_front_page():
  text = (ROOT / "README.md").read_text(encoding="utf-8")
  assert len(text) <= 12_000, f"README.md has {len(text)} characters; move detail to docs/"
  head = "\n".join(text.splitlines()[:60])
  assert "python train.py" in head and "python -m pytest" in head, "the two quickstart commands belong on top"


def test_link_checker_catches_a_broken_link(tmp_path):
  page = tmp_path / "p.md"
  page.write_text("# Title\n[ok](p.md#title) [bad](missing.md) [gone](p.md#nope) `[code](x.md)`\n"
                  "```\n[fenced](y.md)\n```\n[web](https://example.com)\n")
  assert list(_links(page)) == ["p.md#title", "missing.md", "p.md#nope"]
  assert _anchors(page.read_text()) == {"title"}

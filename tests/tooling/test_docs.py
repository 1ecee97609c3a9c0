"""The documentation holds together: every relative link in README.md,
docs/ and csrc/README.md resolves (to a file, and to a heading or anchor
where it names one), every repository path the pages quote exists, the
README stays short, every kernel header is a short block (the math, the
layout, a line per variant), and no tracked file cites a document outside the
repository or an issue number, which a reader of a clone cannot open."""

import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "csrc" / "README.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 200
HEADER_MAX_COMMENT_LINES = 40

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
HTML_ID = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""")
QUOTED_PATH = re.compile(r"^(?:csrc|fcn_cuda|tests|benchmarks|docs|\.ci)/[\w.\-/]*$")

OUTSIDE_DOCUMENTS = ("DESIGN", "FCN_REFERENCE", "TENSOR_CORES", "EMULATOR_NOTES", "DENSE_CRF", "STYLE")
CITATIONS = [
    re.compile(r"\b(?:%s)\.md\b" % "|".join(OUTSIDE_DOCUMENTS)),
    re.compile(r"\bissues?\s*#\s*\d+", re.I),  # "issue #18"
    # "(issue 7)", "issue 18:", "see issue 12", but not the verb: "a warp issues 16 mma.sync"
    re.compile(r"\bissues?\s+\d+(?=\s*(?:[:;,.)\]]|$))", re.I),
    re.compile(r"\b(?:in|from|see|per|by|of)\s+issues?\s+\d+", re.I),
    re.compile(r"\b(?:the|this|an?|that)\s+issue(?:'s)?\b", re.I),  # "the issue's target"
    re.compile(r"\(issue\b", re.I),
    re.compile(r"(?<![\w\"'/&#])#\d{1,4}\b"),  # "#12", as a tracker writes it
]


def _prose(text):
    """The page without its fenced code blocks."""
    return FENCE.sub("", text)


def _slug(heading):
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation
    other than - and _ removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path):
    text = _prose(path.read_text())
    found, seen = set(HTML_ID.findall(text)), {}
    for heading in HEADING.findall(text):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _links(page):
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        yield target


def test_the_pages_exist():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    for page in ("torch", "model", "distributed", "caffe-and-data", "crf", "emulator", "gpu", "performance",
                 "design", "fcn-reference", "tiled"):
        assert f"docs/{page}.md" in names
    assert "csrc/README.md" in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading or anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_quoted_repository_path_exists(page):
    """A path such as `tests/kernels/test_crf.py` or `fcn_cuda/weights/caffe.py`
    in a page names a file or folder of this repository that is there."""
    missing = []
    for span in CODE_SPAN.findall(page.read_text()):
        path = span.split("::", 1)[0].rstrip(":")
        if QUOTED_PATH.match(path) and not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"{page.relative_to(ROOT)} quotes paths that do not exist: {missing}"


def test_the_readme_indexes_every_page():
    index = (ROOT / "README.md").read_text()
    pages = [p.relative_to(ROOT).as_posix() for p in PAGES if p != ROOT / "README.md"]
    unindexed = [p for p in pages if f"]({p})" not in index]
    assert not unindexed, f"README.md's index lacks {unindexed}"


# Extensions that exist only where they were built: the nvcc build, the sanitizer builds.
BUILT_ELSEWHERE = ("fcn_cuda._cuda", "fcn_cuda._host_asan", "fcn_cuda._host_tsan")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_quoted_python_name_exists(page):
    """`fcn_cuda.geometry.head_geometry`, `fcn_cuda.crf.SHAPES` and the like
    name a module or attribute that is there: a page does not keep a name
    that a move or rename left behind."""
    missing = []
    for span in CODE_SPAN.findall(page.read_text()):
        for name in re.findall(r"\bfcn_cuda(?:\.[A-Za-z_]\w*)+", span):
            if name.startswith(BUILT_ELSEWHERE):
                continue
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ImportError:
                    continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                missing.append(name)
    assert not missing, f"{page.relative_to(ROOT)} names what fcn_cuda does not have: {missing}"


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; depth belongs in docs/"


@pytest.mark.parametrize("header", sorted((ROOT / "csrc" / "kernels").glob("*.cuh")), ids=lambda p: p.name)
def test_kernel_headers_open_with_a_short_block(header):
    """Predictions and their figures belong in docs/performance.md's rungs, once."""
    opening = 0
    for line in header.read_text().splitlines():
        if line.strip().startswith("//"):
            opening += 1
        elif line.strip():
            break
    assert opening <= HEADER_MAX_COMMENT_LINES, f"{header.name} opens with {opening} lines of comment"


def _tracked_text_files():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in out.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary: pictures, weights, caffemodels
        yield name, data.decode("utf-8", errors="replace")


def test_no_tracked_file_cites_an_outside_document_or_an_issue():
    this_file = Path(__file__).resolve().relative_to(ROOT).as_posix()  # its patterns and examples are citations
    citing = []
    for name, text in _tracked_text_files():
        if name == this_file:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for pattern in CITATIONS:
                m = pattern.search(line)
                if m:
                    citing.append(f"{name}:{number}: {m.group(0)!r}")
    assert not citing, ("these cite what a clone does not hold; cite docs/design.md, docs/fcn-reference.md "
                        "or the page that holds the fact instead:\n" + "\n".join(citing))


@pytest.mark.parametrize("line,cites", [
    ("see DESIGN.md section 3", True), ("the target (issue 7)", True), ("Issue #18's rows", True),
    ("as the issue says", True), ("fixed in #42", True), ("(issue: foundation)", True),
    ("see issue 12 for the plan", True), ("what is missing from issue 7", True),
    ("FMAs issue like useful ones", False), ("// Issue the next stage's loads", False),
    ("a warp issues 16 `mma.m16n8k16` (4 x 4 tiles)", False), ("each thread may issue 4 loads", False),
    ("color '#333'", False), ("[the rung](performance.md#3-the-fused-last-stage)", False),
])
def test_the_citation_patterns(line, cites):
    assert any(p.search(line) for p in CITATIONS) == cites


def test_slugs_follow_github():
    assert _slug("3. The fused last stage (`upsample_argmax`, in place)") == \
        "3-the-fused-last-stage-upsample_argmax-in-place"
    assert _slug("The reference's Caffe models and data") == "the-references-caffe-models-and-data"

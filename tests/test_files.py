"""Files that survive crashes: atomic writes with the umask's modes, table repair, caches checked on read."""
from __future__ import annotations

import logging
import os
import stat

import pytest
import torch

from amoeba_search.data import Document, token_blocks
from amoeba_search.paths import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text, cache_dir
from amoeba_search.profiling.table_schema import drop_partial_last_line

from tests.conftest import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def umask():
    """Run the test under a umask it sets itself, and restore the caller's afterwards."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _crash_on_call(monkeypatch, number: int):
    """Make the ``number``-th call of os.replace (1-based) raise, as a crash at that point would stop it."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == number:
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


# -- modes ------------------------------------------------------------------------------------------

def test_files_and_dirs_get_the_umask_modes(tmp_path, umask):
    atomic_write_text(tmp_path / "a.json", "{}\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    with atomic_file(tmp_path / "c.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png"  # writers that pick a format by suffix still can
        tmp.write_bytes(b"png")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "inside.txt").write_text("x")
        (tmp / "sub").mkdir()
    for name in ("a.json", "b.bin", "c.png", "out/inside.txt"):
        assert _mode(tmp_path / name) == 0o644, name
    assert _mode(tmp_path / "out") == 0o755 and _mode(tmp_path / "out" / "sub") == 0o755
    assert (tmp_path / "c.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.png", "out"]

    umask(0o077)
    atomic_write_text(tmp_path / "private.json", "{}")
    with atomic_dir(tmp_path / "private") as tmp:
        pass
    assert _mode(tmp_path / "private.json") == 0o600 and _mode(tmp_path / "private") == 0o700


def test_text_is_utf8(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "Éléonore ≤ 40 ms\n")
    assert (tmp_path / "t.txt").read_bytes() == "Éléonore ≤ 40 ms\n".encode("utf-8")


# -- crashes -----------------------------------------------------------------------------------------

def test_a_crash_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "front.json"
    path.write_text("old")
    _crash_on_call(monkeypatch, 1)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["front.json"]


def test_an_error_while_writing_keeps_the_old_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("crash_at", [1, 2])
def test_overwriting_a_dir_keeps_the_old_one_until_the_new_is_in_place(tmp_path, monkeypatch, crash_at):
    final = tmp_path / "export"
    final.mkdir()
    (final / "model.safetensors").write_text("old")
    calls = _crash_on_call(monkeypatch, crash_at)  # 1: moving the old aside, 2: renaming the new in
    with pytest.raises(OSError, match="simulated crash"), atomic_dir(final, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (final / "model.safetensors").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert len(calls) == crash_at + (crash_at == 2)  # after a failed rename the old one is put back


def test_overwriting_a_dir_replaces_it_whole(tmp_path):
    final = tmp_path / "export"
    final.mkdir()
    (final / "stale.json").write_text("{}")
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_text("new")
        assert (final / "stale.json").is_file()  # still there while the new one is written
    assert [p.name for p in final.iterdir()] == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    with pytest.raises(FileExistsError), atomic_dir(final):
        pass


def test_plots_are_written_atomically_in_their_format(tmp_path, umask):
    from collections import namedtuple

    from amoeba_search.plots import pareto_plot_info, render_pareto

    point = namedtuple("Point", "shape latency_ms metric")
    points = [point(f"d{d}-f1-h1", 10.0 + d, 100.0 / d) for d in range(2, 6)]
    info = pareto_plot_info(points, points, 14.0)
    for name in ("front.png", "front"):  # no suffix: still a PNG at exactly that name
        render_pareto(info, tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG") and _mode(tmp_path / name) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front", "front.png"]


# -- lookup tables -----------------------------------------------------------------------------------

def test_repairing_a_table_keeps_every_complete_row(tmp_path):
    table = tmp_path / "cpu.csv"
    rows = b"device,shape,decode_ms\n" + b"".join(b"cpu,d%d-f1-h1,%d.5\n" % (i, i) for i in range(20))
    table.write_bytes(rows + b"cpu,d20-f1-h1,2")  # a writer killed mid-row
    assert drop_partial_last_line(table) is True
    assert table.read_bytes() == rows
    assert [p.name for p in tmp_path.iterdir()] == ["cpu.csv"]
    assert drop_partial_last_line(table) is False and table.read_bytes() == rows


def test_a_crash_while_repairing_a_table_loses_nothing(tmp_path, monkeypatch):
    table = tmp_path / "cpu.csv"
    data = b"device,shape\ncpu,d1-f1-h1\ncpu,d2"
    table.write_bytes(data)
    _crash_on_call(monkeypatch, 1)
    with pytest.raises(OSError, match="simulated crash"):
        drop_partial_last_line(table)
    assert table.read_bytes() == data and [p.name for p in tmp_path.iterdir()] == ["cpu.csv"]


# -- caches ------------------------------------------------------------------------------------------

def test_a_corrupt_token_block_cache_is_rebuilt(tokenizer, caplog):
    docs = [Document(f"d{i}", f"doc {i} says hello " * 8) for i in range(12)]
    first = token_blocks(docs, tokenizer, seq_len=16, fractions=(0.0, 0.0, 1.0))
    (cached,) = cache_dir("blocks").glob("*.safetensors")
    assert _mode(cached) == 0o666 & ~_umask_now()
    cached.write_bytes(cached.read_bytes()[:-10])  # cut short, as a full disk would leave it
    with caplog.at_level(logging.WARNING, logger="amoeba_search.data.blocks"):
        again = token_blocks(docs, tokenizer, seq_len=16, fractions=(0.0, 0.0, 1.0))
    assert again.equal(first)
    assert "rebuilding" in caplog.text and cached.name in caplog.text
    caplog.clear()
    assert token_blocks(docs, tokenizer, seq_len=16, fractions=(0.0, 0.0, 1.0)).equal(first)  # repaired
    assert not caplog.records and list(cache_dir("blocks").iterdir()) == [cached]


def test_a_partial_tokenizer_cache_does_not_count(tmp_path, caplog):
    from amoeba_search.profiling.model_source import ModelSource, save_tokenizer

    source_dir = tmp_path / "model"
    tiny_tokenizer().save_pretrained(source_dir)
    source = ModelSource("tiny", "tiny", None, (str(source_dir), None))
    partial = cache_dir("tokenizers", "tiny")  # what a crash while caching left behind
    (partial / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    out = tmp_path / "out"
    out.mkdir()
    with caplog.at_level(logging.WARNING, logger="amoeba_search.profiling.model_source"):
        assert save_tokenizer(source, out) is True
    assert "incomplete" in caplog.text
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out)("hello")["input_ids"] == tiny_tokenizer()("hello")["input_ids"]
    assert [p.name for p in cache_dir("tokenizers").iterdir()] == ["tiny"]


def test_a_truncated_cached_model_is_rebuilt(tmp_path, monkeypatch, caplog):
    from amoeba_search.models import loading

    fake = loading._PackagedGGUF("not_installed", "tiny.gguf", "")
    monkeypatch.setattr(fake.__class__, "path", lambda self: tmp_path / "tiny.gguf")
    monkeypatch.setattr(fake.__class__, "version", lambda self: "0")
    monkeypatch.setitem(loading.ALIASES, "tiny-alias", fake)
    built = []

    def load_gguf(path, *, dtype, **placement):
        built.append(path)
        return tiny_model(), tiny_tokenizer()

    monkeypatch.setattr(loading, "_load_gguf", load_gguf)
    with atomic_dir(loading._alias_cache("tiny-alias")) as tmp:  # the cache a first load leaves
        tiny_model().save_pretrained(tmp)
        tiny_tokenizer().save_pretrained(tmp)
    model, _ = loading.load_model("tiny-alias")
    assert not built
    weights = loading._alias_cache("tiny-alias") / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()  # a new inode: the loaded model maps the old file, and cutting that one would crash it
    weights.write_bytes(data[: len(data) // 2])
    assert loading._cache_problem(weights.parent) is not None
    with caplog.at_level(logging.WARNING, logger="amoeba_search.models.loading"):
        again, _ = loading.load_model("tiny-alias")
    assert len(built) == 1 and "incomplete" in caplog.text
    assert loading._cache_problem(weights.parent) is None
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert [p.name for p in weights.parent.parent.iterdir()] == [weights.parent.name]


def _umask_now() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

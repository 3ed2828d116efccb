"""Index integrity: checksums checked on open and by --verify, race-free opens, the writer lock."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from opencir.retrieval import integrity
from opencir.retrieval.errors import IndexBusyError, IndexDamagedError
from opencir.retrieval.store import MANIFEST, IndexStore, read_manifest, verify_index
from opencir.hashing import file_sha256

DIM = 8


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(root: Path, n: int = 40, backend: str = "faiss", options: dict | None = None) -> None:
    options = {"factory": "Flat"} if options is None and backend == "faiss" else (options or {})
    with IndexStore.create(root, DIM, backend, options, "fp", {"method": "sum"}) as store:
        store.add([f"im{i:03d}" for i in range(n)], unit_rows(n, 0), ["p"] * n)
        store.commit()


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def index_file(root: Path) -> Path:
    return root / read_manifest(root)["backend"]["state"]["index_file"]


def test_manifest_records_size_and_hash_of_every_file(tmp_path):
    build(tmp_path)
    manifest = read_manifest(tmp_path)
    names = set(manifest["files"])
    assert names == {f"data/{manifest['records_file']}", *(f"data/{s}" for s in manifest["segments"]),
                     manifest["backend"]["state"]["index_file"]}
    for name, entry in manifest["files"].items():
        assert entry["size"] == (tmp_path / name).stat().st_size
        assert entry["sha256"] == file_sha256(tmp_path / name)


def test_one_flipped_bit_in_the_faiss_file_is_refused_naming_it(tmp_path):
    build(tmp_path)
    target = index_file(tmp_path)
    flip_bit(target, target.stat().st_size // 2)
    with pytest.raises(IndexDamagedError, match=rf"index file {target} is damaged: its SHA-256"):
        IndexStore.open(tmp_path)


def test_fast_path_checks_sizes_and_verify_hashes_everything(tmp_path, monkeypatch):
    build(tmp_path)
    monkeypatch.setattr(integrity, "HASH_ON_OPEN_BYTES", 0)  # as if every file were large
    segment = tmp_path / "data" / read_manifest(tmp_path)["segments"][0]
    flip_bit(segment, segment.stat().st_size - 3)  # a vector value, same size
    with IndexStore.open(tmp_path) as store:  # the fast path does not hash big files
        assert len(store) == 40
    with pytest.raises(IndexDamagedError, match=rf"{segment} is damaged: its SHA-256"):
        verify_index(tmp_path)
    # a truncated or deleted file is caught by the fast path already
    segment.write_bytes(segment.read_bytes()[:-4])
    with pytest.raises(IndexDamagedError, match=rf"{segment} is damaged: \d+ bytes, \d+ recorded at commit"):
        IndexStore.open(tmp_path)
    segment.unlink()
    with pytest.raises(IndexDamagedError, match=rf"index file {segment} is missing"):
        IndexStore.open(tmp_path)


def test_verify_reports_a_healthy_index(tmp_path):
    build(tmp_path)
    report = verify_index(tmp_path)
    assert report["ok"] and report["files"] == report["hashed"] == 3 and report["generation"] == 1


def test_an_edited_manifest_is_refused(tmp_path):
    build(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["count"] = 41
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexDamagedError, match="manifest.json is damaged: its content does not match its checksum"):
        IndexStore.open(tmp_path)


def test_an_open_that_loses_the_race_reads_the_newer_generation(tmp_path, monkeypatch):
    """The reader read generation 1's manifest, then two commits removed generation 1's files."""
    build(tmp_path)
    stale = read_manifest(tmp_path)
    for i in range(2):
        with IndexStore.open(tmp_path, writable=True) as store:
            store.add([f"new{i}"], unit_rows(1, 10 + i), ["p"])
            store.commit()
    with pytest.raises((FileNotFoundError, IndexDamagedError)):
        IndexStore._open_generation(tmp_path, stale, False, False).close()
    calls = []
    real = read_manifest

    def stale_first(directory):
        calls.append(directory)
        return stale if len(calls) == 1 else real(directory)

    import opencir.retrieval.store as store_module

    monkeypatch.setattr(store_module, "read_manifest", stale_first)
    with IndexStore.open(tmp_path) as store:
        assert len(store) == 42 and store.manifest["generation"] == 3
    assert len(calls) >= 2  # the stale manifest was tried first


def test_readers_never_see_a_half_committed_generation(tmp_path):
    """Readers open in a loop while a writer commits generation after generation: no error."""
    build(tmp_path, n=20)
    errors: list[BaseException] = []
    opened = [0]
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                with IndexStore.open(tmp_path) as store:
                    assert len(store) == 20
                    store.search(unit_rows(1, 3), 5)
                opened[0] += 1
            except BaseException as err:  # noqa: BLE001 - collected and asserted below
                errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for generation in range(40):
            with IndexStore.open(tmp_path, writable=True) as store:
                store.add([f"g{generation}"], unit_rows(1, 100 + generation), ["p"])
                store.delete([f"g{generation - 1}" if generation else "im000"])
                store.commit()
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not errors, errors[:3]
    assert opened[0] > 40


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    build(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from opencir.retrieval.store import IndexStore\n"
         f"s = IndexStore.open({str(tmp_path)!r}, writable=True); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexBusyError, match=rf"being written by process {holder.pid} on .*wait for it to finish"):
            IndexStore.open(tmp_path, writable=True)
    finally:
        holder.kill()
        holder.wait()
    # the operating system released the killed holder's lock
    with IndexStore.open(tmp_path, writable=True) as store:
        assert len(store) == 40


def test_a_waiting_writer_is_serialised(tmp_path):
    from opencir.retrieval.locking import acquire_writer_lock

    build(tmp_path)
    first = acquire_writer_lock(tmp_path)
    threading.Timer(0.3, first.release).start()
    start = time.monotonic()
    with acquire_writer_lock(tmp_path, timeout=10):
        assert time.monotonic() - start >= 0.25


def test_hnsw_deletes_are_compacted_so_k_live_results_come_back(tmp_path):
    """Issue 12.9: delete and re-add 297 of 299 images; k=300 returns all 299 live ones."""
    n = 299
    vectors = unit_rows(n, 0)
    ids = [f"im{i:03d}" for i in range(n)]
    with IndexStore.create(tmp_path, DIM, "faiss", {"factory": "HNSW8", "ef_search": 16}, "fp", {}) as store:
        store.add(ids, vectors, ["p"] * n)
        store.commit()
        store.delete(ids[:297])
        store.commit()
        store.add(ids[:297], vectors[:297], ["p"] * 297)
        store.commit()
        assert not store.backend.tombstones  # compacted: the graph holds live nodes only
        assert store.backend.index.ntotal == n
    with IndexStore.open(tmp_path) as store:
        results = store.search(unit_rows(3, 5), 300)
        assert [len(row) for row in results] == [n, n, n]
        assert {r.image_id for r, _ in results[0]} == set(ids)


def test_hnsw_below_the_compaction_ratio_still_returns_k_live_results(tmp_path):
    """Tombstoned nodes still take candidate slots: k = every live item needs a deeper search."""
    n = 3000
    vectors = unit_rows(n, 1)
    ids = [f"im{i:04d}" for i in range(n)]
    dead = ids[::11]  # 273 of 3000 = 9.1 %: below COMPACT_RATIO, tombstones stay
    with IndexStore.create(tmp_path, DIM, "faiss", {"factory": "HNSW8", "ef_search": 16}, "fp", {}) as store:
        store.add(ids, vectors, ["p"] * n)
        store.commit()
        store.delete(dead)
        store.commit()
        assert len(store.backend.tombstones) == len(dead)
        live = n - len(dead)
        results = store.search(unit_rows(3, 6), live)
    assert [len(row) for row in results] == [live] * 3
    assert all({r.image_id for r, _ in row} == set(ids) - set(dead) for row in results)


def test_milvus_lite_held_by_another_process_names_it(tmp_path, capfd):
    """Issue 12.8: milvus-lite is single-process; the second opener is told who holds it.
    (A process that opened a milvus-lite file keeps it until it exits: build in a child.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from tests.retrieval.test_integrity "
                    f"import build; build(Path({str(tmp_path)!r}), n=5, backend='milvus', options={{}})"],
                   check=True, env=env, cwd=Path(__file__).parents[2])
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time; from opencir.retrieval.store import IndexStore\n"
         f"s = IndexStore.open({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        capfd.readouterr()
        with pytest.raises(IndexBusyError, match=rf"milvus-lite database .*milvus.db is held by process {holder.pid} "
                                                 r"\(.*\)\. milvus-lite lets one process at a time.*Milvus server"):
            IndexStore.open(tmp_path)
        assert "Traceback" not in capfd.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    with IndexStore.open(tmp_path) as store:
        assert len(store) == 5


def test_a_backend_error_during_a_racing_open_is_retried(tmp_path, monkeypatch):
    """FAISS reports a file removed between the size check and the read as a RuntimeError:
    when the manifest changed meanwhile the open retries; when it did not, the error stands."""
    import faiss

    build(tmp_path)
    real_read = faiss.read_index
    state = {"calls": 0}

    def vanishing(path, *args):
        state["calls"] += 1
        if state["calls"] == 1:  # a writer commits twice while this reader is opening
            for i in range(2):
                with IndexStore.open(tmp_path, writable=True) as store:
                    store.add([f"late{i}"], unit_rows(1, 50 + i), ["p"])
                    store.commit()
            raise RuntimeError(f"Error: could not open {path} for reading: No such file or directory")
        return real_read(path, *args)

    monkeypatch.setattr(faiss, "read_index", vanishing)
    with IndexStore.open(tmp_path) as store:
        assert len(store) == 42 and state["calls"] >= 2
    monkeypatch.setattr(faiss, "read_index", lambda *a: (_ for _ in ()).throw(RuntimeError("broken")))
    with pytest.raises(RuntimeError, match="broken"):
        IndexStore.open(tmp_path)

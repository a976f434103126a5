"""Threads from the CPUs a process may use: affinity and cgroup CPU quotas (v1 and v2), read
from cgroup trees built here; the CLI's --threads and the recipe's train.threads."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe

from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.errors import InputError
from pixelwise import openmp
from pixelwise.openmp import choose_wait_policy
from pixelwise.runtimes import threads
from pixelwise.training.loop import train


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cgroup_v2_quota_is_read_along_the_path_and_the_tightest_wins(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "max 100000\n")
    _write(tmp_path / "ci" / "cpu.max", "300000 100000\n")
    _write(tmp_path / "ci" / "job" / "cpu.max", "150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, "0::/ci/job\n") == 1.5
    assert threads.cgroup_cpu_limit(tmp_path, "0::/ci\n") == 3.0
    assert threads.cgroup_cpu_limit(tmp_path, "0::/\n") is None  # "max": no quota
    # In a container the kernel may report the host's path, absent here: the root's limit applies
    _write(tmp_path / "cpu.max", "200000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, "0::/docker/0123abcd\n") == 2.0


def test_a_cgroup_v1_quota_is_read_and_unlimited_is_none(tmp_path: Path) -> None:
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "250000\n")
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    membership = "12:memory:/\n4:cpu,cpuacct:/\n0::/\n"
    assert threads.cgroup_cpu_limit(tmp_path, membership) == 2.5
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    assert threads.cgroup_cpu_limit(tmp_path, membership) is None
    assert threads.cgroup_cpu_limit(tmp_path / "absent", membership) is None
    assert threads.cgroup_cpu_limit(tmp_path, "garbage\n") is None


def test_usable_cpus_take_the_smaller_of_affinity_and_quota() -> None:
    assert threads.usable_cpus(affinity=64, quota=2.0) == (2, "a CPU quota of 2 CPUs (cgroup) on 64 CPUs it may run on")
    assert threads.usable_cpus(affinity=64, quota=0.5)[0] == 1
    assert threads.usable_cpus(affinity=4, quota=8.0)[0] == 4
    assert threads.usable_cpus(affinity=3, read_quota=False) == (3, "3 CPUs this process may run on")


def test_the_default_is_lowered_to_the_quota_never_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "usable_cpus", lambda: (1, "a CPU quota of 1 CPUs (cgroup) on 2 CPUs"))
    assert threads.set_threads() == (1, "a CPU quota of 1 CPUs (cgroup) on 2 CPUs") and torch.get_num_threads() == 1
    monkeypatch.setattr(threads, "usable_cpus", lambda: (8, "8 CPUs this process may run on"))
    assert threads.set_threads()[0] == 1 and torch.get_num_threads() == 1
    assert threads.set_threads(2) == (2, "as asked") and torch.get_num_threads() == 2
    with pytest.raises(InputError, match="at least 1"):
        threads.set_threads(0)


def test_the_cli_and_the_recipe_set_the_threads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    assert main(["--threads", "2", "models"]) == 0
    assert torch.get_num_threads() == 2
    capsys.readouterr()
    assert main(["--threads", "0", "models"]) == 2
    assert "at least 1" in capsys.readouterr().out
    train(load_config(None, tiny_recipe(tmp_path, "train.iterations=1", "train.threads=1")))
    assert torch.get_num_threads() == 1
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(None, tiny_recipe(tmp_path, "train.threads=0"))


def test_auto_loader_workers_follow_the_usable_cpus_up_to_four() -> None:
    assert threads.loader_workers("auto", (3, "3 CPUs"))[0] == 3
    assert threads.loader_workers("auto", (64, "64 CPUs"))[0] == threads.MAX_AUTO_WORKERS == 4
    assert threads.loader_workers("auto", (1, "1 CPU"))[0] == 1
    assert threads.loader_workers(0) == (0, "as the recipe sets it")
    assert threads.loader_workers("auto")[0] == max(1, min(threads.usable_cpus()[0], 4))
    for wrong in (-1, "many", True):
        with pytest.raises(InputError, match="data.workers"):
            threads.loader_workers(wrong)


def test_a_run_with_auto_workers_records_the_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(None, []).data.workers == "auto"
    with pytest.raises(ConfigError, match="data.workers"):
        load_config(None, tiny_recipe(tmp_path, "data.workers=-1"))
    with pytest.raises(ConfigError, match="data.workers"):
        load_config(None, tiny_recipe(tmp_path, "data.workers=many"))
    monkeypatch.setattr(threads, "usable_cpus", lambda: (1, "1 CPU (test)"))
    train(load_config(None, tiny_recipe(tmp_path, "train.iterations=1", "data.workers=auto")))
    assert load_config(tmp_path / "config.yaml").data.workers == 1


def test_idle_openmp_threads_sleep_only_on_a_busy_machine() -> None:
    cpus = os.cpu_count()
    busy: dict[str, str] = {}
    assert "PASSIVE" in choose_wait_policy(busy, load=cpus + 0.5, cpus=cpus, torch_loaded=False)
    assert busy == {"OMP_WAIT_POLICY": "PASSIVE"} and "PASSIVE" in openmp.DECISION
    quiet: dict[str, str] = {}
    assert "quiet" in choose_wait_policy(quiet, load=0.2, cpus=cpus, torch_loaded=False) and quiet == {}
    if cpus >= 8:  # a load of 1 on a large machine leaves room for this process's threads
        assert "quiet" in choose_wait_policy(quiet, load=1.0, cpus=2, torch_loaded=False)
    chosen = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert "as the environment sets it" in choose_wait_policy(chosen, load=cpus + 1.0, cpus=cpus, torch_loaded=False)
    assert chosen == {"OMP_WAIT_POLICY": "ACTIVE"}
    late: dict[str, str] = {}
    assert "loaded before" in choose_wait_policy(late, load=cpus + 1.0, cpus=cpus, torch_loaded=True) and late == {}

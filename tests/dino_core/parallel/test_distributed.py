from dino_core.parallel.env import _first_slurm_host, detect_env


def test_detects_torchrun_slurm_and_single():
    assert detect_env({}).world_size == 1
    e = detect_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (e.rank, e.world_size, e.local_rank, e.source) == (3, 8, 1, "torchrun")
    s = detect_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5"})
    assert (s.rank, s.world_size, s.local_rank, s.source) == (5, 16, 5, "slurm")
    assert not detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).distributed


def test_first_slurm_host():
    assert _first_slurm_host("node[03-05,9],gpu1") == "node03"
    assert _first_slurm_host("gpu7") == "gpu7"

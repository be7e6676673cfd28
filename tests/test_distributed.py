"""The same training functions in 2 processes (DDP over gloo, on the CPU) and in 1: parameters
stay identical across ranks, and 2 processes x B match 1 process x 2B within tolerance."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(task, out, per_device, processes, launcher="torchrun", env=None, timeout=300):
    """Run tests/ddp_worker.py TASK in `processes` processes; fails on a non-zero exit, and on a
    hang: after `timeout` seconds the launcher and its workers are stopped (none left waiting)."""
    if processes == 1:
        cmd = [sys.executable, str(WORKER), task, str(out), str(per_device)]
    elif launcher == "notebook_launcher":
        cmd = [sys.executable, str(WORKER), task, str(out), str(per_device), str(processes), str(free_port())]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), task,
               str(out), str(per_device)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **(env or {})})
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun passes SIGTERM on to its workers (each in its own session)
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
        raise AssertionError(f"{task} in {processes} processes hung for {timeout} s: {stderr[-2000:]}")
    assert process.returncode == 0, stderr[-3000:]


@pytest.mark.parametrize("task, per_device", [("sft", 4), ("rm", 4), ("ppo", 4)])
def test_two_processes_match_one_with_the_same_effective_batch(task, per_device, tmp_path):
    launch(task, tmp_path, per_device, 2)
    launch(task, tmp_path, per_device * 2, 1)
    # the first step's gradients, before the optimiser and unclipped: the same up to float
    # rounding (a factor of two in the cross-rank loss weighting is off by 50%, where Adam's
    # update below would move by only ~0.5%)
    grads = [load_file(str(tmp_path / f"{task}-{n}-0-grads.safetensors")) for n in (2, 1)]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-7, rtol=1e-4, msg=f"gradient {name}")
    rank0 = load_file(str(tmp_path / f"{task}-2-0.safetensors"))
    rank1 = load_file(str(tmp_path / f"{task}-2-1.safetensors"))
    single = load_file(str(tmp_path / f"{task}-1-0.safetensors"))
    initial = load_file(str(tmp_path / f"{task}-initial.safetensors"))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
    # the two runs moved the weights the same way: the difference of their updates is small
    # next to the update itself (Adam turns float-rounding noise in near-zero gradients into
    # full-size steps for a few entries, so entry-wise equality is too strict)
    flat = lambda weights: torch.cat([weights[k].flatten() for k in sorted(weights)])
    update_two, update_one = flat(rank0) - flat(initial), flat(single) - flat(initial)
    assert update_one.norm() > 0
    assert (update_two - update_one).norm() / update_one.norm() < 0.02


def test_notebook_launcher_runs_the_same_training_in_two_processes(tmp_path):
    """accelerate.notebook_launcher (fork, gloo on the CPU) around the unchanged fit: the ranks
    agree, and match the same run launched by torchrun exactly."""
    launch("sft", tmp_path, 4, 2, launcher="notebook_launcher")
    forked = [load_file(str(tmp_path / f"sft-2-{rank}.safetensors")) for rank in (0, 1)]
    initial = load_file(str(tmp_path / "sft-initial.safetensors"))
    (tmp_path / "torchrun").mkdir()
    launch("sft", tmp_path / "torchrun", 4, 2)
    torchrun = load_file(str(tmp_path / "torchrun" / "sft-2-0.safetensors"))
    assert any(not torch.equal(forked[0][k], initial[k]) for k in initial)  # it trained
    for name in forked[0]:
        assert torch.equal(forked[0][name], forked[1][name]), f"{name} differs between ranks"
        torch.testing.assert_close(forked[0][name], torchrun[name], atol=1e-6, rtol=0)


def test_a_stage_runs_as_a_script_under_two_processes(tmp_path):
    """tools/run_stage.py under torchrun: stage 1 of the ci preset, 2 CPU processes."""
    from conftest import copy_project, run_stage_process

    project = copy_project(tmp_path)
    assert run_stage_process(project, "0").returncode == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), str(project / "tools" / "run_stage.py"), "1",
           "--preset", "ci"]
    result = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(project / "model" / "actor")
    assert not list((project / "model").glob(".actor.*"))


# ----------------------------------------------------------------------------- DDP that cannot hang or drift

def histories(out):
    import json
    return [json.loads((out / f"history-{rank}.json").read_text()) for rank in (0, 1)]


def test_nan_on_one_rank_skips_the_step_on_both_and_finishes(tmp_path):
    """Rank 1's reward statistics are NaN, so only its losses are not finite. Both ranks must skip
    every update together (no rank waiting in an all-reduce the other never joins: launch()
    fails on its 300 s timeout) and keep identical weights."""
    launch("ppo_nan", tmp_path, 4, 2)
    first, second = histories(tmp_path)
    assert [h["skipped_updates"] for h in first] == [h["skipped_updates"] for h in second] == [1, 1]
    rank0 = load_file(str(tmp_path / "ppo_nan-2-0.safetensors"))
    rank1 = load_file(str(tmp_path / "ppo_nan-2-1.safetensors"))
    initial = load_file(str(tmp_path / "ppo_nan-initial.safetensors"))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]) and torch.equal(rank0[name], initial[name])


def test_adaptive_kl_coefficient_is_the_same_on_every_rank(tmp_path):
    """beta follows the KL measured over both ranks' answers, with both ranks' sample count."""
    from rlhf import ppo

    launch("ppo_adaptive", tmp_path, 4, 2)
    first, second = histories(tmp_path)
    assert [h["kl_coef"] for h in first] == [h["kl_coef"] for h in second]
    assert [h["kl"] for h in first] == [h["kl"] for h in second]
    for before, after in zip(first, first[1:]):
        assert before["prompts"] == 8
        assert after["kl_coef"] == pytest.approx(ppo.update_kl_coef(before["kl_coef"], before["kl"], 0.5, 8, 20))
    assert first[1]["kl_coef"] != first[0]["kl_coef"]


def test_two_process_ppo_resumes_where_it_would_have_been(tmp_path):
    """Killed after iteration 3 (checkpoint at 2), rerun: the 2-process run ends exactly where an
    uninterrupted one does, which needs each rank's own RNG state back (the ranks sample
    different answers)."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    whole.mkdir(), resumed.mkdir()
    launch("ppo_resume", whole, 4, 2)
    with pytest.raises(AssertionError):
        launch("ppo_resume", resumed, 4, 2, env={"RLHF_FAULT": "step:3"})   # SIGKILL at iteration 3
    assert (resumed / "resume" / "train_state.json").exists()
    launch("ppo_resume", resumed, 4, 2)
    for rank in (0, 1):
        a = load_file(str(whole / f"ppo_resume-2-{rank}.safetensors"))
        b = load_file(str(resumed / f"ppo_resume-2-{rank}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"rank {rank} differs after the resume"
    untimed = lambda runs: [[{k: v for k, v in row.items() if not k.startswith("time_")} for row in h] for h in runs]
    assert untimed(histories(whole)) == untimed(histories(resumed))


# ----------------------------------------------------------------------------- faults on one rank

def same_weights_on_both_ranks(out, task):
    rank0, rank1 = (load_file(str(out / f"{task}-2-{rank}.safetensors")) for rank in (0, 1))
    initial = load_file(str(out / f"{task}-initial.safetensors"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the ranks' weights differ"
    assert any(not torch.equal(rank0[k], initial[k]) for k in initial), "nothing trained"


def logs(out):
    return [(out / f"log-{rank}.txt").read_text() for rank in (0, 1)]


@pytest.mark.parametrize("task, what", [("sft_oom", "micro-batch"), ("ppo_oom", "PPO micro-batch")])
def test_out_of_memory_on_one_rank_in_the_last_backward_halves_on_both(task, what, tmp_path):
    """Rank 1 alone runs out of memory in the backward of a step's last micro-batch (of 2), after
    the step's other collectives. Every rank must learn of it and redo the step with half the
    micro-batch, together: no rank may wait in a gradient all-reduce that the other never joins
    (launch fails on its timeout), and the ranks end with the same weights."""
    launch(task, tmp_path, 4, 2, timeout=240)
    assert all(f"{what} halved to 1 rows" in log for log in logs(tmp_path)), logs(tmp_path)
    same_weights_on_both_ranks(tmp_path, task)


def test_fp16_overflow_keeps_or_drops_its_statistics_on_every_rank_alike(tmp_path):
    """fp16: the first update overflows, and only rank 1 sees a non-finite statistic. Whether the
    overflowed step's statistics count is one decision for all ranks (here: they do not, as rank
    1's are not finite); per rank, the ranks would average different key sets and hang or fail."""
    launch("ppo_overflow", tmp_path, 4, 2, timeout=240)
    first, second = histories(tmp_path)
    assert [h["skipped_updates"] for h in first] == [h["skipped_updates"] for h in second] == [1, 0]
    assert [sorted(h) for h in first] == [sorted(h) for h in second]
    assert "policy_loss" not in first[0] and "policy_loss" in first[1]
    assert first[0]["loss_scale"] == second[0]["loss_scale"] == 2.0 ** 15
    same_weights_on_both_ranks(tmp_path, "ppo_overflow")


def test_a_crash_between_the_two_renames_is_recovered_by_one_rank(tmp_path):
    """The resumable checkpoint after a crash between save_checkpoint's renames: the folder moved
    to .resume.old, the new one still .resume.tmp. The rerun's ranks must not both put .old back
    (each rename here takes 2 s, so two ranks that both try collide for sure): rank 0 recovers
    while rank 1 waits, and both resume at iteration 2."""
    with pytest.raises(AssertionError):
        launch("ppo_resume", tmp_path, 4, 2, env={"RLHF_FAULT": "step:3"}, timeout=240)  # killed after iteration 3
    resume = tmp_path / "resume"
    os.replace(resume, tmp_path / ".resume.old")                         # the first rename happened,
    (tmp_path / ".resume.tmp").mkdir()                                  # the second did not
    (tmp_path / ".resume.tmp" / "model.safetensors").write_bytes(b"half written")
    launch("ppo_recover", tmp_path, 4, 2, timeout=240)
    assert (resume / "train_state.json").exists() and not list(tmp_path.glob(".resume.*"))
    first, second = histories(tmp_path)
    assert [h["iteration"] for h in first] == [h["iteration"] for h in second] == [1, 2, 3, 4]
    assert all("resumed from" in log and "at iteration 2" in log for log in logs(tmp_path))
    same_weights_on_both_ranks(tmp_path, "ppo_recover")

"""run_ranks: the multi-rank CPU tests' process launcher."""
import torch
import torch.multiprocessing as mp


def _one_thread(rank: int, fn, *args) -> None:
    torch.set_num_threads(1)  # the parent's OpenMP pool did not survive the fork
    fn(rank, *args)


def run_ranks(fn, nprocs: int, *args) -> None:
    """fn(rank, *args) in `nprocs` processes. Forked, not spawned: a forked child ends with
    os._exit, while a spawned one runs interpreter shutdown, where gloo's worker threads, still
    releasing finished collectives, cannot take the GIL and abort the process (torch 2.13)."""
    mp.start_processes(_one_thread, args=(fn, *args), nprocs=nprocs, start_method="fork")

"""Re-runs the repros of issue #18 (bad input and faults outside EP) and classifies each outcome:
clear error (ValueError/TypeError/TimeoutError naming the argument, or the demo's one-line exit
code 2/1), torch-internal error (any other exception or a traceback), silent wrong (bad input
accepted, or a wrong result), abort (killed by a signal), hang (past the time limit), or
correct (valid input, right result). Every probe runs in its own process.

    python scripts/probe_faults.py [--only SUBSTRING] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

LIMIT_S = 120  # a probe that runs longer hangs
PIPELINE_TIMEOUT_S = "10"  # DEEPSEEK_EXT_PIPELINE_TIMEOUT for the DualPipe probes
TINY = ["--batch", "2", "--seq", "16", "--prompt-bytes", "8", "--new-bytes", "4"]

# --- Python probes: `code` leaves `result`; a bad input names `error` in its message, a valid one passes `check`
OPS = {
    "unpermute with every top-k slot -1": dict(code="""
        x = torch.randn(5, 256).bfloat16(); topk = torch.full((5, 2), -1)
        rows, _, m_indices, inverse = dx.gemm.permute_to_grouped(x, None, topk, 4)
        result = dx.gemm.unpermute_from_grouped(rows, inverse, torch.rand(5, 2))""",
        check="result.shape == (5, 256) and not result.any()"),
    "per_token cast of a [0, 256] tensor": dict(code="""
        result = dx.quant.per_token_cast_to_fp8(torch.empty(0, 256))""",
        check="result[0].shape == (0, 256) and result[1].shape == (0, 2)"),
    "per_token cast of an empty zero-stride tensor": dict(code="""
        result = dx.quant.per_token_cast_to_fp8(torch.empty(1, 256).as_strided((0, 256), (0, 0)))""",
        check="result[0].shape == (0, 256)"),
    "pow2_scale='yes'": dict(code="""
        result = dx.quant.per_token_cast_to_fp8(torch.randn(4, 256), pow2_scale='yes')""", error="pow2_scale"),
    "dequantize(q, s, block=128)": dict(code="""
        q, s = dx.quant.per_token_cast_to_fp8(torch.randn(4, 256))
        result = dx.quant.dequantize(q, s, block=128)""", error="block"),
    "permute_to_grouped(alignment=2**31)": dict(code="""
        result = dx.gemm.permute_to_grouped(torch.randn(4, 256).bfloat16(), None, torch.zeros(4, 1, dtype=torch.long),
                                            4, alignment=2**31)""", error="alignment"),
    "permute_to_grouped(num_experts=2**40)": dict(code="""
        result = dx.gemm.permute_to_grouped(torch.randn(4, 256).bfloat16(), None, torch.zeros(4, 1, dtype=torch.long),
                                            2**40)""", error="num_experts"),
    "DEEPSEEK_EXT_BACKEND=cuda on a CPU: dx.backend()": dict(env={"DEEPSEEK_EXT_BACKEND": "cuda"}, code="""
        result = dx.backend()""", error="DEEPSEEK_EXT_BACKEND=cuda", errors=(RuntimeError,)),
}

# --- two gloo ranks; each rank runs `rank_code` (a step) and reports how it ended
DUALPIPE_WORKER = """
import datetime, json, os, sys, time, torch, torch.distributed as dist
from torch import nn
from deepseek_ext.pipeline import DualPipe
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=600))
torch.manual_seed(0)
pipe = DualPipe((nn.Linear(8, 8).double(), nn.Linear(8, 8).double()))
criterion = lambda out, label: ((out - label) ** 2).mean()
start = time.monotonic()
try:
%s
    verdict = {"raised": None}
except Exception as e:
    verdict = {"raised": type(e).__name__, "message": str(e)}
verdict["seconds"] = time.monotonic() - start
open(os.path.join(out, f"rank{rank}.json"), "w").write(json.dumps(verdict))
"""
DUALPIPE = {
    "DualPipe: rank 0 batch 8 in 4 chunks, rank 1 batch 16 in 8": dict(code="""
    batch, chunks = (8, 4) if rank == 0 else (16, 8)
    x = torch.randn(batch, 8, dtype=torch.float64)
    pipe.step(x, num_chunks=chunks, criterion=criterion, labels=(x,))""", error="num_chunks", ranks=(0, 1)),
    "DualPipe: rank 1 raises before step": dict(code="""
    if rank == 1:
        raise RuntimeError("the user's own code failed")
    x = torch.randn(8, 8, dtype=torch.float64)
    pipe.step(x, num_chunks=4, criterion=criterion, labels=(x,))""", error="rank 1 of the process group did not start",
        ranks=(0,)),
    "DualPipe: labels' batch differs from the inputs'": dict(code="""
    x = torch.randn(8, 8, dtype=torch.float64)
    labels = (x,) if rank == 0 else (torch.randn(6, 8, dtype=torch.float64),)
    pipe.step(x, num_chunks=4, criterion=criterion, labels=labels)""", error="labels[0]: batch 6", ranks=(0, 1)),
}

# --- the demo CLI: flags, and a checkpoint prepared by `prepare` (see prepare_checkpoint)
DEMO = {
    "--seq 5000": dict(flags=["--seq", "5000"], error="seq must be in"),
    "--prompt-bytes 100000": dict(flags=["--prompt-bytes", "100000"], error="prompt length must be in"),
    "--out under a regular file": dict(flags=["--out", "{tmp}/file/out"], error="--out"),
    "--out in a read-only directory": dict(flags=["--out", "{tmp}/ro/out"], error="--out", not_as_root=True),
    "--checkpoint /proc/x": dict(flags=["--checkpoint", "/proc/x"], error="--checkpoint"),
    "--lr inf": dict(flags=["--lr", "inf"], error="lr must be"),
    "--lr 1e6": dict(flags=["--lr", "1e6"], error="lr must be"),
    "--resume on an empty file": dict(flags=["--resume", "--checkpoint", "{tmp}/empty.pt"], error="empty.pt"),
    "--resume on a directory": dict(flags=["--resume", "--checkpoint", "{tmp}/dir.pt"], error="dir.pt"),
    "--device foo": dict(flags=["--device", "foo"], error="--device foo"),
    "DEEPSEEK_EXT_BACKEND=cuda on a CPU": dict(flags=[], env={"DEEPSEEK_EXT_BACKEND": "cuda"},
                                               error="DEEPSEEK_EXT_BACKEND=cuda"),
    "checkpoint with 64 flipped bytes in a tensor": dict(flags=["--resume"], prepare="flipped", error="SHA-256"),
    "checkpoint preset v3_671b": dict(flags=["--resume"], prepare={"settings": {"preset": "v3_671b"}},
                                      error="preset must be one of"),
    "checkpoint step -1000": dict(flags=["--resume"], prepare={"step": -1000}, error="step must be an int in"),
    "checkpoint steps '4' (a str)": dict(flags=["--resume"], prepare={"settings": {"steps": "4"}},
                                         error="steps must be an int"),
    "checkpoint batch 0": dict(flags=["--resume"], prepare={"settings": {"batch": 0}}, error="batch must be >= 1"),
    "checkpoint lr inf": dict(flags=["--resume"], prepare={"settings": {"lr": float("inf")}}, error="lr must be"),
    "stale .tmp from a kill -9 mid-save": dict(flags=[], prepare="stale_tmp", valid=True),
}


def run(cmd, env=None, cwd=None):
    """(rc or None on timeout, stdout, stderr, seconds)."""
    start = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT_S, env={**os.environ, **(env or {})},
                             cwd=cwd)
        return res.returncode, res.stdout, res.stderr, time.monotonic() - start
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", e.stderr or "", time.monotonic() - start


def by_signal(rc):
    return "hang" if rc is None else "abort" if rc < 0 else None


PYTHON_PROBE = """import json, torch, deepseek_ext as dx
detail = ""
try:
%(body)s
    verdict = "correct" if (%(check)s) else "silent wrong"
except %(errors)s as e:
    verdict, detail = ("clear error" if %(error)r is not None and %(error)r in str(e) else "torch-internal error"), str(e)
except Exception as e:
    verdict, detail = "torch-internal error", f"{type(e).__name__}: {e}"
print(json.dumps({"verdict": verdict, "detail": detail}))
"""


def probe_python(spec):
    script = PYTHON_PROBE % {"body": textwrap.indent(textwrap.dedent(spec["code"]).strip(), "    "),
                             "check": spec.get("check", "False"), "error": spec.get("error"),
                             "errors": "(" + ", ".join(e.__name__ for e in spec.get("errors", (ValueError, TypeError))) + ",)"}
    rc, out, err, _ = run([sys.executable, "-c", script], env=spec.get("env"))
    if by_signal(rc):
        return by_signal(rc), err[-300:]
    last = json.loads(out.strip().splitlines()[-1])
    return last["verdict"], last["detail"][:300]


def probe_dualpipe(spec):
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "worker.py"
        worker.write_text(DUALPIPE_WORKER % textwrap.indent(textwrap.dedent(spec["code"]), "    "))
        env = {**os.environ, "DEEPSEEK_EXT_PIPELINE_TIMEOUT": PIPELINE_TIMEOUT_S}
        procs = [subprocess.Popen([sys.executable, str(worker), str(r), f"{tmp}/init", tmp], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in range(2)]
        deadline = time.monotonic() + LIMIT_S
        for p in procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                return "hang", f"no result after {LIMIT_S} s"
        if any(p.returncode < 0 for p in procs):
            return "abort", [p.returncode for p in procs]
        verdicts = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in spec["ranks"]]
    if all(v["raised"] in ("ValueError", "TypeError", "TimeoutError") and spec["error"] in v["message"]
           for v in verdicts):
        return "clear error", f"{verdicts[0]['message'][:200]} (after {max(v['seconds'] for v in verdicts):.1f} s)"
    if all(v["raised"] is None for v in verdicts):
        return "silent wrong", "the step ran"
    return "torch-internal error", verdicts


def prepare_checkpoint(how, tmp: Path) -> None:
    """The checkpoints the issue crafted: a tiny run's, with flipped bytes or changed fields, or a stale .tmp."""
    import torch  # noqa: F401  (heavy: only for the probes that need a checkpoint)
    from deepseek_ext.demo.cli import load_corpus
    from deepseek_ext.demo.trainer import DemoRun, RunSettings
    ck = tmp / "checkpoint.pt"
    if how == "stale_tmp":
        (tmp / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
        return
    run = DemoRun(RunSettings.for_preset("tiny", steps=4, batch=2, seq=16), load_corpus(), "cpu", 13)
    run.train_step()
    if how == "flipped":
        run.save(ck)
        data = bytearray(ck.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        ck.write_bytes(bytes(data))
        return
    state = run.state_dict()
    for key, value in how.items():
        state[key] = {**state[key], **value} if key == "settings" else value
    run.state_dict = lambda: state  # save() checksums whatever state_dict() returns
    run.save(ck)


def probe_demo(spec):
    if spec.get("not_as_root") and os.geteuid() == 0:
        return "not reproducible", "root writes into read-only directories"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "file").write_text("x")
        (tmp / "empty.pt").write_bytes(b"")
        (tmp / "dir.pt").mkdir()
        (tmp / "ro").mkdir(mode=0o555)
        if "prepare" in spec:
            prepare_checkpoint(spec["prepare"], tmp)
        flags = [f.format(tmp=tmp) for f in spec["flags"]]
        out = [] if "--out" in flags else ["--out", str(tmp)]
        steps = [] if "--resume" in flags else ["--steps", "3"]
        rc, stdout, stderr, _ = run([sys.executable, "-m", "deepseek_ext.demo", *out, *TINY, *steps, *flags],
                                    env=spec.get("env"))
        stale_left = (tmp / "checkpoint.pt.tmp").exists()
    if by_signal(rc):
        return by_signal(rc), stderr[-300:]
    if "Traceback" in stderr:
        return "torch-internal error", stderr.strip().splitlines()[-1]
    if spec.get("valid"):
        return ("correct", "rc 0, stale .tmp removed") if rc == 0 and not stale_left else ("silent wrong", rc)
    one_line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if rc in (1, 2) and spec["error"] in one_line and one_line.startswith("deepseek_ext.demo: "):
        return "clear error", one_line[:200]
    return ("silent wrong" if rc == 0 else "torch-internal error"), f"rc {rc}: {one_line[:200]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the probes whose name contains this")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    groups = [("ops", OPS, probe_python), ("dualpipe", DUALPIPE, probe_dualpipe), ("demo", DEMO, probe_demo)]
    results, counts = [], {}
    for group, probes, probe in groups:
        for name, spec in probes.items():
            if args.only not in name:
                continue
            start = time.monotonic()
            verdict, detail = probe(spec)
            counts[verdict] = counts.get(verdict, 0) + 1
            results.append({"group": group, "probe": name, "verdict": verdict, "detail": str(detail),
                            "seconds": round(time.monotonic() - start, 1)})
            print(f"{verdict:21s} {group:8s} {name}  ({results[-1]['seconds']} s)  {str(detail)[:140]}", flush=True)
    print("\n" + ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())) + f" ({len(results)} probes)")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "results": results}, indent=1))
    bad = sum(n for v, n in counts.items() if v not in ("clear error", "correct", "not reproducible"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

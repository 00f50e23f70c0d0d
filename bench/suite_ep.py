"""Expert-parallel dispatch/combine (DeepEP's workload: 4096 tokens/rank, hidden 7168, top-8 of 256
experts, 8 ranks, FP8 dispatch, bf16 combine), one rank measured with loopback peers (their
regions are local memory; each launch also runs the peers' side of rank 0's traffic, so the real
kernels run on one GPU and every (token, rank) row crosses a ring once each way).

TB/s = payload bytes sent to peers per second (dispatch: rows x (hidden FP8 bytes + scales);
combine: rows x hidden x 2) at 20, 24 and all SMs (also printed per SM, the figure to hold
against DeepEP's intranode kernels), beside torch index_select / index_add_ moving the same rows
in the same run. Times are CUDA-graph replays (worst-case-size outputs: no CPU sync). The buffer
footprint per rank is printed beside the bulk-synchronous design's R x max_tokens x (4H + 512 B).
Overlap: fp8_gemm_nt (4096x7168x2048) on 112 SMs beside dispatch on 20 SMs on another stream;
reported value = wall time / max(alone times) (target <= 1.1).
"""
from __future__ import annotations

import statistics

import torch

import deepseek_ext as dx
from deepseek_ext.reference.quant import per_block_cast_to_fp8
import ep_traffic
from report import OURS, make_row
from timing import graph_time_ms

TOKENS, HIDDEN, EXPERTS, TOPK, RANKS = 4096, 7168, 256, 8, 8
SMS = (20, 24, None)  # None: every SM of the device
SHAPE = f"{TOKENS} tok x {HIDDEN}, top-{TOPK}/{EXPERTS}, {RANKS} ranks"


def _routing() -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.rand(TOKENS, EXPERTS, device="cuda")
    idx = scores.topk(TOPK, dim=1).indices
    return idx, torch.rand(TOKENS, TOPK, device="cuda")


def _footprint(buffer, num_sms: int) -> None:
    old = RANKS * TOKENS * (4 * HIDDEN + 512)
    print(f"bench ep buffer ({num_sms} SMs): {buffer._ipc.region_bytes / 2**20:.1f} MiB per rank "
          f"(rings of {buffer._ipc.layout.ring_bytes // 1024} KiB); old design R x max_tokens x (4H + 512 B) = "
          f"{old / 2**20:.0f} MiB")


def _rows(op: str, impl: str, ms: float, nbytes: int) -> dict:
    return make_row("ep", op, SHAPE, impl, ms, nbytes / ms / 1e9, "TB/s")


def _overlap_row(buffer, q, s, idx, w, layout, reps: int) -> dict:
    """Wall time of the GEMM (112 SMs) and dispatch (20 SMs) on two streams over the longer alone."""
    m, n, k = 4096, 7168, 2048
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    b, sb = per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    full = dx.get_num_sms()
    dx.set_num_sms(112)
    try:
        graphs = {}
        for name, fn in (("gemm", lambda: dx.gemm.fp8_gemm_nt(a, sa, b, sb)),
                         ("dispatch", lambda: buffer.dispatch((q, s), idx, w, layout=layout))):
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                fn()
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    fn()
            graphs[name] = graph
        streams = {name: torch.cuda.Stream() for name in graphs}

        def run(names) -> float:
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                main = torch.cuda.current_stream()
                start.record(main)
                for name in names:
                    streams[name].wait_event(start)
                    with torch.cuda.stream(streams[name]):
                        graphs[name].replay()
                    main.wait_stream(streams[name])
                end.record(main)
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            return statistics.median(times)

        alone = {name: run([name]) for name in graphs}
        both = run(list(graphs))
    finally:
        dx.set_num_sms(full)
    ratio = both / max(alone.values())
    print(f"bench ep overlap: gemm alone {alone['gemm']:.3f} ms, dispatch alone {alone['dispatch']:.3f} ms, "
          f"together {both:.3f} ms -> {ratio:.3f}x the longer (target <= 1.1)")
    return make_row("ep", "overlap gemm(112 SMs) + dispatch(20 SMs)", SHAPE, OURS, both, ratio, "x wall/max(alone)")


def run(quick: bool) -> list[dict]:
    reps = 10 if quick else 50
    x = torch.randn(TOKENS, HIDDEN, device="cuda", dtype=torch.bfloat16)
    q, s = dx.quant.per_token_cast_to_fp8(x, pow2_scale=True)
    idx, w = _routing()
    rows = []
    overlap_buffer = None
    all_sms = torch.cuda.get_device_properties(0).multi_processor_count
    sms = [n or all_sms for n in (SMS[:1] if quick else SMS)]
    for num_sms in sms:
        buffer = dx.ep.Buffer.loopback(HIDDEN, EXPERTS, RANKS, TOKENS, num_sms=num_sms, worst_case=True)
        _footprint(buffer, num_sms)
        layout = buffer.get_dispatch_layout(idx)
        pairs = int(layout.num_tokens_per_rank.sum())
        dispatch_bytes, combine_bytes = pairs * (HIDDEN + s.shape[1] * 4), pairs * HIDDEN * 2
        ms = graph_time_ms(lambda: buffer.dispatch((q, s), idx, w, layout=layout), reps=reps)
        rows.append(_rows(f"dispatch FP8 ({num_sms} SMs)", OURS, ms, dispatch_bytes))
        got = buffer.dispatch((q, s), idx, w, layout=layout)  # the handle a loopback combine needs
        y = torch.randn(got.x.shape, device="cuda", dtype=torch.bfloat16)
        ms_c = graph_time_ms(lambda: buffer.combine(y, got.handle), reps=reps)
        rows.append(_rows(f"combine bf16 ({num_sms} SMs)", OURS, ms_c, combine_bytes))
        print(f"bench ep per SM ({num_sms} SMs): dispatch {dispatch_bytes / ms / 1e6 / num_sms:.2f} GB/s, "
              f"combine {combine_bytes / ms_c / 1e6 / num_sms:.2f} GB/s")
        if num_sms == 20:
            overlap_buffer = (buffer, layout)
        buffer.check_errors()

    # Baselines in the same run: the same rows through torch's gather and scatter-add.
    send_token = torch.cat([layout.is_token_in_rank[:, d].nonzero().squeeze(1) for d in range(RANKS)])
    q_bytes = q.view(torch.uint8)
    ms = graph_time_ms(lambda: torch.index_select(q_bytes, 0, send_token), reps=reps)
    for num_sms in sms:
        rows.append(_rows(f"dispatch FP8 ({num_sms} SMs)", "torch index_select (same rows)", ms, dispatch_bytes))
    out = torch.zeros(TOKENS, HIDDEN, device="cuda", dtype=torch.bfloat16)
    partials = torch.randn(send_token.numel(), HIDDEN, device="cuda", dtype=torch.bfloat16)
    ms = graph_time_ms(lambda: out.index_add_(0, send_token, partials), reps=reps)
    for num_sms in sms:
        rows.append(_rows(f"combine bf16 ({num_sms} SMs)", "torch index_add_ (same rows)", ms, combine_bytes))

    buffer, layout = overlap_buffer
    rows.append(_overlap_row(buffer, q, s, idx, w, layout, reps))
    traffic = ep_traffic.model(quick)  # across nodes: IB bytes per token, flat vs hierarchical (CPU model)
    print(ep_traffic.format_table(traffic))
    return rows + ep_traffic.rows(traffic)

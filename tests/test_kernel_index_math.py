"""The quantization kernels' __host__ __device__ math (scale_math.cuh, tile.cuh), compiled for the
host with nvcc (tests/cpp/index_math.cu) and checked against values computed independently here:
the scale math bitwise against deepseek_ext.reference.quant, the scale offsets against the strides
of real dx.quant outputs, and the tile mappings against coverage, coalescing and bank rules."""
from __future__ import annotations

import struct
import subprocess
from collections import Counter

import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.reference import quant as ref
from host_build import build_host_driver

THREADS = 256
WARP = 32
BANKS = 32


@pytest.fixture(scope="module")
def ask(tmp_path_factory):
    """ask(queries) -> answer lines of the compiled driver, one per query."""
    exe = build_host_driver("index_math.cu", tmp_path_factory.mktemp("index_math"))

    def run(queries: list[str]) -> list[str]:
        out = subprocess.run([str(exe)], input="\n".join(queries) + "\n", capture_output=True,
                             text=True, timeout=60, check=True).stdout.split("\n")
        assert len(out) == len(queries) + 1 and out[-1] == ""
        return out[:-1]
    return run


def bits(f: torch.Tensor) -> list[str]:
    return [f"{b:08x}" for b in f.view(torch.int32).tolist() for b in [b & 0xffffffff]]


def as_floats(hex_words: list[str]) -> torch.Tensor:
    return torch.tensor([int(h, 16) for h in hex_words], dtype=torch.int64).to(torch.int32).view(torch.float32)


def _special_floats() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    random = torch.cat([torch.rand(200, generator=g) * 10.0 ** torch.randint(-12, 30, (200,), generator=g),
                        torch.randn(100, generator=g)])
    pow2 = 2.0 ** torch.arange(-30, 30, dtype=torch.float32)
    special = torch.tensor([0.0, -0.0, 1e-4, 0.99999994e-4, 1.0000001e-4, 1.0, 448.0, 3.4e38, 1e-40,
                            float("inf"), float("-inf"), float("nan")])
    above_pow2 = torch.nextafter(pow2, torch.tensor(float("inf")))
    below_pow2 = torch.nextafter(pow2, torch.tensor(0.0))
    return torch.cat([random, pow2, above_pow2, below_pow2, special]).float()


def test_scale_math_matches_reference_bitwise(ask):
    amax = _special_floats().abs()
    for pow2 in (False, True):
        got = as_floats(ask([f"scale_from_amax {b} {int(pow2)}" for b in bits(amax)]))
        expected = ref.scale_from_amax(amax, pow2)
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    s = amax[torch.isfinite(amax) & (amax > 0)] / 448
    got = as_floats(ask([f"round_up_pow2 {b}" for b in bits(s)]))
    assert torch.equal(got.view(torch.int32), ref.round_up_pow2(s).view(torch.int32))


def test_scale_and_clamp_matches_reference_cast_bitwise(ask):
    x = _special_floats()
    s = ref.scale_from_amax(x.abs().flip(0), False)
    got = as_floats(ask([f"scale_and_clamp {a} {b}" for a, b in zip(bits(x), bits(s))]))
    expected = ref.true_div(x, s).clamp(-ref.FP8_MAX, ref.FP8_MAX)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got[~got.isnan()].view(torch.int32), expected[~expected.isnan()].view(torch.int32))


def test_quotient_32_and_64_bit(ask):
    cases = [(0, 1), (7, 3), (2**32 - 1, 7), (2**32, 7), (2**40 + 5, 3), (5, 2**33), (2**62, 2**31 - 1)]
    assert [int(v) for v in ask([f"quotient {a} {b}" for a, b in cases])] == [a // b for a, b in cases]


def _offset(t: torch.Tensor, index: tuple[int, ...]) -> int:
    return t.storage_offset() + sum(i * s for i, s in zip(index, t.stride()))


@pytest.mark.parametrize("shape", ((5, 272), (3, 7, 400), (2, 1, 16)))
def test_m_major_offsets_match_per_token_outputs(ask, shape):
    _, s = dx.quant.per_token_cast_to_fp8(torch.randn(shape))
    m, groups = s.shape[-2:]
    batches = s.numel() // (m * groups)
    index = [(b, r, g) for b in range(batches) for r in range(m) for g in range(groups)]
    got = ask([f"m_major_scale_offset {b * m + r} {g} {m} {s.stride(-1)} {groups}" for b, r, g in index])
    s3 = s.reshape(batches, m, groups) if s.dim() == 3 else s.unsqueeze(0)
    assert [int(v) for v in got] == [_offset(s3, i) for i in index]


def test_m_major_offsets_match_transposed_scales(ask):
    _, _, _, st = dx.quant.per_token_cast_to_fp8_with_transpose(torch.randn(144, 208))
    k, groups = st.shape
    index = [(r, g) for r in range(k) for g in range(groups)]
    got = ask([f"m_major_scale_offset {r} {g} {k} {st.stride(-1)} {groups}" for r, g in index])
    assert [int(v) for v in got] == [_offset(st, i) for i in index]


@pytest.mark.parametrize("elem_bytes", (1, 2, 4))
def test_tile_swizzle_is_a_permutation_of_each_row(ask, elem_bytes):
    row_bytes = 128 * elem_bytes
    queries = [f"tile_byte_offset {r} {c} {row_bytes}" for r in range(128) for c in range(0, row_bytes, 4)]
    offsets = [int(v) for v in ask(queries)]
    per_row = row_bytes // 4
    for r in range(128):
        row = offsets[r * per_row:(r + 1) * per_row]
        assert sorted(row) == list(range(r * row_bytes, (r + 1) * row_bytes, 4))
    chunks = [int(v) for v in ask([f"tile_byte_offset {r} {c} {row_bytes}" for r in range(128) for c in range(0, row_bytes, 16)])]
    assert all(o % 16 == 0 for o in chunks)  # 16-byte chunks stay whole (vector stores)


def _wavefronts(byte_offsets: list[int], width: int) -> int:
    """Shared-memory wavefronts for one warp access: the most distinct 4-byte words in one bank."""
    words_per_bank = Counter()
    for o in set(w for off in byte_offsets for w in range(off // 4, (off + width) // 4)):
        words_per_bank[o % BANKS] += 1
    return max(words_per_bank.values())


@pytest.mark.parametrize("elem_bytes, pack_bytes", ((1, 4), (2, 8), (4, 8)))
def test_column_pass_reads_are_bank_conflict_free(ask, elem_bytes, pack_bytes):
    """Each warp of the column pass reads 16 rows x (32 lanes x pack_bytes) in the fewest
    wavefronts its bytes allow; the row pass writes whole rows in the fewest wavefronts."""
    row_bytes = 128 * elem_bytes
    tasks = 128 // (pack_bytes // elem_bytes) * 8
    mapping = [tuple(map(int, v.split())) for v in ask([f"column_task {t}" for t in range(tasks)])]
    assert sorted(mapping) == sorted((16 * r, p) for r in range(8) for p in range(tasks // 8))
    for warp_start in range(0, tasks, WARP):
        lanes = mapping[warp_start:warp_start + WARP]
        assert len({p for _, p in lanes[:8]}) == 1  # 8 adjacent lanes share a pack: shuffle amax
        for i in range(16):
            offsets = [int(v) for v in ask([f"tile_byte_offset {r0 + i} {p * pack_bytes} {row_bytes}" for r0, p in lanes])]
            assert _wavefronts(offsets, pack_bytes) == WARP * pack_bytes // (4 * BANKS)
    chunks_per_row = row_bytes // 16
    for u in range(chunks_per_row // 2):
        rc = [tuple(map(int, v.split())) for v in ask([f"tile_load {t} {u} {chunks_per_row}" for t in range(WARP)])]
        offsets = [int(v) for v in ask([f"tile_byte_offset {r} {c * 16} {row_bytes}" for r, c in rc])]
        assert _wavefronts(offsets, 16) == WARP * 16 // (4 * BANKS)


@pytest.mark.parametrize("chunks_per_row", (8, 16, 32))
def test_tile_load_covers_each_chunk_once_with_coalesced_warps(ask, chunks_per_row):
    loads = chunks_per_row // 2
    answers = ask([f"tile_load {t} {u} {chunks_per_row}" for t in range(THREADS) for u in range(loads)])
    rc = [tuple(map(int, v.split())) for v in answers]
    assert sorted(rc) == [(r, c) for r in range(128) for c in range(chunks_per_row)]
    for warp in range(THREADS // WARP):
        for u in range(loads):
            lanes = [rc[(warp * WARP + lane) * loads + u] for lane in range(WARP)]
            flat = [r * chunks_per_row + c for r, c in lanes]
            assert flat == list(range(flat[0], flat[0] + WARP))  # one contiguous span per warp


def test_tile_coord_row_major_over_batches(ask):
    tile_rows, tile_cols = 3, 5
    got = [tuple(map(int, v.split())) for v in ask([f"tile_coord {t} {tile_rows} {tile_cols}" for t in range(2 * 15)])]
    assert got == [(b, r, c) for b in range(2) for r in range(tile_rows) for c in range(tile_cols)]


def test_struct_round_trip_helper():
    """bits()/as_floats() themselves: a known pattern survives the trip."""
    assert bits(torch.tensor([1.0, -2.0])) == ["3f800000", "c0000000"]
    assert as_floats(["3f800000"]).item() == struct.unpack("<f", bytes.fromhex("0000803f"))[0]

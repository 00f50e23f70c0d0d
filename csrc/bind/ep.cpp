// Bindings of the expert-parallel launchers: the parameter structs are filled field by field
// from Python (addresses as ints), and the memory helpers return (value, error string).
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "bind/common.h"
#include "launch/ep.h"

namespace dx::bind {

namespace py = pybind11;

namespace {

// Exposes a pointer field as a Python int property.
template <typename Struct, typename T>
void pointer_field(py::class_<Struct>& cls, const char* name, T* Struct::*field) {
  cls.def_property(
      name, [field](const Struct& s) { return reinterpret_cast<uintptr_t>(s.*field); },
      [field](Struct& s, uintptr_t address) { s.*field = reinterpret_cast<T*>(address); });
}

// Both launch structs carry the peer tables (two device arrays of region addresses), the
// operation header (a list of ep::kHeaderWords ints), and up to kMaxRanks sides (`sides`).
template <typename Struct, typename Side>
void common_fields(py::class_<Struct>& cls, Side (Struct::*sides)[ep::kMaxRanks], const char* set_side) {
  cls.def("set_peers", [](Struct& s, uintptr_t data, uintptr_t signal) {
    s.peers = {ptr<const uint64_t>(data), ptr<const uint64_t>(signal)};
  });
  cls.def_property(
      "header", [](const Struct& s) { return std::vector<int64_t>(s.header, s.header + ep::kHeaderWords); },
      [](Struct& s, const std::vector<int64_t>& words) {
        if (words.size() != ep::kHeaderWords) throw py::value_error("header must have EP_HEADER_WORDS ints");
        std::copy(words.begin(), words.end(), s.header);
      });
  cls.def(set_side, [sides](Struct& s, int i, const Side& side) {
    if (i < 0 || i >= ep::kMaxRanks) throw py::index_error("side index must be in [0, EP_MAX_RANKS)");
    (s.*sides)[i] = side;
  });
}

void register_layouts(py::module_& m) {
  using L = ep::RegionLayout;
  py::class_<L> cls(m, "EpRegionLayout", py::module_local());  // _C and _emu both define it
  cls.def(py::init<>());
#define DX_FIELD(name) cls.def_readwrite(#name, &L::name)
  DX_FIELD(arrivals); DX_FIELD(barrier_epoch); DX_FIELD(grid_base); DX_FIELD(grid_arrivals); DX_FIELD(error);
  DX_FIELD(headers); DX_FIELD(ring_words); DX_FIELD(counts); DX_FIELD(rings); DX_FIELD(count_cols);
  DX_FIELD(channels); DX_FIELD(ring_bytes);
#undef DX_FIELD
  m.attr("EP_MAX_RANKS") = ep::kMaxRanks;
  m.attr("EP_MAX_TOPK") = ep::kMaxTopk;
  m.attr("EP_HEADER_WORDS") = ep::kHeaderWords;
  m.attr("EP_WARPS") = ep::kWarps;
  m.def("ep_dispatch_slot_bytes", &ep::dispatch_slot_bytes);
}

void register_dispatch_params(py::module_& m) {
  using S = ep::RecvSide;
  py::class_<S> side(m, "EpRecvSide", py::module_local());
  side.def(py::init<>());
  side.def_readwrite("rank", &S::rank);
  side.def_readwrite("ld_out_scales", &S::ld_out_scales);
  side.def_readwrite("cap_tokens", &S::cap_tokens);
  side.def_readwrite("cap_rows", &S::cap_rows);
#define DX_PTR(name) pointer_field(side, #name, &S::name)
  DX_PTR(local); DX_PTR(num_recv); DX_PTR(tokens_per_local_expert); DX_PTR(info); DX_PTR(out_x); DX_PTR(out_scales);
  DX_PTR(out_topk_idx); DX_PTR(out_topk_weights); DX_PTR(out_src_rank); DX_PTR(out_src_token); DX_PTR(out_m_indices);
  DX_PTR(out_row_token); DX_PTR(out_row_weight); DX_PTR(out_token_rows);
#undef DX_PTR

  using P = ep::DispatchParams;
  py::class_<P> cls(m, "EpDispatchParams", py::module_local());
  cls.def(py::init<>());
#define DX_FIELD(name) cls.def_readwrite(#name, &P::name)
  DX_FIELD(rank); DX_FIELD(num_ranks); DX_FIELD(local_experts); DX_FIELD(topk); DX_FIELD(num_rx); DX_FIELD(tag);
  DX_FIELD(num_tokens); DX_FIELD(x_bytes); DX_FIELD(scale_groups); DX_FIELD(alignment); DX_FIELD(timeout_ns);
  DX_FIELD(slot_bytes); DX_FIELD(only_agree); DX_FIELD(ld_x_bytes); DX_FIELD(ld_scales); DX_FIELD(layout);
#undef DX_FIELD
#define DX_PTR(name) pointer_field(cls, #name, &P::name)
  DX_PTR(input_error); DX_PTR(info); DX_PTR(x); DX_PTR(scales); DX_PTR(topk_idx); DX_PTR(topk_weights);
  DX_PTR(token_slot_in_rank); DX_PTR(slot_in_expert); DX_PTR(tokens_per_rank); DX_PTR(tokens_per_expert);
  DX_PTR(local);
#undef DX_PTR
  common_fields(cls, &P::rx, "set_rx");
}

void register_combine_params(py::module_& m) {
  using S = ep::SendSide;
  py::class_<S> side(m, "EpSendSide", py::module_local());
  side.def(py::init<>());
  side.def_readwrite("rank", &S::rank);
#define DX_PTR(name) pointer_field(side, #name, &S::name)
  DX_PTR(y); DX_PTR(num_recv); DX_PTR(src_rank); DX_PTR(src_token); DX_PTR(token_rows); DX_PTR(row_weight);
#undef DX_PTR

  using P = ep::CombineParams;
  py::class_<P> cls(m, "EpCombineParams", py::module_local());
  cls.def(py::init<>());
#define DX_FIELD(name) cls.def_readwrite(#name, &P::name)
  DX_FIELD(rank); DX_FIELD(num_ranks); DX_FIELD(topk); DX_FIELD(num_tx); DX_FIELD(tag); DX_FIELD(hidden);
  DX_FIELD(num_tokens); DX_FIELD(timeout_ns); DX_FIELD(y_is_fp32); DX_FIELD(layout);
#undef DX_FIELD
  pointer_field(cls, "is_token_in_rank", &P::is_token_in_rank);
  pointer_field(cls, "local", &P::local);
  cls.def_property(
      "out", [](const P& p) { return reinterpret_cast<uintptr_t>(p.out); },
      [](P& p, uintptr_t address) { p.out = ptr<__nv_bfloat16>(address); });
  common_fields(cls, &P::tx, "set_tx");
}

void register_memory(py::module_& m) {
  m.def("ep_alloc", [](int64_t bytes) {
    void* p = nullptr;
    const std::string err = error_string(ep_alloc(bytes, &p));
    return std::make_tuple(reinterpret_cast<uintptr_t>(p), err);
  });
  m.def("ep_free", [](uintptr_t p) { return error_string(ep_free(ptr<void>(p))); });
  m.def("ep_host_alloc", [](int64_t bytes) {
    void *host = nullptr, *device = nullptr;
    const std::string err = error_string(ep_host_alloc(bytes, &host, &device));
    return std::make_tuple(std::make_tuple(reinterpret_cast<uintptr_t>(host), reinterpret_cast<uintptr_t>(device)), err);
  });
  m.def("ep_host_free", [](uintptr_t p) { return error_string(ep_host_free(ptr<void>(p))); });
  m.def("ep_ipc_handle", [](uintptr_t p) {
    cudaIpcMemHandle_t handle;
    const std::string err = error_string(ep_ipc_handle(ptr<void>(p), &handle));
    return std::make_tuple(py::bytes(reinterpret_cast<const char*>(&handle), sizeof(handle)), err);
  });
  m.def("ep_ipc_open", [](const py::bytes& raw) {
    const std::string bytes = raw;
    cudaIpcMemHandle_t handle;
    if (bytes.size() != sizeof(handle)) return std::make_tuple(uintptr_t{0}, std::string("bad IPC handle size"));
    std::memcpy(&handle, bytes.data(), sizeof(handle));
    void* p = nullptr;
    const std::string err = error_string(ep_ipc_open(handle, &p));
    return std::make_tuple(reinterpret_cast<uintptr_t>(p), err);
  });
  m.def("ep_ipc_close", [](uintptr_t p) { return error_string(ep_ipc_close(ptr<void>(p))); });
}

}  // namespace

void register_ep(py::module_& m) {
  register_layouts(m);
  register_dispatch_params(m);
  register_combine_params(m);
  register_memory(m);
  m.def(
      "ep_dispatch_layout",
      [](uintptr_t topk_idx, int64_t num_tokens, int topk, int num_experts, int num_ranks, uintptr_t per_rank,
         uintptr_t per_expert, uintptr_t in_rank, uintptr_t slot_in_rank, uintptr_t slot_in_expert, uintptr_t error,
         int num_sms, uintptr_t stream) {
        const ep::LayoutParams p{ptr<const int64_t>(topk_idx), num_tokens, topk, num_experts, num_ranks,
                                 ptr<int64_t>(per_rank), ptr<int64_t>(per_expert), ptr<bool>(in_rank),
                                 ptr<int32_t>(slot_in_rank), ptr<int32_t>(slot_in_expert), ptr<int64_t>(error)};
        return error_string(launch_ep_dispatch_layout(p, num_sms, stream_of(stream)));
      },
      release_gil());
  m.def(
      "ep_notify", [](const ep::DispatchParams& p, uintptr_t stream) { return error_string(launch_ep_notify(p, stream_of(stream))); },
      release_gil());
  m.def(
      "ep_dispatch",
      [](const ep::DispatchParams& p, uintptr_t stream) { return error_string(launch_ep_dispatch(p, stream_of(stream))); },
      release_gil());
  m.def(
      "ep_combine",
      [](const ep::CombineParams& p, uintptr_t stream) { return error_string(launch_ep_combine(p, stream_of(stream))); },
      release_gil());
}

}  // namespace dx::bind

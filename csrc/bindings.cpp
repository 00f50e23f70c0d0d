// The extension module: each op family registers its launchers (csrc/bind/*.cpp).
#include <pybind11/pybind11.h>

namespace dx::bind {
void register_quant(pybind11::module_& m);
void register_gemm(pybind11::module_& m);
void register_permute(pybind11::module_& m);
void register_ep(pybind11::module_& m);
}  // namespace dx::bind

// _C on the GPU; _emu when the same launchers are compiled for the host (csrc/emu).
#ifndef DX_MODULE
#define DX_MODULE _C
#endif
#define DX_DEFINE_MODULE(name, m) PYBIND11_MODULE(name, m)

DX_DEFINE_MODULE(DX_MODULE, m) {
  m.doc() = "deepseek_ext kernels (raw-pointer launchers; use deepseek_ext.ops instead)";
  dx::bind::register_quant(m);
  dx::bind::register_gemm(m);
  dx::bind::register_permute(m);
  dx::bind::register_ep(m);
}

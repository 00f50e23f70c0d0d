// What a launcher knows about its failure beyond the cudaError_t (a driver CUresult, the
// parameters it rejected): set where the error arises, appended to the error text by the bindings.
#pragma once
#include <string>

namespace dx {

inline thread_local std::string t_error_detail;  // one per module and thread

inline void set_error_detail(std::string detail) { t_error_detail = std::move(detail); }

// The detail of the last failure on this thread, cleared.
inline std::string take_error_detail() {
  std::string detail;
  detail.swap(t_error_detail);
  return detail;
}

}  // namespace dx

// The CUDA runtime calls our launchers make, for the emulation build (which does not link
// libcudart). Device memory is host memory; memory that may be exported (cudaMalloc) is a POSIX
// shared-memory object, so "IPC handles" open in other processes as they do across GPUs.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "emu/scheduler.h"
#include "emu/tensor_map.h"

namespace {

// What an emulated IPC handle carries (inside the opaque 64-byte cudaIpcMemHandle_t).
struct SharedRegion {
  char name[48];
  uint64_t bytes;
};
static_assert(sizeof(SharedRegion) <= sizeof(cudaIpcMemHandle_t), "region names fit in an IPC handle");

struct Mapping {
  uint64_t bytes;
  std::string name;  // set for regions this process created (unlinked on free)
};

std::mutex g_mutex;
std::map<void*, Mapping>& mappings() {
  static std::map<void*, Mapping> m;
  return m;
}

void* map_region(const char* name, uint64_t bytes, bool create) {
  const int fd = shm_open(name, create ? O_RDWR | O_CREAT | O_EXCL : O_RDWR, 0600);
  if (fd < 0) return nullptr;
  if (create && ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    close(fd);
    return nullptr;
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  return p == MAP_FAILED ? nullptr : p;
}

}  // namespace

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

// The one device attribute the launchers ask for: the emulated H200's SM count (persistent grids).
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (attr != cudaDevAttrMultiProcessorCount || device != 0) return cudaErrorInvalidValue;
  *value = dx::emu::kSmCount;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || static_cast<uint32_t>(value) > dx::emu::kMaxSharedBytes) return cudaErrorInvalidValue;
  dx::emu::set_max_dynamic_shared_memory(func, static_cast<uint32_t>(value));
  return cudaSuccess;
}

// One wave of the emulator holds kSmCount / cluster whole clusters (scheduler.cpp), whatever the kernel.
cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, const void*, const cudaLaunchConfig_t* config) {
  unsigned size = 1;
  for (unsigned i = 0; i < config->numAttrs; ++i)
    if (config->attrs[i].id == cudaLaunchAttributeClusterDimension) size = config->attrs[i].val.clusterDim.x;
  if (size < 1 || size > static_cast<unsigned>(dx::emu::kMaxClusterSize)) return cudaErrorInvalidClusterSize;
  *clusters = dx::emu::kSmCount / static_cast<int>(size);
  return cudaSuccess;
}

cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** func, unsigned int, unsigned long long,
                                             cudaDriverEntryPointQueryResult* status) {
  const bool known = std::strcmp(symbol, "cuTensorMapEncodeTiled") == 0;
  *func = known ? reinterpret_cast<void*>(&dx::emu::encode_tensor_map_tiled) : nullptr;
  if (status != nullptr) *status = known ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch";
    case cudaErrorLaunchTimeout:
    case cudaErrorLaunchFailure: return dx::emu::last_launch_error().c_str();
    default: return "emulated CUDA error";
  }
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  static std::atomic<uint64_t> counter{0};
  const std::lock_guard<std::mutex> guard(g_mutex);
  char name[48];
  std::snprintf(name, sizeof(name), "/dx_emu_%d_%llu", static_cast<int>(getpid()),
                static_cast<unsigned long long>(counter++));
  const uint64_t size = bytes == 0 ? 1 : bytes;
  *ptr = map_region(name, size, true);
  if (*ptr == nullptr) return cudaErrorMemoryAllocation;
  mappings()[*ptr] = Mapping{size, name};
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  const std::lock_guard<std::mutex> guard(g_mutex);
  const auto it = mappings().find(ptr);
  if (it == mappings().end()) return cudaErrorInvalidValue;
  munmap(ptr, it->second.bytes);
  if (!it->second.name.empty()) shm_unlink(it->second.name.c_str());
  mappings().erase(it);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }  // emulated launches are synchronous

// Mapped pinned memory: host memory the emulated device addresses directly (one address space).
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned int) {
  *ptr = std::calloc(bytes == 0 ? 1 : bytes, 1);
  return *ptr == nullptr ? cudaErrorMemoryAllocation : cudaSuccess;
}

cudaError_t cudaHostGetDevicePointer(void** device, void* host, unsigned int) {
  *device = host;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t* handle, void* ptr) {
  const std::lock_guard<std::mutex> guard(g_mutex);
  const auto it = mappings().find(ptr);
  if (it == mappings().end() || it->second.name.empty()) return cudaErrorInvalidValue;
  SharedRegion region{};
  std::snprintf(region.name, sizeof(region.name), "%s", it->second.name.c_str());
  region.bytes = it->second.bytes;
  std::memset(handle, 0, sizeof(*handle));
  std::memcpy(handle, &region, sizeof(region));
  return cudaSuccess;
}

cudaError_t cudaIpcOpenMemHandle(void** ptr, cudaIpcMemHandle_t handle, unsigned int) {
  SharedRegion region;
  std::memcpy(&region, &handle, sizeof(region));
  region.name[sizeof(region.name) - 1] = '\0';
  const std::lock_guard<std::mutex> guard(g_mutex);
  *ptr = map_region(region.name, region.bytes, false);
  if (*ptr == nullptr) return cudaErrorInvalidResourceHandle;
  mappings()[*ptr] = Mapping{region.bytes, ""};
  return cudaSuccess;
}

cudaError_t cudaIpcCloseMemHandle(void* ptr) {
  const std::lock_guard<std::mutex> guard(g_mutex);
  const auto it = mappings().find(ptr);
  if (it == mappings().end() || !it->second.name.empty()) return cudaErrorInvalidValue;
  munmap(ptr, it->second.bytes);
  mappings().erase(it);
  return cudaSuccess;
}

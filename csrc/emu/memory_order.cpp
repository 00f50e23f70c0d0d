// Global-memory flags of the emulation build: host atomics (process-shared memory makes them
// cross-process), polls that yield, and a monitor of the release/acquire discipline (PTX ISA
// "Memory Consistency Model": an acquire synchronizes only with a release, i.e. a .release
// operation or a relaxed write after a fence by the same thread).
#include <time.h>

#include <unordered_map>

#include "emu/scheduler.h"

namespace dx::emu {

namespace {

struct FlagWrite {
  bool released;
  Site site;
};

// Last write of every flag written through a wrapper in this process (other processes' writes
// are not seen: across processes the discipline is not checked).
std::unordered_map<const void*, FlagWrite>& flag_writes() {
  static std::unordered_map<const void*, FlagWrite> writes;
  return writes;
}

void record_write(const void* p, bool release, Site site) {
  Fiber& f = current();
  flag_writes()[p] = FlagWrite{release || f.fenced, site};
  f.fenced = false;
  note_progress();
}

std::string hex(const void* p) { return SharedView::hex(reinterpret_cast<uintptr_t>(p)); }

}  // namespace

uint64_t ld_acquire(const uint64_t* p, bool system, Site site) {
  const auto it = flag_writes().find(p);
  if (it != flag_writes().end() && !it->second.released) {
    fault("ld.acquire of flag 0x" + hex(p) + " reads a write made without release semantics at " +
              std::string(it->second.site.file) + ":" + std::to_string(it->second.site.line) +
              " (no .release and no fence before it): the writer's earlier stores are not ordered before it",
          site);
  }
  Fiber& f = current();
  note_wait(site, system ? Fiber::Wait::kSysFlag : Fiber::Wait::kFlag, reinterpret_cast<uintptr_t>(p));
  f.external_wait = system;
  note_poll();
  yield(false);  // a poll: let the writers run before the value is returned
  f.external_wait = false;
  f.wait = Fiber::Wait::kNone;
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

void red_add_release(uint64_t* p, uint64_t v, bool, Site site) {
  __atomic_fetch_add(p, v, __ATOMIC_RELEASE);
  record_write(p, true, site);
}

void st_release(uint64_t* p, uint64_t v, Site site) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
  record_write(p, true, site);
}

void fence(Site) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  current().fenced = true;
}

uint64_t atomic_add_relaxed(void* p, uint64_t v, int bytes, Site site) {
  uint64_t old;
  if (bytes == 4) {
    old = __atomic_fetch_add(static_cast<uint32_t*>(p), static_cast<uint32_t>(v), __ATOMIC_RELAXED);
  } else {
    old = __atomic_fetch_add(static_cast<uint64_t*>(p), v, __ATOMIC_RELAXED);
  }
  record_write(p, false, site);
  return old;
}

uint64_t atomic_cas_relaxed(uint64_t* p, uint64_t expected, uint64_t desired, Site site) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  record_write(p, false, site);
  return expected;
}

uint64_t globaltimer_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace dx::emu

// A block's shared memory as the async units see it: 32-bit shared-window addresses
// [window_base, window_base + size) map to bytes at `bytes`. Every access is bounds-checked.
#pragma once
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace dx::emu {

struct SharedView {
  uint8_t* bytes = nullptr;
  uint32_t window_base = 0;
  uint32_t size = 0;

  // Pointer to `len` bytes at window address `addr`; throws std::out_of_range naming `what`.
  uint8_t* at(uint32_t addr, uint32_t len, const char* what) const {
    if (addr < window_base || uint64_t{addr} + len > uint64_t{window_base} + size) {
      throw std::out_of_range(std::string(what) + ": shared address 0x" + hex(addr) + " (+" +
                              std::to_string(len) + " bytes) is outside the block's shared memory [0x" +
                              hex(window_base) + ", 0x" + hex(window_base + size) + ")");
    }
    return bytes + (addr - window_base);
  }

  static std::string hex(uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof(buf), "%llx", static_cast<unsigned long long>(v));
    return buf;
  }
};

}  // namespace dx::emu

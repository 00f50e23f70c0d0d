// CHECK(cond) for the host-compiled test programs: prints failures, stops after 20; the program
// reports `failures` at the end.
#pragma once
#include <cstdio>
#include <cstdlib>

static int failures = 0;
#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      if (++failures > 20) std::exit(1);                             \
    }                                                                \
  } while (0)

// Exit status and the last line the Python driver checks.
static int report_checks() {
  if (failures != 0) {
    std::printf("%d checks failed\n", failures);
    return 1;
  }
  std::printf("all passed\n");
  return 0;
}

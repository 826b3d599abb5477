// The emulation's thread barrier (scheduler.cpp): the semantics of C++20's std::barrier
// (arrive, wait, arrive_and_wait, arrive_and_drop, a completion step run by the last
// arrival before anyone leaves) on one futex. With hundreds of threads per block on a
// couple of cores, every barrier phase costs a context switch per thread; libstdc++ 12's
// std::barrier (a tree of atomics, spinning before it sleeps) measured about twice this one's
// time for a 512-thread block, so the emulation has its own. Its synchronisation is carried
// by the atomics (the arrivals' acq_rel decrements, the phase's release increment and the
// waiters' acquire loads), which ThreadSanitizer understands; the futex only sleeps and wakes.
#ifndef DINO_EMULATION_BARRIER_H_
#define DINO_EMULATION_BARRIER_H_

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

namespace dino_emu {

class Barrier {
 public:
  using Completion = void (*)(void*);

  // For `count` threads; `complete(arg)` (optional) runs once per phase, in the last
  // arriving thread, before the others are released. Only while no thread uses it.
  void reset(unsigned count, Completion complete = nullptr, void* arg = nullptr) {
    expected_.store(count, std::memory_order_relaxed);
    left_.store(count, std::memory_order_relaxed);
    complete_ = complete;
    arg_ = arg;
  }

  // Counts this thread in the current phase; returns the phase, for wait().
  unsigned arrive() {
    const unsigned phase = phase_.load(std::memory_order_acquire);
    if (left_.fetch_sub(1, std::memory_order_acq_rel) == 1) finish();
    return phase;
  }

  // Returns once `phase` (from arrive()) is complete.
  void wait(unsigned phase) {
    while (phase_.load(std::memory_order_acquire) == phase) {
      syscall(SYS_futex, &phase_, FUTEX_WAIT_PRIVATE, phase, nullptr, nullptr, 0);
    }
  }

  void arrive_and_wait() { wait(arrive()); }

  // Counts this thread in the current phase and no more in later ones (it has exited).
  void arrive_and_drop() {
    expected_.fetch_sub(1, std::memory_order_acq_rel);
    if (left_.fetch_sub(1, std::memory_order_acq_rel) == 1) finish();
  }

 private:
  void finish() {
    if (complete_ != nullptr) complete_(arg_);
    left_.store(expected_.load(std::memory_order_acquire), std::memory_order_relaxed);
    phase_.fetch_add(1, std::memory_order_release);
    syscall(SYS_futex, &phase_, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
  }

  std::atomic<unsigned> expected_{0};  // threads counted in the next phase
  std::atomic<unsigned> left_{0};      // arrivals the current phase still waits for
  std::atomic<unsigned> phase_{0};
  Completion complete_ = nullptr;
  void* arg_ = nullptr;
};

}  // namespace dino_emu

#endif  // DINO_EMULATION_BARRIER_H_

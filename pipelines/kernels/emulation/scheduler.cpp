// The CPU emulation's scheduler: the OS threads that run a launch, and the device-side
// operations that need them (barriers, warp exchanges, clusters, shared memory).
//
// A launch of G blocks in clusters of C blocks of T threads runs on C*T pool threads (one per
// CUDA thread of a cluster), which execute the G/C clusters one after the other: every thread
// runs the kernel for its place in the current cluster, then waits at a barrier of all C*T
// threads whose completion step prepares the next cluster (fresh barriers, shared memory
// filled with 0xFF bytes). The pool keeps its threads across launches (creating 8,192
// threads per launch would dominate a test's time), and one launch runs at a time in the
// process. Launches are synchronous: the calling thread sleeps until the last cluster is
// done. Per block: a barrier (barrier.h: std::barrier's semantics) for __syncthreads; per
// warp: a barrier of its lanes and a two-slot exchange buffer (a lane's k-th exchange uses
// slot k % 2, so one barrier per exchange suffices: no lane can reach exchange k+2 before
// every lane has left exchange k); per cluster: a barrier of all its threads.
//
// A thread that returns from the kernel arrives at and drops out of its warp's, block's and
// cluster's barriers (an exited warp no longer counts on the GPU either). When the last
// thread of a block returns, the block's shared memory is filled with 0xFF again and, under
// AddressSanitizer, poisoned: a peer block of its cluster that still reads it (a missing
// cluster barrier at the kernel's end) reads NaN, and ASan or TSan report it.
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <semaphore>
#include <vector>

#include "barrier.h"
#include "dino_emulation/device.h"
#include "emulation_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define DINO_EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define DINO_EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define DINO_EMU_POISON(p, n) ((void)(p), (void)(n))
#define DINO_EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace dino_emu {
namespace {

constexpr size_t kStackBytes = 1 << 20;  // per pool thread; kernels keep small frames
constexpr size_t kSmemAlign = 128;

struct Warp {
  Barrier barrier;
  unsigned lanes = 0;              // the lanes that exist (a partial last warp has fewer)
  std::atomic<unsigned> alive{0};  // the lanes that have not returned
  uint64_t slots[2][32];           // what lane l published in its exchange k: slots[k % 2][l]
  unsigned numbers[2][32];         // ... and k, so that a lane that has left is recognised
  void reset(unsigned count) {
    barrier.reset(count);
    lanes = count == 32 ? ~0u : (1u << count) - 1u;
    alive.store(lanes);
    memset(numbers, 0xff, sizeof(numbers));
  }
};

struct Block {
  Barrier barrier;
  std::unique_ptr<Warp[]> warps;
  unsigned char* smem = nullptr;
  std::atomic<unsigned> live{0};
  uint3 index{};
};

struct Job;

// The calling thread's wait for the pool threads of a launch. (Not std::latch: the caller
// frees the launch as soon as the count reaches 0, and a counting-down thread must not
// touch it after that; the mutex hands it over cleanly.)
struct Countdown {
  std::mutex mutex;
  std::condition_variable zero;
  unsigned left = 0;
  void count_down() {
    std::lock_guard<std::mutex> lock(mutex);
    if (--left == 0) zero.notify_one();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    zero.wait(lock, [this] { return left == 0; });
  }
};

struct Job {
  Thunk thunk;
  dim3 grid, block, cluster;
  unsigned threads = 0, blocks_per_cluster = 0, clusters = 0, warps = 0;
  size_t smem_bytes = 0;
  std::unique_ptr<Block[]> blocks;
  Barrier cluster_barrier;
  Barrier done_barrier;        // ends a cluster; its completion step is advance()
  unsigned cluster_index = 0;  // written by advance() only, read after that barrier
  std::atomic<int> error{cudaSuccess};
  std::atomic<bool> reported{false};
  Countdown finished;

  uint3 block_index(unsigned cluster_id, unsigned rank) const {
    const unsigned cx = grid.x / cluster.x, cy = grid.y / cluster.y;
    const uint3 c{cluster_id % cx, (cluster_id / cx) % cy, cluster_id / (cx * cy)};
    const uint3 r{rank % cluster.x, (rank / cluster.x) % cluster.y,
                  rank / (cluster.x * cluster.y)};
    return uint3{c.x * cluster.x + r.x, c.y * cluster.y + r.y, c.z * cluster.z + r.z};
  }

  // Fresh barriers, live counts and shared memory for cluster `cluster_index`.
  void prepare() {
    cluster_barrier.reset(threads * blocks_per_cluster);
    for (unsigned r = 0; r < blocks_per_cluster; ++r) {
      Block& b = blocks[r];
      b.barrier.reset(threads);
      for (unsigned w = 0; w < warps; ++w) {
        const unsigned first = w * 32;
        b.warps[w].reset(threads - first < 32 ? threads - first : 32);
      }
      b.live.store(threads);
      b.index = block_index(cluster_index, r);
      DINO_EMU_UNPOISON(b.smem, smem_bytes);
      memset(b.smem, 0xff, smem_bytes);
    }
  }
};

// The completion step of the barrier that ends a cluster: prepare the next one.
void advance(void* arg) {
  Job* job = static_cast<Job*>(arg);
  if (++job->cluster_index < job->clusters) job->prepare();
}

// What an emulated thread is: set by the scheduler around each kernel call.
struct ThreadState {
  Job* job = nullptr;
  Block* block = nullptr;
  Warp* warp = nullptr;
  unsigned rank = 0, tid = 0, lane = 0, exchanges = 0;
  std::optional<unsigned> cluster_token;  // the phase of a cluster barrier_arrive
};

__thread ThreadState* self = nullptr;

ThreadState& current() {
  if (self == nullptr) {
    fprintf(stderr, "dino emulation: a device function was called outside a kernel\n");
    abort();
  }
  return *self;
}

// Records the launch's first error (it fails with it) and prints the first message.
void report(cudaError_t code, const char* format, ...) {
  Job& job = *current().job;
  int expected = cudaSuccess;
  job.error.compare_exchange_strong(expected, code);
  if (job.reported.exchange(true)) return;
  va_list args;
  va_start(args, format);
  fprintf(stderr, "dino emulation: block (%u,%u,%u) thread %u: ", blockIdx.x, blockIdx.y,
          blockIdx.z, current().tid);
  vfprintf(stderr, format, args);
  fputc('\n', stderr);
  va_end(args);
}

// A warp operation must include every lane that has not returned: a live lane left out
// would never arrive at the warp's barrier (a hang), so that is fatal.
void check_warp_mask(const ThreadState& st, unsigned mask) {
  const unsigned live = st.warp->alive.load();
  if ((live & ~mask) != 0u) {
    fprintf(stderr, "dino emulation: warp operation with mask 0x%08x while lanes 0x%08x are "
            "live: only whole-warp operations are emulated\n", mask, live);
    abort();
  }
}

void leave_kernel(ThreadState& st) {
  Job& job = *st.job;
  if (st.cluster_token) {
    report(cudaErrorLaunchFailure, "returned between cluster barrier_arrive and barrier_wait");
    job.cluster_barrier.wait(*st.cluster_token);
    st.cluster_token.reset();
  }
  st.warp->alive.fetch_and(~(1u << st.lane));
  st.warp->barrier.arrive_and_drop();
  st.block->barrier.arrive_and_drop();
  job.cluster_barrier.arrive_and_drop();
  if (st.block->live.fetch_sub(1) == 1) {  // the block's last thread: its memory is gone
    memset(st.block->smem, 0xff, job.smem_bytes);
    DINO_EMU_POISON(st.block->smem, job.smem_bytes);
  }
}

uint3 unflatten(unsigned i, dim3 d) { return uint3{i % d.x, (i / d.x) % d.y, i / (d.x * d.y)}; }

// Pool thread `index`'s part of a launch: its CUDA thread in every cluster, in turn.
void run_launch(Job& job, unsigned index) {
  ThreadState st;
  st.job = &job;
  st.rank = index / job.threads;
  st.tid = index % job.threads;
  st.lane = st.tid % 32;
  threadIdx = unflatten(st.tid, job.block);
  blockDim = job.block;
  gridDim = job.grid;
  self = &st;
  while (job.cluster_index < job.clusters) {
    st.block = &job.blocks[st.rank];
    st.warp = &st.block->warps[st.tid / 32];
    st.exchanges = 0;
    blockIdx = st.block->index;
    job.thunk.run(job.thunk.args);
    leave_kernel(st);
    job.done_barrier.arrive_and_wait();  // the last to arrive prepares the next cluster
  }
  self = nullptr;
}

struct Worker {
  std::binary_semaphore go{0};
  Job* job = nullptr;
  unsigned index = 0;
};

struct Pool {
  std::mutex launch_mutex;
  std::vector<Worker*> workers;  // never freed: a worker may sleep on its semaphore at exit
};

Pool* pool = nullptr;
std::once_flag pool_once;

void* worker_main(void* arg) {
  auto* worker = static_cast<Worker*>(arg);
  for (;;) {
    worker->go.acquire();
    Job* job = worker->job;
    run_launch(*job, worker->index);
    job->finished.count_down();
  }
  return nullptr;
}

// A forked child has none of the parent's pool threads: it starts a pool of its own.
void forget_pool_in_child() { pool = new Pool(); }

Pool& the_pool() {
  std::call_once(pool_once, [] {
    pool = new Pool();
    pthread_atfork(nullptr, nullptr, forget_pool_in_child);
  });
  return *pool;
}

// Grows the pool to `count` threads; false when the system refuses a thread.
bool ensure_workers(Pool& p, unsigned count) {
  while (p.workers.size() < count) {
    auto* worker = new Worker();
    worker->index = static_cast<unsigned>(p.workers.size());
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, kStackBytes);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    const int rc = pthread_create(&thread, &attr, worker_main, worker);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
      delete worker;
      return false;
    }
    p.workers.push_back(worker);
  }
  return true;
}

}  // namespace

cudaError_t launch(const cudaLaunchConfig_t& config, const void* func, Thunk thunk) {
  LaunchShape shape;
  const cudaError_t checked = check_launch(config, func, &shape);
  if (checked != cudaSuccess) return checked;
  Job job;
  job.thunk = thunk;
  job.grid = config.gridDim;
  job.block = config.blockDim;
  job.cluster = shape.cluster;
  job.threads = job.block.x * job.block.y * job.block.z;
  job.warps = (job.threads + 31) / 32;
  job.blocks_per_cluster = shape.cluster_blocks;
  job.clusters = job.grid.x * job.grid.y * job.grid.z / shape.cluster_blocks;
  job.smem_bytes = config.dynamicSmemBytes;
  job.blocks = std::make_unique<Block[]>(job.blocks_per_cluster);
  for (unsigned r = 0; r < job.blocks_per_cluster; ++r) {
    job.blocks[r].warps = std::make_unique<Warp[]>(job.warps);
    // exactly the launch's size, so that ASan reports an access past it
    job.blocks[r].smem = static_cast<unsigned char*>(
        ::operator new(job.smem_bytes, std::align_val_t(kSmemAlign)));
  }
  const unsigned threads = job.threads * job.blocks_per_cluster;
  job.prepare();
  job.done_barrier.reset(threads, advance, &job);
  job.finished.left = threads;
  Pool& p = the_pool();
  {
    std::lock_guard<std::mutex> lock(p.launch_mutex);  // one launch at a time
    if (!ensure_workers(p, threads)) {
      job.error = cudaErrorLaunchOutOfResources;
    } else {
      for (unsigned i = 0; i < threads; ++i) {
        p.workers[i]->job = &job;
        p.workers[i]->go.release();
      }
      job.finished.wait();
    }
  }
  for (unsigned r = 0; r < job.blocks_per_cluster; ++r) {
    DINO_EMU_UNPOISON(job.blocks[r].smem, job.smem_bytes);
    ::operator delete(job.blocks[r].smem, std::align_val_t(kSmemAlign));
  }
  const auto error = static_cast<cudaError_t>(job.error.load());
  set_last_error(error);
  return error;
}

unsigned char* dynamic_shared() { return current().block->smem; }

void note_static_shared() {
  const ThreadState& st = current();
  if (st.job->blocks_per_cluster > 1) {
    report(cudaErrorLaunchFailure, "a kernel with static __shared__ memory launched in "
           "clusters of %u blocks: the emulation keeps one copy of it, shared by a cluster's "
           "blocks (which run together)", st.job->blocks_per_cluster);
  }
}

void syncthreads() { current().block->barrier.arrive_and_wait(); }

void syncwarp(unsigned mask) {
  ThreadState& st = current();
  check_warp_mask(st, mask);
  st.warp->barrier.arrive_and_wait();
}

unsigned lane_id() { return current().lane; }

unsigned active_mask() { return current().warp->alive.load(); }

// Publishes this lane's bits as its next warp exchange and waits for the warp's other live
// lanes to publish theirs; returns the exchange's number.
unsigned publish(ThreadState& st, unsigned mask, uint64_t bits) {
  check_warp_mask(st, mask);
  const unsigned k = st.exchanges++;
  st.warp->slots[k & 1u][st.lane] = bits;
  st.warp->numbers[k & 1u][st.lane] = k;
  st.warp->barrier.arrive_and_wait();
  return k;
}

// Whether lane `src` of the mask took part in exchange k (it had not returned).
bool took_part(const Warp& w, unsigned k, unsigned mask, int src) {
  return src >= 0 && src < 32 && (mask >> src & 1u) && w.numbers[k & 1u][src] == k;
}

uint64_t exchange(unsigned mask, uint64_t bits, int src) {
  ThreadState& st = current();
  const unsigned k = publish(st, mask, bits);
  if (src < 0 || static_cast<unsigned>(src) == st.lane) return bits;
  if (!took_part(*st.warp, k, mask, src)) {
    report(cudaErrorLaunchFailure, "warp shuffle from lane %d, which is not a live lane of "
           "the mask 0x%08x", src, mask);
    return bits;
  }
  return st.warp->slots[k & 1u][src];
}

void gather(unsigned mask, uint64_t bits, uint64_t* all) {
  ThreadState& st = current();
  const unsigned k = publish(st, mask, bits);
  for (int lane = 0; lane < 32; ++lane) {
    all[lane] = took_part(*st.warp, k, mask, lane) ? st.warp->slots[k & 1u][lane] : 0;
  }
}

void cluster_sync() { current().job->cluster_barrier.arrive_and_wait(); }

void cluster_arrive() {
  ThreadState& st = current();
  if (st.cluster_token) {
    report(cudaErrorLaunchFailure, "cluster barrier_arrive twice without barrier_wait");
    return;
  }
  st.cluster_token = st.job->cluster_barrier.arrive();
}

void cluster_wait() {
  ThreadState& st = current();
  if (!st.cluster_token) {
    report(cudaErrorLaunchFailure, "cluster barrier_wait without barrier_arrive");
    return;
  }
  st.job->cluster_barrier.wait(*st.cluster_token);
  st.cluster_token.reset();
}

unsigned cluster_rank() { return current().rank; }

unsigned cluster_blocks() { return current().job->blocks_per_cluster; }

dim3 cluster_dims() { return current().job->cluster; }

unsigned char* cluster_peer(const void* address, unsigned rank) {
  ThreadState& st = current();
  const auto* p = static_cast<const unsigned char*>(address);
  const ptrdiff_t offset = p - st.block->smem;
  if (offset < 0 || static_cast<size_t>(offset) > st.job->smem_bytes) {
    report(cudaErrorLaunchFailure, "map_shared_rank of an address outside the block's dynamic "
           "shared memory (static shared memory cannot be mapped in the emulation)");
    return const_cast<unsigned char*>(p);
  }
  if (rank >= st.job->blocks_per_cluster) {
    report(cudaErrorLaunchFailure, "map_shared_rank to rank %u of a cluster of %u blocks", rank,
           st.job->blocks_per_cluster);
    return const_cast<unsigned char*>(p);
  }
  return st.job->blocks[rank].smem + offset;
}

}  // namespace dino_emu

// The pool's size (tests: threads are reused across launches).
extern "C" __attribute__((visibility("default"))) int dino_emulation_pool_threads(void) {
  std::lock_guard<std::mutex> lock(dino_emu::the_pool().launch_mutex);
  return static_cast<int>(dino_emu::the_pool().workers.size());
}

// CPU work sharing for the fused PSD loss: run_tasks(n, f) runs f(0) .. f(n - 1),
// each exactly once, on the calling thread plus at::get_num_threads() - 1 helpers
// from ATen's inter-op pool (at::launch), which take the tasks from a shared counter.
//
// Why not at::parallel_for: it is an inline template whose `#pragma omp parallel`
// needs -fopenmp in the extension's own compile; without it every loop ran on one
// thread. Why dynamic: a statically split loop waits for its slowest thread, and on
// a 2-core machine shared with other processes that thread often gets half a core.
//
// BLAS calls inside a task are single-threaded (MKL would otherwise start a nested
// team per call); each task must write outputs no other task touches, so results do
// not depend on which thread runs which task.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>

// MKL's per-thread thread count (weak: absent when torch's BLAS is not MKL). torch
// links MKL statically and exports its Fortran-style entry, which takes a pointer.
extern "C" int mkl_set_num_threads_local_(const int*) __attribute__((weak));

namespace psd {

// Makes BLAS single-threaded on this thread while alive (restores the old setting).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    const int one = 1;
    if (mkl_set_num_threads_local_) prev_ = mkl_set_num_threads_local_(&one);
  }
  ~SingleThreadedBlas() {
    if (mkl_set_num_threads_local_) mkl_set_num_threads_local_(&prev_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int prev_ = 0;  // 0: MKL's global setting
};

namespace detail {
// Shared with the helpers, which may start after run_tasks returned: they then see
// `closed` and leave without touching the (gone) task function.
struct TaskState {
  std::mutex mu;
  std::condition_variable done;
  std::atomic<int64_t> next{0};
  int64_t n = 0;
  bool closed = false;
  int active = 0;
  std::exception_ptr error;
};

inline void drain(TaskState& st, const std::function<void(int64_t)>& f) {
  SingleThreadedBlas blas;
  try {
    for (int64_t k = st.next.fetch_add(1); k < st.n; k = st.next.fetch_add(1)) f(k);
  } catch (...) {
    std::lock_guard<std::mutex> lock(st.mu);
    if (!st.error) st.error = std::current_exception();
    st.next.store(st.n);  // the others stop after their current task
  }
}
}  // namespace detail

template <typename F>
void run_tasks(int64_t n, const F& f) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1) {
    for (int64_t k = 0; k < n; ++k) f(k);
    return;
  }
  auto st = std::make_shared<detail::TaskState>();
  st->n = n;
  const std::function<void(int64_t)> fn = [&f](int64_t k) { f(k); };
  const std::function<void(int64_t)>* fp = &fn;
  for (int64_t h = 1; h < threads; ++h) {
    at::launch([st, fp] {
      {
        std::lock_guard<std::mutex> lock(st->mu);
        if (st->closed) return;
        ++st->active;
      }
      detail::drain(*st, *fp);
      {
        std::lock_guard<std::mutex> lock(st->mu);
        --st->active;
      }
      st->done.notify_all();
    });
  }
  detail::drain(*st, fn);
  std::unique_lock<std::mutex> lock(st->mu);
  st->closed = true;
  st->done.wait(lock, [&] { return st->active == 0; });
  if (st->error) std::rethrow_exception(st->error);
}

}  // namespace psd

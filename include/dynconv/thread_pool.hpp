// dynconv: a small fork-join thread pool for the inside of one forward pass.
//
// ThreadPool(T) starts T - 1 worker threads; parallel_for(tasks, f) runs f(task, worker) for
// every task in [0, tasks) on the caller (worker 0) and the workers (1 .. T-1), and returns
// when all have finished. Tasks are claimed one by one from a shared counter, so uneven tasks
// balance themselves. Between calls the workers spin briefly (a forward pass calls
// parallel_for once per layer, microseconds apart), then sleep on a condition variable.
//
// The first exception thrown by a task is rethrown by parallel_for once every task has ended
// (the remaining tasks still run). A parallel_for called from inside a task runs inline.
//
// Thread safety: one thread at a time may call parallel_for on a pool (a Session owns its
// pool); different pools are independent.
#pragma once

#include <dynconv/error.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <type_traits>
#include <mutex>
#include <thread>
#include <vector>

namespace dynconv {

class ThreadPool {
 public:
  /// threads >= 1 (the caller counts as one); OptionsError otherwise or above 1024.
  explicit ThreadPool(int threads) : threads_(threads) {
    if (threads < 1 || threads > 1024)
      fail<OptionsError>("ThreadPool: threads=", threads, " must be in [1, 1024]");
    workers_.reserve(static_cast<std::size_t>(threads - 1));
    for (int w = 1; w < threads; ++w) workers_.emplace_back([this, w] { work(w); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  int threads() const { return threads_; }

  /// Runs f(task, worker) for task in [0, tasks); worker in [0, threads()). f is called
  /// through a pointer (no std::function, so no allocation).
  template <typename F>
  void parallel_for(std::int64_t tasks, F&& f) {
    if (tasks <= 0) return;
    if (threads_ == 1 || tasks == 1 || in_task()) {
      const int worker = current_worker();
      for (std::int64_t t = 0; t < tasks; ++t) f(t, worker);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    run_job(tasks, static_cast<const void*>(std::addressof(f)), [](const void* fn, std::int64_t t, int w) {
      (*static_cast<Fn*>(const_cast<void*>(fn)))(t, w);
    });
  }

 private:
  using Call = void (*)(const void*, std::int64_t, int);

  // A job is open while its caller may still hand out tasks. A worker enters a job by counting
  // itself active and then seeing it open; the caller closes the job once its own share is
  // done and waits only for the workers that entered (never for one that has not woken yet).
  void run_job(std::int64_t tasks, const void* fn, Call call) {
    fn_ = fn;
    call_ = call;
    tasks_ = tasks;
    error_ = nullptr;
    next_.store(0, std::memory_order_relaxed);
    open_.store(true);  // seq_cst: publishes the job to workers that see it open
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    run_tasks(0);
    open_.store(false);
    while (active_.load() != 0) std::this_thread::yield();
    if (error_) std::rethrow_exception(error_);
  }

  static int& worker_slot() {
    static thread_local int slot = -1;  // -1: not inside a task of any pool
    return slot;
  }
  static bool in_task() { return worker_slot() >= 0; }
  static int current_worker() { return worker_slot() < 0 ? 0 : worker_slot(); }

  void run_tasks(int worker) {
    worker_slot() = worker;
    for (;;) {
      const std::int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
      if (t >= tasks_) break;
      try {
        call_(fn_, t, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
    worker_slot() = -1;
  }

  void work(int worker) {
    std::uint64_t seen = 0;
    for (;;) {
      // Spin a little: the next layer's parallel_for usually comes within microseconds.
      std::uint64_t g = generation_.load();
      for (int spin = 0; g == seen && spin < 20000; ++spin) {
        std::this_thread::yield();
        g = generation_.load();
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        g = generation_.load();
      }
      seen = g;
      if (stop_.load()) return;
      active_.fetch_add(1);
      if (open_.load()) run_tasks(worker);
      active_.fetch_sub(1);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<std::int64_t> next_{0};
  std::atomic<bool> open_{false};
  std::atomic<int> active_{0};
  std::atomic<bool> stop_{false};
  const void* fn_ = nullptr;
  Call call_ = nullptr;
  std::int64_t tasks_ = 0;
  std::exception_ptr error_;
};

}  // namespace dynconv

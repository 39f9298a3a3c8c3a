// Thread safety: the promises of README "Thread safety" and of include/dynconv/thread_pool.hpp,
// checked by running them (and, in CI, under ThreadSanitizer: tools/sanitize.sh tsan).
//
//   SharedModel.*   one const Model shared by 4 std::threads, each running forward on its own
//                   input for several iterations: every output is bitwise the single-threaded
//                   output for that input, computed beforehand (forward is const; concurrency
//                   must not change a single bit)
//   SessionPerThread.*  4 threads, each owning dynconv::Sessions (1 and 2 threads) over the same
//                   model: bitwise the logits of the same session kind run alone (a 1-thread
//                   session: bitwise model.forward; a 2-thread one: model.forward to 1e-5)
// The outputs computed alone beforehand are themselves checked against an independent
// reference: Model::forward of a double-precision copy of the model (create<double>, loaded
// from the float model's saved weights), to a float tolerance, so that a bug shared by every
// float path (one thread or several) cannot pass as agreement.
//   ThreadPoolTest.*    every task runs exactly once on a valid worker, the first exception
//                   propagates once all tasks ended, nested parallel_for runs inline on the
//                   calling worker, many back-to-back calls, construction limits
//
// Models run at 64x64 and batch 2 with 10 classes so that the TSan stage stays short.
// DYNCONV_SOURCE_DIR (for the shipped weights) is a compile definition.
#include <dynconv/models/zoo.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/session.hpp>
#include <dynconv/thread_pool.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using dynconv::Index;
using dynconv::NhwcTensor;
using dynconv::OptionsError;
using dynconv::Session;
using dynconv::Tensor2;
using dynconv::Tensor4;
using dynconv::ThreadPool;
using dynconv::models::Model;
using dynconv::models::ModelOptions;

constexpr int kThreads = 4;
constexpr int kIterations = 3;
constexpr Index kBatch = 2, kSize = 64;

/// A deterministic input [kBatch, 3, kSize, kSize] in [-2, 2), different for every seed.
Tensor4<float> input(unsigned seed) {
  Tensor4<float> x(kBatch, 3, kSize, kSize);
  std::mt19937 gen(1000 + seed);
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = dist(gen);
  return x;
}

/// The zoo models these tests share, built once and never modified after. dy_mobilenet_v3_small
/// carries the trained Fashion-MNIST weights shipped in examples/fashion_mnist_weights/: with its
/// fresh initial weights its activations die out and every input gives the same logits, which
/// would hide a thread that computed another thread's input. dy_resnet10 keeps its fresh weights
/// (its logits do depend on the input; checked below).
const Model<float>& model(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Model<float>>> cache;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto& m = cache[name];
  if (!m) {
    m = dynconv::models::create<float>(name, ModelOptions().num_classes(10));
    if (name == "dy_mobilenet_v3_small")
      m->load(dynconv::SafeTensors::load(std::string(DYNCONV_SOURCE_DIR) +
                                         "/examples/fashion_mnist_weights/" + name +
                                         ".safetensors"));
  }
  return *m;
}

/// The double-precision twin of model(name): the same weights (the float model's saved file
/// loaded into create<double>), built once.
const Model<double>& reference_model(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Model<double>>> cache;
  static std::mutex mutex;
  const Model<float>& m = model(name);
  std::lock_guard<std::mutex> lock(mutex);
  auto& r = cache[name];
  if (!r) {
    dynconv::SafeTensorsWriter w;
    m.save(w);
    r = dynconv::models::create<double>(name, ModelOptions().num_classes(10));
    r->load(dynconv::SafeTensors::parse(w.to_bytes(), name + " (float weights)"));
  }
  return *r;
}

/// The reference logits for x: the double model's forward.
Tensor2<double> reference(const std::string& name, const Tensor4<float>& x) {
  const Tensor4<double> xd = x.cast<double>();
  return reference_model(name).forward(xd);
}

/// max |got - want| / max |want| <= kReferenceTolerance: float logits against the double
/// reference (float rounding through these networks: ~5e-7 measured; tests/reference.hpp's
/// float tolerance).
constexpr double kReferenceTolerance = 2e-5;
void expect_near_reference(const Tensor2<float>& got, const Tensor2<double>& want, const std::string& what) {
  ASSERT_EQ(got.dimension(0), want.dimension(0)) << what;
  ASSERT_EQ(got.dimension(1), want.dimension(1)) << what;
  double err = 0, scale = 0;
  for (Index i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got.data()[i])) << what << ": logit " << i;
    err = std::max(err, std::abs(double(got.data()[i]) - want.data()[i]));
    scale = std::max(scale, std::abs(want.data()[i]));
  }
  ASSERT_GT(scale, 0.0) << what;
  EXPECT_LE(err / scale, kReferenceTolerance) << what << " vs the double-precision model";
}

/// Bitwise equality of two logit tensors: EXPECT_EQ on every float (no tolerance), so that a
/// data race that changes a single bit shows, and NaN == NaN would not pass by accident.
void expect_bitwise_equal(const Tensor2<float>& got, const Tensor2<float>& want,
                          const std::string& what) {
  ASSERT_EQ(got.dimension(0), want.dimension(0)) << what;
  ASSERT_EQ(got.dimension(1), want.dimension(1)) << what;
  for (Index i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::isfinite(want.data()[i])) << what << ": reference logit " << i;
    EXPECT_EQ(got.data()[i], want.data()[i]) << what << ": logit " << i;
  }
  EXPECT_EQ(std::memcmp(got.data(), want.data(), sizeof(float) * std::size_t(want.size())), 0)
      << what;
}

/// Runs body(t) on kThreads std::threads; a gtest failure inside a thread is recorded as usual
/// (gtest's assertions are thread-safe on POSIX), an exception is rethrown here.
template <typename F>
void run_threads(F body) {
  std::vector<std::exception_ptr> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      try {
        body(t);
      } catch (...) {
        errors[std::size_t(t)] = std::current_exception();
      }
    });
  for (std::thread& th : threads) th.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

// ---- One model, several threads ---------------------------------------------------------------

class SharedModel : public ::testing::TestWithParam<const char*> {};

TEST_P(SharedModel, ConcurrentForwardIsBitwiseTheSingleThreadedOutput) {
  const Model<float>& m = model(GetParam());
  std::vector<Tensor4<float>> inputs;
  std::vector<Tensor2<float>> expected;
  for (int t = 0; t < kThreads; ++t) {
    inputs.push_back(input(unsigned(t)));
    expected.push_back(m.forward(inputs.back()));
    expect_near_reference(expected.back(), reference(GetParam(), inputs.back()),
                          std::string(GetParam()) + " input " + std::to_string(t));
  }
  // The inputs differ, and so do their logits: a thread that got another's output would show.
  for (int t = 1; t < kThreads; ++t)
    ASSERT_NE(std::memcmp(expected[0].data(), expected[std::size_t(t)].data(),
                          sizeof(float) * std::size_t(expected[0].size())),
              0);
  std::atomic<int> ready{0};
  run_threads([&](int t) {
    // Start together, so that the forward passes really overlap.
    ready.fetch_add(1);
    while (ready.load() < kThreads) std::this_thread::yield();
    for (int it = 0; it < kIterations; ++it) {
      const Tensor2<float> y = m.forward(inputs[std::size_t(t)]);
      expect_bitwise_equal(y, expected[std::size_t(t)],
                           std::string(GetParam()) + " thread " + std::to_string(t) +
                               " iteration " + std::to_string(it));
    }
  });
}

TEST_P(SharedModel, ConcurrentForwardNhwcOnTheSameInput) {
  // All threads read one input tensor too (shared const data on both sides).
  const Model<float>& m = model(GetParam());
  const NhwcTensor<float> x = dynconv::nchw_to_nhwc(input(7));
  const Tensor2<float> want = m.forward(x);
  expect_near_reference(want, reference(GetParam(), input(7)), std::string(GetParam()) + " NHWC input");
  run_threads([&](int t) {
    for (int it = 0; it < kIterations; ++it)
      expect_bitwise_equal(m.forward(x), want,
                           std::string(GetParam()) + " thread " + std::to_string(t));
  });
}

INSTANTIATE_TEST_SUITE_P(Zoo, SharedModel,
                         ::testing::Values("dy_mobilenet_v3_small", "dy_resnet10"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           return std::string(i.param);
                         });

// ---- One Session per thread --------------------------------------------------------------------
// Session (include/dynconv/session.hpp) promises: a one-thread session gives exactly
// Model::forward's numbers; a session reproduces its results bit for bit; sessions with other
// thread counts agree with Model::forward up to float rounding (splitting a layer over threads
// changes the GEMM's blocking). So: 1-thread sessions are compared bitwise with model.forward,
// 2-thread sessions bitwise with a 2-thread session run alone beforehand (and closely with
// model.forward), while 4 threads run their own sessions over the one model at the same time.

/// max |got - want| / max |want| <= 1e-5.
void expect_close(const Tensor2<float>& got, const Tensor2<float>& want, const std::string& what) {
  ASSERT_EQ(got.dimensions(), want.dimensions()) << what;
  double err = 0, scale = 0;
  for (Index i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(double(got.data()[i]) - double(want.data()[i])));
    scale = std::max(scale, std::abs(double(want.data()[i])));
  }
  EXPECT_LE(err, 1e-5 * scale) << what;
}

class SessionPerThread : public ::testing::TestWithParam<const char*> {};

TEST_P(SessionPerThread, EachThreadsSessionGivesTheBitsOfASessionRunAlone) {
  const Model<float>& m = model(GetParam());
  std::vector<Tensor4<float>> inputs;
  std::vector<Tensor2<float>> forward, alone1, alone2;
  Session<float> one(m, 1), two(m, 2);
  for (int t = 0; t < kThreads; ++t) {
    inputs.push_back(input(unsigned(10 + t)));
    forward.push_back(m.forward(inputs.back()));
    alone1.push_back(one.forward(inputs.back()));
    alone2.push_back(two.forward(inputs.back()));
    const std::string what = std::string(GetParam()) + " input " + std::to_string(t);
    expect_bitwise_equal(alone1.back(), forward.back(), what + ": 1-thread session vs forward");
    expect_close(alone2.back(), forward.back(), what + ": 2-thread session vs forward");
    const Tensor2<double> ref = reference(GetParam(), inputs.back());
    expect_near_reference(alone1.back(), ref, what + ": 1-thread session");
    expect_near_reference(alone2.back(), ref, what + ": 2-thread session");
  }
  run_threads([&](int t) {
    for (int threads : {1, 2}) {
      Session<float> session(m, threads);
      EXPECT_EQ(session.threads(), threads);
      EXPECT_EQ(&session.graph(), &m);
      for (int it = 0; it < kIterations; ++it) {
        // Alternate between this thread's input and the next one's: the session's workspaces
        // must not carry anything from one call to the next.
        const std::size_t which = std::size_t(it % 2 == 0 ? t : (t + 1) % kThreads);
        expect_bitwise_equal(session.forward(inputs[which]),
                             (threads == 1 ? alone1 : alone2)[which],
                             std::string(GetParam()) + ", " + std::to_string(threads) +
                                 "-thread session of thread " + std::to_string(t) +
                                 ", iteration " + std::to_string(it));
      }
    }
  });
}

TEST_P(SessionPerThread, ForwardNhwcAndABatchOfOne) {
  const Model<float>& m = model(GetParam());
  const Tensor4<float> x = input(20);
  const std::array<Index, 4> at{1, 0, 0, 0}, len{1, 3, kSize, kSize};
  const Tensor4<float> one = x.slice(at, len);
  const NhwcTensor<float> x_nhwc = dynconv::nchw_to_nhwc(x);
  Session<float> alone(m, 2);
  const Tensor2<float> want_batch = alone.forward(x), want_one = alone.forward(one);
  expect_bitwise_equal(alone.forward(x_nhwc), want_batch, "NHWC forward alone");
  expect_close(want_batch, m.forward(x), "batch 2 vs Model::forward");
  expect_close(want_one, m.forward(one), "batch 1 vs Model::forward");
  expect_near_reference(want_batch, reference(GetParam(), x), "batch 2");
  expect_near_reference(want_one, reference(GetParam(), one), "batch 1");
  run_threads([&](int t) {
    Session<float> session(m, 2);
    expect_bitwise_equal(session.forward(x_nhwc), want_batch,
                         "NHWC forward, thread " + std::to_string(t));
    expect_bitwise_equal(session.forward(one), want_one, "batch 1, thread " + std::to_string(t));
    expect_bitwise_equal(session.forward(x), want_batch, "batch 2, thread " + std::to_string(t));
  });
}

INSTANTIATE_TEST_SUITE_P(Zoo, SessionPerThread,
                         ::testing::Values("dy_mobilenet_v3_small", "dy_resnet10"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           return std::string(i.param);
                         });

// ---- ThreadPool ----------------------------------------------------------------------------------

TEST(ThreadPoolTest, EveryTaskRunsExactlyOnceOnAValidWorker) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    for (std::int64_t tasks : {1, 2, 3, 7, 64, 1000}) {
      std::vector<std::atomic<int>> runs(static_cast<std::size_t>(tasks));
      std::atomic<bool> bad_worker{false};
      pool.parallel_for(tasks, [&](std::int64_t task, int worker) {
        runs[std::size_t(task)].fetch_add(1);
        if (worker < 0 || worker >= threads) bad_worker = true;
      });
      for (std::int64_t i = 0; i < tasks; ++i)
        ASSERT_EQ(runs[std::size_t(i)].load(), 1)
            << "task " << i << " of " << tasks << ", " << threads << " threads";
      EXPECT_FALSE(bad_worker) << threads << " threads";
    }
  }
}

TEST(ThreadPoolTest, WorkersReallyShareTheTasksAndOwnTheirWorkerIndex) {
  // Per-worker scratch indexed by the worker argument is the pattern a forward pass uses: no
  // two threads may ever run with the same worker index at the same time.
  ThreadPool pool(4);
  std::vector<std::atomic<int>> busy(4);
  std::atomic<bool> shared_index{false};
  std::mutex mutex;
  std::set<std::thread::id> ids;
  pool.parallel_for(400, [&](std::int64_t, int worker) {
    if (busy[std::size_t(worker)].fetch_add(1) != 0) shared_index = true;
    {
      std::lock_guard<std::mutex> lock(mutex);
      ids.insert(std::this_thread::get_id());
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    busy[std::size_t(worker)].fetch_sub(1);
  });
  EXPECT_FALSE(shared_index);
  EXPECT_GE(ids.size(), 2u) << "400 sleeping tasks all ran on one thread";
}

TEST(ThreadPoolTest, NoTasksCallsNothing) {
  ThreadPool pool(3);
  int calls = 0;
  pool.parallel_for(0, [&](std::int64_t, int) { ++calls; });
  pool.parallel_for(-5, [&](std::int64_t, int) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ThreadPoolTest, TheFirstExceptionPropagatesAfterEveryTaskRan) {
  ThreadPool pool(3);
  for (int round = 0; round < 20; ++round) {
    std::vector<std::atomic<int>> runs(100);
    try {
      pool.parallel_for(100, [&](std::int64_t task, int) {
        runs[std::size_t(task)].fetch_add(1);
        if (task == 17 || task == 60)
          throw std::runtime_error("task " + std::to_string(task) + " failed");
      });
      ADD_FAILURE() << "parallel_for did not rethrow";
    } catch (const std::runtime_error& e) {
      EXPECT_THAT(e.what(), ::testing::AnyOf(::testing::StrEq("task 17 failed"),
                                             ::testing::StrEq("task 60 failed")));
    }
    for (std::size_t i = 0; i < runs.size(); ++i)
      ASSERT_EQ(runs[i].load(), 1) << "task " << i << " (the remaining tasks still run)";
    // The pool stays usable and the error does not stick to the next call.
    std::atomic<int> sum{0};
    EXPECT_NO_THROW(pool.parallel_for(10, [&](std::int64_t t, int) { sum += int(t); }));
    EXPECT_EQ(sum.load(), 45);
  }
}

TEST(ThreadPoolTest, ADynconvErrorKeepsItsType) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(8,
                                 [&](std::int64_t t, int) {
                                   if (t == 5) throw dynconv::ShapeError("layer: bad shape");
                                 }),
               dynconv::ShapeError);
}

TEST(ThreadPoolTest, NestedParallelForRunsInlineOnTheCallingWorker) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> runs(16 * 8);
  std::atomic<bool> moved{false};
  pool.parallel_for(16, [&](std::int64_t outer, int worker) {
    const std::thread::id me = std::this_thread::get_id();
    pool.parallel_for(8, [&](std::int64_t inner, int inner_worker) {
      if (std::this_thread::get_id() != me || inner_worker != worker) moved = true;
      runs[std::size_t(outer * 8 + inner)].fetch_add(1);
    });
  });
  EXPECT_FALSE(moved) << "a nested parallel_for left its thread or changed the worker index";
  for (std::size_t i = 0; i < runs.size(); ++i) ASSERT_EQ(runs[i].load(), 1) << i;
}

TEST(ThreadPoolTest, ManyBackToBackCalls) {
  // A forward pass calls parallel_for once per layer, microseconds apart: the workers' spin /
  // sleep hand-over must neither lose nor repeat a job.
  ThreadPool pool(3);
  std::int64_t total = 0;
  for (int call = 0; call < 3000; ++call) {
    const std::int64_t tasks = 1 + call % 5;
    std::atomic<std::int64_t> sum{0};
    pool.parallel_for(tasks, [&](std::int64_t t, int) { sum += t + 1; });
    ASSERT_EQ(sum.load(), tasks * (tasks + 1) / 2) << "call " << call;
    total += sum.load();
    if (call % 1000 == 999)  // let the workers fall asleep on the condition variable
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
  }
  EXPECT_EQ(total, 600 * (1 + 3 + 6 + 10 + 15));
}

TEST(ThreadPoolTest, PoolsOnSeveralThreadsAreIndependent) {
  run_threads([](int t) {
    ThreadPool pool(2);
    for (int call = 0; call < 200; ++call) {
      std::atomic<int> n{0};
      pool.parallel_for(4 + t, [&](std::int64_t, int) { n.fetch_add(1); });
      ASSERT_EQ(n.load(), 4 + t);
    }
  });
}

TEST(ThreadPoolTest, CreateAndDestroyRepeatedly) {
  for (int i = 0; i < 50; ++i) {
    ThreadPool pool(1 + i % 4);
    if (i % 2) pool.parallel_for(3, [](std::int64_t, int) {});
  }
}

TEST(ThreadPoolTest, ThreadCountMustBeInRange) {
  using ::testing::HasSubstr;
  EXPECT_THAT([] { ThreadPool p(0); },
              ::testing::ThrowsMessage<OptionsError>(
                  HasSubstr("ThreadPool: threads=0 must be in [1, 1024]")));
  EXPECT_THAT([] { ThreadPool p(-3); },
              ::testing::ThrowsMessage<OptionsError>(HasSubstr("threads=-3")));
  EXPECT_THAT([] { ThreadPool p(1025); },
              ::testing::ThrowsMessage<OptionsError>(HasSubstr("threads=1025")));
  EXPECT_THAT([] { Session<float> s(model("dy_mobilenet_v3_small"), 0); },
              ::testing::Throws<OptionsError>());
}

}  // namespace

// libFuzzer target: arbitrary bytes into the safetensors reader (SafeTensors::parse, in memory).
//
// A rejected input must fail with a dynconv::Error (in practice a FormatError); anything else
// that comes out (another exception, a crash, a sanitizer report) is a finding. An accepted
// input must then behave as the reader promises, which is checked with every accessor:
//   - the tensors tile the data section, and raw_data() is the input's own bytes there;
//   - get_flat<float/double/int64_t> and get<T, rank> give product(shape) elements for every
//     dtype; only a floating value read as int64 may fail (FormatError), and a wrong rank, an
//     unknown name fail with ShapeError / FormatError;
//   - stored F32/F64/I64 read as the same type are the raw bytes;
//   - SafeTensorsWriter accepts every accepted tensor and metadata entry as they are, and the
//     file it writes parses back to the same tensors and metadata.
// A broken promise prints what broke and aborts (a crash for libFuzzer and for replay_main).
#include <dynconv/safetensors.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

using dynconv::DType;
using dynconv::Index;
using dynconv::SafeTensors;

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_safetensors: FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

void expect(bool ok, const std::string& what) {
  if (!ok) finding(what);
}

/// Calls f, which must throw exactly E (a subclass of dynconv::Error).
template <typename E, typename F>
void expect_throws(F&& f, const std::string& what) {
  try {
    f();
  } catch (const E&) {
    return;
  } catch (const std::exception& e) {
    finding(what + ": wrong exception: " + e.what());
  }
  finding(what + ": no exception");
}

std::size_t product(const std::vector<Index>& shape) {
  std::size_t n = 1;
  for (Index d : shape) n *= static_cast<std::size_t>(d);  // the reader checked it fits
  return n;
}

template <typename T>
bool same_values(const T* a, const T* b, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    }
    if (!(a[i] == b[i])) return false;
  }
  return true;
}

/// get<T, Rank> must give the shape and the same values as get_flat<T>.
template <typename T, int Rank>
void check_get_rank(const SafeTensors& st, const std::string& name, const std::vector<T>& flat) {
  const auto t = st.get<T, Rank>(name);
  const auto& shape = st.entry(name).shape;
  for (int i = 0; i < Rank; ++i)
    expect(t.dimension(i) == shape[static_cast<std::size_t>(i)],
           "get<T, rank> dimension of '" + name + "'");
  expect(static_cast<std::size_t>(t.size()) == flat.size(), "get<T, rank> size of '" + name + "'");
  expect(same_values(t.data(), flat.data(), flat.size()), "get<T, rank> values of '" + name + "'");
}

template <typename T>
void check_get(const SafeTensors& st, const std::string& name, const std::vector<T>& flat) {
  const std::size_t rank = st.entry(name).shape.size();
  switch (rank) {
    case 0: check_get_rank<T, 0>(st, name, flat); break;
    case 1: check_get_rank<T, 1>(st, name, flat); break;
    case 2: check_get_rank<T, 2>(st, name, flat); break;
    case 3: check_get_rank<T, 3>(st, name, flat); break;
    case 4: check_get_rank<T, 4>(st, name, flat); break;
    case 5: check_get_rank<T, 5>(st, name, flat); break;
    case 6: check_get_rank<T, 6>(st, name, flat); break;
    default: break;  // higher ranks: get_flat only
  }
  // A rank other than the tensor's is a ShapeError.
  if (rank != 2)
    expect_throws<dynconv::ShapeError>([&] { (void)st.get<T, 2>(name); },
                                       "get<T, 2> of a rank-" + std::to_string(rank) + " tensor");
  else
    expect_throws<dynconv::ShapeError>([&] { (void)st.get<T, 3>(name); },
                                       "get<T, 3> of a rank-2 tensor");
}

/// get_flat<T> (and get<T, rank>) of one tensor; true if it could be read as T.
template <typename T>
bool check_read(const SafeTensors& st, const std::string& name) {
  const dynconv::TensorEntry& e = st.entry(name);
  std::vector<T> flat;
  try {
    flat = st.get_flat<T>(name);
  } catch (const dynconv::FormatError& err) {
    // Only a floating value read as int64 may fail: not an integer, or out of range.
    expect(std::is_same_v<T, std::int64_t> && e.dtype != DType::I64,
           "get_flat of '" + name + "' failed: " + err.what());
    return false;
  }
  expect(flat.size() == product(e.shape), "get_flat size of '" + name + "'");
  if (e.dtype == dynconv::dtype_of<T>() && !flat.empty())
    expect(std::memcmp(flat.data(), st.raw_data(name), e.end - e.begin) == 0,
           "get_flat of '" + name + "' in its own dtype differs from the raw bytes");
  check_get<T>(st, name, flat);
  return true;
}

void check_accepted(const SafeTensors& st, const std::uint8_t* data, std::size_t size) {
  std::uint64_t header = 0;
  std::memcpy(&header, data, 8);
  const std::size_t data_start = static_cast<std::size_t>(8 + header);
  expect(data_start <= size, "accepted a header past the end of the input");
  const std::size_t data_size = size - data_start;

  const std::vector<std::string> names = st.names();
  std::size_t covered = 0;
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    expect(i == 0 || names[i - 1] < name, "names() not sorted and unique");
    expect(st.contains(name), "contains('" + name + "') is false");
    expect(name != "__metadata__", "a tensor named __metadata__");
    expect(dynconv::detail::is_valid_utf8(name), "tensor name not valid UTF-8");
    const dynconv::TensorEntry& e = st.entry(name);
    expect(e.begin <= e.end && e.end <= data_size, "entry '" + name + "' outside the data section");
    expect(product(e.shape) * dynconv::dtype_size(e.dtype) == e.end - e.begin,
           "entry '" + name + "' byte size differs from its shape");
    covered += e.end - e.begin;
    if (e.end > e.begin)
      expect(std::memcmp(st.raw_data(name), data + data_start + e.begin, e.end - e.begin) == 0,
             "raw_data('" + name + "') is not the input's bytes");
    check_read<float>(st, name);
    check_read<double>(st, name);
    check_read<std::int64_t>(st, name);
  }
  expect(covered == data_size, "tensors do not cover the data section exactly");

  // Sorted names: anything after the last one is unknown.
  const std::string unknown = names.empty() ? std::string("w") : names.back() + "!";
  expect_throws<dynconv::FormatError>([&] { (void)st.entry(unknown); },
                                      "entry() of an unknown name");
  expect_throws<dynconv::FormatError>([&] { (void)st.get_flat<float>(unknown); },
                                      "get_flat() of an unknown name");

  for (const auto& [key, value] : st.metadata())
    expect(dynconv::detail::is_valid_utf8(key) && dynconv::detail::is_valid_utf8(value),
           "metadata not valid UTF-8");

  // The writer takes everything the reader accepted, and its file reads back the same.
  std::vector<std::uint8_t> rewritten;
  try {
    dynconv::SafeTensorsWriter w;
    for (const std::string& name : names) {
      const dynconv::TensorEntry& e = st.entry(name);
      w.add_raw(name, e.dtype, e.shape, st.raw_data(name), e.end - e.begin);
    }
    for (const auto& [key, value] : st.metadata()) w.set_metadata(key, value);
    rewritten = w.to_bytes();
  } catch (const dynconv::Error& err) {
    finding(std::string("SafeTensorsWriter rejects what the reader accepted: ") + err.what());
  }
  try {
    const SafeTensors again = SafeTensors::parse(rewritten, "rewritten");
    expect(again.names() == names, "rewritten file has other tensor names");
    expect(again.metadata() == st.metadata(), "rewritten file has other metadata");
    for (const std::string& name : names) {
      const dynconv::TensorEntry &a = st.entry(name), &b = again.entry(name);
      expect(a.dtype == b.dtype && a.shape == b.shape && a.end - a.begin == b.end - b.begin,
             "rewritten entry '" + name + "' differs");
      if (a.end > a.begin)
        expect(std::memcmp(st.raw_data(name), again.raw_data(name), a.end - a.begin) == 0,
               "rewritten bytes of '" + name + "' differ");
    }
  } catch (const dynconv::Error& err) {
    finding(std::string("the reader rejects the writer's file: ") + err.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const SafeTensors st =
        SafeTensors::parse(std::vector<std::uint8_t>(data, data + size), "fuzz.safetensors");
    try {
      check_accepted(st, data, size);
    } catch (const std::exception& e) {  // check_accepted expects the errors it provokes
      finding(std::string("unexpected exception from an accepted file: ") + e.what());
    }
  } catch (const dynconv::Error&) {
    // Rejected cleanly.
  } catch (const std::exception& e) {
    finding(std::string("exception not derived from dynconv::Error: ") + e.what());
  } catch (...) {
    finding("exception not derived from std::exception");
  }
  return 0;
}

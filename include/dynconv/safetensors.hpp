// dynconv: reading and writing the safetensors format.
//
// The format
//   [8 bytes]  N, the header length, an unsigned 64-bit little-endian integer
//   [N bytes]  the header: UTF-8 JSON, one object
//                { "__metadata__": {"key": "value", ...},                       (optional)
//                  "name": {"dtype": "F32", "shape": [4, 3], "data_offsets": [begin, end]},
//                  ... }
//   [rest]     the data section: each tensor's elements, row-major, little-endian, at
//              [begin, end) counted from the start of the data section
//
// The reader (SafeTensors::parse / load) accepts a file only if it obeys every rule below, the
// rules of the reference implementation; any violation is a FormatError whose message starts
// with the file name and quotes the offending values:
//   - the file has at least 8 bytes; N <= 100,000,000; 8 + N <= file size
//   - the header is valid UTF-8 and valid JSON, is an object, and starts with '{' (trailing
//     whitespace such as the writer's space padding is allowed, leading whitespace is not)
//   - no array or object is nested at depth 3 or deeper (the header object is depth 0): a valid
//     header needs at most header object > tensor entry > shape/data_offsets array > number.
//     This is checked while parsing, so a crafted header nested 100,000 levels deep is rejected
//     at its fourth '[' or '{', in bounded time and memory, without any recursion
//   - no object anywhere in the header has a duplicate key
//   - "__metadata__", if present, is an object of string values
//   - every other entry is an object with exactly the fields dtype, shape and data_offsets;
//     dtype is one of F16, BF16, F32, F64, I64; shape is an array of non-negative integers
//     (an empty array is a scalar); data_offsets is two non-negative integers begin <= end
//   - product(shape) x dtype size, computed with overflow checks, equals end - begin
//   - the product of the non-zero dimensions is at most 2^63 - 1, the largest Index: Eigen
//     computes a tensor's size and strides as products of its dimensions in signed Index, so
//     get<T, Rank>() of a zero-size [2^32, 2^31, 0] would throw std::bad_alloc (Eigen's
//     overflow check) and strides of a [0, 2^32, 2^32] would overflow. No real file has such
//     a shape; the reference implementation accepts the second one
//   - the tensors, sorted by offset, tile the data section exactly: the first begins at 0,
//     each begins where the previous one ended, and the last ends at the end of the file;
//     with no tensors the data section is empty
// Once these hold, every tensor lies inside the buffer, so no later access can go out of bounds.
//
// The writer (SafeTensorsWriter) lays tensors out in name order, with "__metadata__" first
// when there is any, and pads the header with spaces so that N is a multiple of 8. It never
// writes a file the reader rejects: a header that would exceed the 100,000,000-byte limit (huge
// metadata or very many / very long tensor names) makes to_bytes() and save() throw
// OptionsError, like the writer's other complaints about what it was given.
//
// Element types: stored F16/BF16 go through Eigen::half / Eigen::bfloat16 (round to nearest
// even when writing). Reading converts any stored dtype to float, double or std::int64_t;
// a floating value read as int64 must be an integer in range, or it is a FormatError. Writing
// double as F16/BF16 rounds through float.
//
// Byte order: data is copied with std::memcpy, so the host must be little-endian (checked
// below); big-endian hosts are not supported.
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/tensor.hpp>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dynconv/safetensors.hpp supports little-endian hosts only"
#endif

namespace dynconv {

/// The element types of a safetensors file that dynconv reads and writes: IEEE half (F16),
/// bfloat16 (BF16), float (F32), double (F64) and 64-bit signed integers (I64).
enum class DType { F16, BF16, F32, F64, I64 };

/// The name a safetensors header uses: "F16", "BF16", "F32", "F64" or "I64".
inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
  }
  return "?";
}

/// Bytes per element: 2, 2, 4, 8, 8.
inline std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::F16:
    case DType::BF16: return 2;
    case DType::F32: return 4;
    case DType::F64:
    case DType::I64: return 8;
  }
  return 0;
}

namespace detail {
template <typename T>
inline constexpr bool always_false = false;
}  // namespace detail

/// The dtype that stores T without conversion.
template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return DType::F32;
  else if constexpr (std::is_same_v<T, double>)
    return DType::F64;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return DType::I64;
  else if constexpr (std::is_same_v<T, Eigen::half>)
    return DType::F16;
  else if constexpr (std::is_same_v<T, Eigen::bfloat16>)
    return DType::BF16;
  else
    static_assert(detail::always_false<T>,
                  "dtype_of: T must be float, double, int64_t, Eigen::half or Eigen::bfloat16");
}

/// One tensor of a safetensors file; begin and end are offsets into the data section.
struct TensorEntry {
  DType dtype;
  std::vector<Index> shape;
  std::size_t begin;
  std::size_t end;
};

namespace detail {

static_assert(std::numeric_limits<float>::is_iec559 && std::numeric_limits<double>::is_iec559,
              "safetensors.hpp assumes IEEE 754 float and double");

inline constexpr std::uint64_t kMaxHeaderSize = 100'000'000;

/// The deepest nlohmann parse-callback depth at which a valid header has an array or object:
/// the header object is at depth 0, a tensor entry (or __metadata__) at 1, shape and
/// data_offsets at 2, and their numbers at 3.
inline constexpr int kMaxContainerDepth = 2;

template <typename T>
struct type_tag {
  using type = T;
};

/// Calls f(type_tag<S>{}) with S the C++ type stored by d.
template <typename F>
decltype(auto) visit_dtype(DType d, F&& f) {
  switch (d) {
    case DType::F16: return f(type_tag<Eigen::half>{});
    case DType::BF16: return f(type_tag<Eigen::bfloat16>{});
    case DType::F32: return f(type_tag<float>{});
    case DType::F64: return f(type_tag<double>{});
    case DType::I64: break;
  }
  return f(type_tag<std::int64_t>{});
}

template <typename T>
inline constexpr bool is_16bit_float =
    std::is_same_v<T, Eigen::half> || std::is_same_v<T, Eigen::bfloat16>;

template <typename S>
S load_le(const std::uint8_t* p) {
  if constexpr (is_16bit_float<S>) {
    std::uint16_t bits;
    std::memcpy(&bits, p, sizeof bits);
    return Eigen::numext::bit_cast<S>(bits);
  } else {
    S s;
    std::memcpy(&s, p, sizeof s);
    return s;
  }
}

template <typename S>
void store_le(S s, std::uint8_t* p) {
  if constexpr (is_16bit_float<S>) {
    const auto bits = Eigen::numext::bit_cast<std::uint16_t>(s);
    std::memcpy(p, &bits, sizeof bits);
  } else {
    std::memcpy(p, &s, sizeof s);
  }
}

template <typename T>
double to_double(T v) {
  if constexpr (is_16bit_float<T>)
    return static_cast<double>(static_cast<float>(v));
  else
    return static_cast<double>(v);
}

/// Converts one value; false if a floating value is not an integer in int64 range.
template <typename To, typename From>
bool convert_value(From v, To& out) {
  if constexpr (std::is_same_v<To, From>) {
    out = v;
  } else if constexpr (std::is_same_v<From, std::int64_t>) {
    out = static_cast<To>(v);
  } else {
    const double d = to_double(v);  // exact for every floating From
    if constexpr (std::is_same_v<To, std::int64_t>) {
      if (!(d >= -0x1p63 && d < 0x1p63) || d != std::trunc(d)) return false;
      out = static_cast<std::int64_t>(d);
    } else if constexpr (std::is_same_v<To, double>) {
      out = d;
    } else if constexpr (std::is_same_v<To, float>) {
      out = static_cast<float>(d);
    } else {
      out = To(static_cast<float>(d));  // Eigen::half / Eigen::bfloat16, round to nearest even
    }
  }
  return true;
}

/// Offset of the first byte that does not start a valid UTF-8 sequence (no overlong forms,
/// no surrogates, nothing above U+10FFFF), or npos if all of s is valid.
inline std::size_t invalid_utf8_at(const std::uint8_t* s, std::size_t n) {
  std::size_t i = 0;
  while (i < n) {
    const std::uint8_t c = s[i];
    std::size_t len;
    std::uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1Fu;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0Fu;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07u;
    } else {
      return i;
    }
    if (n - i < len) return i;
    for (std::size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3Fu);
    }
    static constexpr std::uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string::npos;
}

inline bool is_valid_utf8(const std::string& s) {
  return invalid_utf8_at(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()) ==
         std::string::npos;
}

/// Appends j as dump() writes it, but stops adding elements once out holds more than limit
/// characters, and writes containers nested deeper than depth_left as [...] / {...}: bounded
/// recursion and bounded work, whatever j holds.
inline void json_brief_to(const nlohmann::json& j, std::string& out, std::size_t limit,
                          int depth_left) {
  if (!j.is_array() && !j.is_object()) {
    out += j.dump();
    return;
  }
  const bool array = j.is_array();
  if (depth_left <= 0 && !j.empty()) {
    out += array ? "[...]" : "{...}";
    return;
  }
  out += array ? '[' : '{';
  bool first = true;
  for (auto it = j.begin(); it != j.end() && out.size() <= limit; ++it) {
    if (!first) out += ',';
    first = false;
    if (!array) out += nlohmann::json(it.key()).dump() + ':';
    json_brief_to(*it, out, limit, depth_left - 1);
  }
  out += array ? ']' : '}';
}

/// A JSON value as error messages quote it, shortened if long. Unlike dump(), it never
/// recurses more than a few levels, so it is safe on any value (the reader's depth rule
/// already keeps deeply nested values from reaching it).
inline std::string json_brief(const nlohmann::json& j) {
  std::string s;
  json_brief_to(j, s, 60, 8);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

/// a * b, or false on 64-bit overflow.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

/// product(shape) x dtype_size(dtype), the element count first: false if either overflows 64
/// bits. The reader and the writer both count bytes this way, so they agree on every shape.
template <typename Dims>
bool byte_size(DType dtype, const Dims& shape, std::uint64_t& out) {
  std::uint64_t elements = 1;
  for (const auto d : shape)
    if (!checked_mul(elements, static_cast<std::uint64_t>(d), elements)) return false;
  return checked_mul(elements, dtype_size(dtype), out);
}

/// Whether the non-zero dimensions (all >= 0) multiply to at most the largest Index, so that
/// no product of dimensions (a size, a stride) overflows Index.
template <typename Dims>
bool shape_fits_index(const Dims& shape) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<Index>::max());
  std::uint64_t product = 1;
  for (const auto d : shape)
    if (d != 0 && (!checked_mul(product, static_cast<std::uint64_t>(d), product) || product > kMax))
      return false;
  return true;
}

}  // namespace detail

/// A validated safetensors file held in memory.
///
/// load() and parse() check every rule of the format (listed in safetensors.hpp) before any
/// tensor is read; once they succeed, every tensor lies inside the buffer. Each rule and its
/// message: @ref errors_safetensors.
class SafeTensors {
 public:
  /// Reads and validates a file.
  /// @throws IoError if the file cannot be opened or read;
  /// @throws FormatError if it breaks a rule of the format (@ref errors_safetensors).
  static SafeTensors load(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail<IoError>(path, ": cannot open for reading: ", std::strerror(errno));
    std::vector<std::uint8_t> bytes;
    std::uint8_t chunk[1 << 16];
    std::size_t got;
    while ((got = std::fread(chunk, 1, sizeof chunk, f)) > 0)
      bytes.insert(bytes.end(), chunk, chunk + got);
    const bool failed = std::ferror(f);
    const int err = errno;
    std::fclose(f);
    if (failed) fail<IoError>(path, ": cannot read: ", std::strerror(err));
    return parse(std::move(bytes), path);
  }

  /// Validates bytes; source names them in error messages.
  /// @throws FormatError if they break a rule of the format (@ref errors_safetensors).
  static SafeTensors parse(std::vector<std::uint8_t> bytes, std::string source = "<memory>") {
    SafeTensors st;
    st.source_ = std::move(source);
    st.bytes_ = std::move(bytes);
    st.validate();
    return st;
  }

  /// The "__metadata__" entries (string to string); empty if the file has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The path (or the source name given to parse) that error messages start with.
  const std::string& source() const { return source_; }

  /// Tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : entries_) out.push_back(kv.first);
    return out;
  }

  /// Whether the file holds a tensor `name`.
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }

  /// The dtype, shape and offsets of tensor `name`; FormatError if there is none.
  const TensorEntry& entry(const std::string& name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) fail<FormatError>(source_, ": no tensor named '", name, "'");
    return it->second;
  }

  /// Copies a tensor out, converting its stored dtype to T (float, double or std::int64_t).
  /// @throws FormatError if there is no tensor `name`, or if a floating value read as
  /// std::int64_t is not an integer in range;
  /// @throws ShapeError if the tensor's rank is not Rank.
  template <typename T, int Rank>
  Tensor<T, Rank> get(const std::string& name) const {
    const TensorEntry& e = entry(name);
    if (e.shape.size() != static_cast<std::size_t>(Rank))
      fail<ShapeError>(source_, ": tensor '", name, "' has shape ", shape_str(e.shape),
                               " (rank ", e.shape.size(), ") but rank ", Rank, " was requested");
    Eigen::array<Index, Rank> dims;
    for (int i = 0; i < Rank; ++i)
      dims[static_cast<std::size_t>(i)] = e.shape[static_cast<std::size_t>(i)];
    Tensor<T, Rank> t;
    t.resize(dims);
    copy_out(name, e, t.data());
    return t;
  }

  /// Copies a tensor of any rank out, flattened in row-major order.
  template <typename T>
  std::vector<T> get_flat(const std::string& name) const {
    const TensorEntry& e = entry(name);
    std::vector<T> v((e.end - e.begin) / dtype_size(e.dtype));
    copy_out(name, e, v.data());
    return v;
  }

  /// The entry's bytes, little-endian, (entry.end - entry.begin) of them.
  const std::uint8_t* raw_data(const std::string& name) const {
    return bytes_.data() + data_start_ + entry(name).begin;
  }

 private:
  SafeTensors() = default;

  template <typename T>
  void copy_out(const std::string& name, const TensorEntry& e, T* dst) const {
    static_assert(
        std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int64_t>,
        "SafeTensors::get: T must be float, double or std::int64_t");
    const std::uint8_t* src = bytes_.data() + data_start_ + e.begin;
    const std::size_t n = (e.end - e.begin) / dtype_size(e.dtype);
    detail::visit_dtype(e.dtype, [&](auto tag) {
      using S = typename decltype(tag)::type;
      if constexpr (std::is_same_v<S, T>) {
        if (n) std::memcpy(dst, src, n * sizeof(T));
      } else {
        for (std::size_t i = 0; i < n; ++i) {
          const S s = detail::load_le<S>(src + i * sizeof(S));
          if (!detail::convert_value(s, dst[i]))
            fail<FormatError>(source_, ": tensor '", name, "' (", dtype_name(e.dtype),
                                      ") element ", i, " = ", detail::to_double(s),
                                      " is not an integer in the int64 range");
        }
      }
    });
  }

  template <typename... Args>
  [[noreturn]] void bad(Args&&... args) const {
    fail<FormatError>(source_, ": ", std::forward<Args>(args)...);
  }

  void validate() {
    const std::size_t size = bytes_.size();
    if (size < 8) bad("file has ", size, " bytes, fewer than the 8-byte header length");
    std::uint64_t n;
    std::memcpy(&n, bytes_.data(), 8);
    if (n > detail::kMaxHeaderSize)
      bad("header length ", n, " exceeds the limit of ", detail::kMaxHeaderSize, " bytes");
    if (8 + n > size) bad("header length ", n, " needs ", 8 + n, " bytes but the file has ", size);
    data_start_ = static_cast<std::size_t>(8 + n);
    const std::uint8_t* header = bytes_.data() + 8;
    const std::size_t header_size = data_start_ - 8;

    const std::size_t bad_utf8 = detail::invalid_utf8_at(header, header_size);
    if (bad_utf8 != std::string::npos)
      bad("header is not valid UTF-8 (byte 0x", std::hex, +header[bad_utf8], std::dec,
          " at header offset ", bad_utf8, ")");

    // nlohmann's lexer takes a NUL byte for the end of its input; JSON has no place for a raw one.
    if (const void* nul = std::memchr(header, 0, header_size))
      bad("header is not valid JSON: NUL byte at header offset ",
          static_cast<const std::uint8_t*>(nul) - header);

    // nlohmann keeps the last of duplicate keys silently; the callback sees every key, and
    // keeps one set of keys per open object. It also enforces the depth rule: nlohmann passes
    // an array_start / object_start the number of containers around it, so the header object
    // starts at 0 and the numbers of shape / data_offsets come at 3. Rejecting the first
    // container that starts deeper than kMaxContainerDepth stops the parse early, so neither
    // the tree built so far nor anything that later walks it (json_brief) is ever deep.
    std::vector<std::set<std::string>> open_objects;
    const auto on_event = [&](int depth, nlohmann::json::parse_event_t event,
                              nlohmann::json& parsed) {
      using E = nlohmann::json::parse_event_t;
      if ((event == E::object_start || event == E::array_start) &&
          depth > detail::kMaxContainerDepth)
        bad("header is nested too deeply: ", event == E::object_start ? "an object" : "an array",
            " starts at depth ", depth, " (the header object is depth 0), but a valid header has ",
            "arrays and objects only at depths 0-", detail::kMaxContainerDepth,
            " (header object > tensor entry > shape or data_offsets array > number)");
      if (event == E::object_start) {
        open_objects.emplace_back();
      } else if (event == E::object_end) {
        open_objects.pop_back();
      } else if (event == E::key && !open_objects.empty()) {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!open_objects.back().insert(key).second) bad("header has duplicate key '", key, "'");
      }
      return true;
    };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(header, header + header_size, on_event);
    } catch (const nlohmann::json::exception& e) {
      bad("header is not valid JSON: ", e.what());
    }
    if (!j.is_object()) bad("header must be a JSON object, got ", j.type_name());
    if (header[0] != '{')
      bad("header must start with '{' (got byte 0x", std::hex, +header[0], std::dec, ")");

    struct Span {
      std::uint64_t begin, end;
      std::string name;
    };
    std::vector<Span> spans;
    for (const auto& item : j.items()) {
      const std::string& name = item.key();
      const nlohmann::json& v = item.value();
      if (name == "__metadata__") {
        if (!v.is_object())
          bad("__metadata__ must be an object of strings, got ", detail::json_brief(v));
        for (const auto& kv : v.items()) {
          if (!kv.value().is_string())
            bad("__metadata__ value of '", kv.key(), "' must be a string, got ",
                detail::json_brief(kv.value()));
          metadata_[kv.key()] = kv.value().get<std::string>();
        }
        continue;
      }
      spans.push_back({0, 0, name});
      entries_.emplace(name, parse_entry(name, v, spans.back().begin, spans.back().end));
    }

    // The tensors must tile the data section. Zero-size ones sort before others at the same offset.
    const std::uint64_t data_size = size - data_start_;
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
      return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
    });
    std::uint64_t at = 0;
    const Span* prev = nullptr;
    for (const Span& s : spans) {
      if (s.begin != at) {
        const std::string before =
            prev ? concat("the previous tensor '", prev->name, "' ends at ", at)
                 : std::string("the first tensor must begin at 0");
        bad("tensor '", s.name, "' begins at offset ", s.begin, " but ", before,
            s.begin > at ? " (a gap)" : " (an overlap)");
      }
      at = s.end;
      prev = &s;
    }
    if (at != data_size) {
      if (!prev) bad("header lists no tensors but the data section has ", data_size, " bytes");
      bad("the last tensor '", prev->name, "' ends at offset ", at, " but the data section has ",
          data_size, " bytes (file size ", size, " - 8 - header length ", n, ")");
    }
    for (Span& s : spans) {  // offsets now known to be <= data_size, so they fit in size_t
      TensorEntry& e = entries_.at(s.name);
      e.begin = static_cast<std::size_t>(s.begin);
      e.end = static_cast<std::size_t>(s.end);
    }
  }

  /// Checks one tensor entry's fields. Its offsets go to begin and end, to be checked against
  /// the data section before they are stored in the entry.
  TensorEntry parse_entry(const std::string& name, const nlohmann::json& v, std::uint64_t& begin,
                          std::uint64_t& end) const {
    if (!v.is_object()) bad("tensor '", name, "' must be an object, got ", detail::json_brief(v));
    static const char* const kFields[] = {"dtype", "shape", "data_offsets"};
    for (const auto& kv : v.items())
      if (std::find_if(std::begin(kFields), std::end(kFields),
                       [&](const char* f) { return kv.key() == f; }) == std::end(kFields))
        bad("tensor '", name, "' has unexpected field '", kv.key(), "'");
    for (const char* f : kFields)
      if (!v.contains(f)) bad("tensor '", name, "' lacks the field '", f, "'");

    TensorEntry e{DType::F32, {}, 0, 0};
    const nlohmann::json& dtype = v["dtype"];
    bool known = false;
    if (dtype.is_string())
      for (DType d : {DType::F16, DType::BF16, DType::F32, DType::F64, DType::I64})
        if (dtype.get_ref<const std::string&>() == dtype_name(d)) e.dtype = d, known = true;
    if (!known)
      bad("tensor '", name, "' has unsupported dtype ", detail::json_brief(dtype),
          " (supported: F16, BF16, F32, F64, I64)");

    const nlohmann::json& shape = v["shape"];
    const auto is_count = [](const nlohmann::json& x) { return x.is_number_unsigned(); };
    if (!shape.is_array() || !std::all_of(shape.begin(), shape.end(), is_count))
      bad("tensor '", name, "' has shape ", detail::json_brief(shape),
          ", not an array of non-negative integers");
    for (const auto& d : shape) {
      const auto dim = d.get<std::uint64_t>();
      if (dim > static_cast<std::uint64_t>(std::numeric_limits<Index>::max()))
        bad("tensor '", name, "' has dimension ", dim, " in shape ", detail::json_brief(shape),
            ", too large for an index");
      e.shape.push_back(static_cast<Index>(dim));
    }
    std::uint64_t bytes = 0;
    if (!detail::byte_size(e.dtype, e.shape, bytes))
      bad("tensor '", name, "' has shape ", shape_str(e.shape), " x ", dtype_name(e.dtype),
          " whose byte size overflows 64 bits");
    if (!detail::shape_fits_index(e.shape))
      bad("tensor '", name, "' has shape ", shape_str(e.shape),
          " whose non-zero dimensions multiply to more than the largest index ",
          std::numeric_limits<Index>::max());

    const nlohmann::json& offsets = v["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !is_count(offsets[0]) ||
        !is_count(offsets[1]) || offsets[0].get<std::uint64_t>() > offsets[1].get<std::uint64_t>())
      bad("tensor '", name, "' has data_offsets ", detail::json_brief(offsets),
          ", not two non-negative integers [begin, end] with begin <= end");
    begin = offsets[0].get<std::uint64_t>();
    end = offsets[1].get<std::uint64_t>();
    if (end - begin != bytes)
      bad("tensor '", name, "' has shape ", shape_str(e.shape), " x ", dtype_name(e.dtype), " = ",
          bytes, " bytes but data_offsets [", begin, ", ", end, "] span ", end - begin, " bytes");
    return e;
  }

  std::string source_;
  std::vector<std::uint8_t> bytes_;
  std::size_t data_start_ = 0;  // 8 + header length
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// Builds a safetensors file in memory; to_bytes() or save() writes it. It refuses, with
/// OptionsError, anything that would make a file the reader rejects (@ref errors_writer).
class SafeTensorsWriter {
 public:
  /// Stores t under name, converted to stored: F32, F64, F16 or BF16 for floating T, I64 for
  /// std::int64_t.
  /// @throws OptionsError for another dtype, a reserved, invalid or duplicate name.
  template <typename T, int Rank>
  void add(const std::string& name, const Tensor<T, Rank>& t, DType stored = dtype_of<T>()) {
    add(name, std::vector<Index>(t.dimensions().begin(), t.dimensions().end()), t.data(), stored);
  }
  /// Stores product(shape) values from `data` (row-major) under name, as add() above.
  template <typename T>
  void add(const std::string& name, std::vector<Index> shape, const T* data, DType stored = dtype_of<T>()) {
    constexpr bool integral = std::is_same_v<T, std::int64_t>;
    if (integral != (stored == DType::I64))
      fail<OptionsError>(
          "SafeTensorsWriter: tensor '", name, "' of ", dtype_name(dtype_of<T>()),
          " cannot be stored as ", dtype_name(stored),
          integral ? " (integers are stored as I64)" : " (use F32, F64, F16 or BF16)");
    Index size = 1;
    for (Index d : shape) size *= d;
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size) * dtype_size(stored));
    detail::visit_dtype(stored, [&](auto tag) {
      using S = typename decltype(tag)::type;
      for (Index i = 0; i < size; ++i) {
        S s{};
        detail::convert_value(data[i], s);  // cannot fail: no floating -> int64 here
        detail::store_le(s, bytes.data() + static_cast<std::size_t>(i) * sizeof(S));
      }
    });
    insert(name, stored, std::move(shape), std::move(bytes));
  }

  /// Stores nbytes little-endian bytes; nbytes must equal product(shape) x dtype_size(dtype).
  void add_raw(const std::string& name, DType dtype, std::vector<Index> shape, const void* data,
               std::size_t nbytes) {
    // The byte count as the reader computes it (detail::byte_size), so that the writer takes
    // every shape the reader accepts.
    std::uint64_t expected = 0;
    if (std::any_of(shape.begin(), shape.end(), [](Index d) { return d < 0; }) ||
        !detail::byte_size(dtype, shape, expected))
      fail<OptionsError>("SafeTensorsWriter: tensor '", name, "' has invalid shape ",
                                 shape_str(shape));
    if (expected != nbytes)
      fail<OptionsError>("SafeTensorsWriter: tensor '", name, "' has shape ",
                                 shape_str(shape), " x ", dtype_name(dtype), " = ", expected,
                                 " bytes but ", nbytes, " bytes were given");
    if (nbytes && !data)
      fail<OptionsError>("SafeTensorsWriter: tensor '", name, "' has null data");
    const auto* p = static_cast<const std::uint8_t*>(data);
    insert(name, dtype, std::move(shape), std::vector<std::uint8_t>(p, p + nbytes));
  }

  /// Sets one "__metadata__" entry; OptionsError unless key and value are valid UTF-8.
  void set_metadata(const std::string& key, const std::string& value) {
    if (!detail::is_valid_utf8(key) || !detail::is_valid_utf8(value))
      fail<OptionsError>("SafeTensorsWriter: metadata key '", key,
                                 "' or its value is not valid UTF-8");
    metadata_[key] = value;
  }

  /// The file: entries in name order, header padded with spaces to a multiple of 8.
  /// OptionsError if the header would exceed the reader's limit of 100,000,000 bytes.
  std::vector<std::uint8_t> to_bytes() const {
    // Every name, key and value is dumped at least as long as it is: a cheap lower bound that
    // rejects a hopeless header before building and dumping it.
    std::uint64_t at_least = 2;
    for (const auto& [key, value] : metadata_) at_least += key.size() + value.size();
    for (const auto& kv : entries_) at_least += kv.first.size();
    if (at_least > detail::kMaxHeaderSize) header_too_large(at_least, "at least ");

    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto& [name, e] : entries_) {
      header[name] = {{"dtype", dtype_name(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
      offset += e.bytes.size();
    }
    std::string text = header.dump();
    text.resize((text.size() + 7) / 8 * 8, ' ');
    check_header_size(text.size());

    std::vector<std::uint8_t> out(8 + text.size());
    const std::uint64_t n = text.size();
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, text.data(), text.size());
    out.reserve(out.size() + offset);
    for (const auto& kv : entries_)
      out.insert(out.end(), kv.second.bytes.begin(), kv.second.bytes.end());
    return out;
  }

  /// OptionsError unless a (padded) header of n bytes is within the reader's limit; to_bytes()
  /// calls it, so a writer never produces a file that SafeTensors::parse rejects for its size.
  static void check_header_size(std::uint64_t n) {
    if (n > detail::kMaxHeaderSize) header_too_large(n, "");
  }

  /// Writes to_bytes() to path; IoError on failure, OptionsError as for to_bytes().
  void save(const std::string& path) const {
    const std::vector<std::uint8_t> bytes = to_bytes();
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) fail<IoError>(path, ": cannot open for writing: ", std::strerror(errno));
    const bool written = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    const int err = errno;
    if (std::fclose(f) != 0 || !written)
      fail<IoError>(path, ": cannot write: ", std::strerror(written ? errno : err));
  }

 private:
  struct Entry {
    DType dtype;
    std::vector<Index> shape;
    std::vector<std::uint8_t> bytes;
  };

  [[noreturn]] static void header_too_large(std::uint64_t n, const char* at_least) {
    fail<OptionsError>("SafeTensorsWriter: the header would be ", at_least, n,
                               " bytes, over the limit of ", detail::kMaxHeaderSize,
                               " bytes that readers accept (too much metadata, or too many or "
                               "too long tensor names)");
  }

  void insert(const std::string& name, DType dtype, std::vector<Index> shape,
              std::vector<std::uint8_t> bytes) {
    if (name == "__metadata__")
      fail<OptionsError>("SafeTensorsWriter: the name '__metadata__' is reserved");
    if (!detail::shape_fits_index(shape))  // the reader's rule
      fail<OptionsError>("SafeTensorsWriter: tensor '", name, "' has shape ",
                                 shape_str(shape),
                                 " whose non-zero dimensions multiply to more than the largest "
                                 "index ",
                                 std::numeric_limits<Index>::max());
    if (!detail::is_valid_utf8(name))
      fail<OptionsError>("SafeTensorsWriter: tensor name '", name, "' is not valid UTF-8");
    if (!entries_.emplace(name, Entry{dtype, std::move(shape), std::move(bytes)}).second)
      fail<OptionsError>("SafeTensorsWriter: duplicate tensor name '", name, "'");
  }

  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace dynconv

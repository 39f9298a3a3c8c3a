// dynconv: the exception hierarchy and the always-on checks.
//
// Every error dynconv throws derives from dynconv::Error (itself a std::runtime_error), and its
// message names the layer or file, the offending values and the rule that was broken, e.g.
//   DynamicConv2d(32 -> 64, 3x3): groups=3 must divide in_channels=32
//
//   Error
//   +-- OptionsError   invalid options or parameters, detected once at construction/assignment
//   +-- ShapeError     a tensor whose shape does not fit the layer, detected on every call
//   +-- FormatError    a malformed or inconsistent file (safetensors), detected while reading
//   +-- IoError        a file that cannot be opened, read or written
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dynconv {

namespace detail {

/// `s` with every control character escaped ("\n", "\t", "\x1b"): a message quotes names
/// taken from files (tensor names, a graph's node names), which may hold any of them, and a
/// message is one line.
inline std::string one_line(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u != 0x7f) {
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    }
  }
  return out;
}

}  // namespace detail

/// The base of every exception dynconv throws. what() names the layer or file, the offending
/// values and the rule, on one line (control characters escaped); every checked rule and its
/// message: @ref errors.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(detail::one_line(what)) {}
  explicit Error(const char* what) : Error(std::string(what)) {}
};
/// Invalid options or parameter values. Detected once: at construction or in a setter (a
/// channel count of 0, groups that do not divide the channels, a negative running variance).
class OptionsError : public Error {
 public:
  using Error::Error;
};
/// A tensor whose shape does not fit the layer or parameter. Detected on every call.
class ShapeError : public Error {
 public:
  using Error::Error;
};
/// A malformed file, or one that does not hold what a model needs. Detected while reading or
/// loading it.
class FormatError : public Error {
 public:
  using Error::Error;
};
/// A file that cannot be opened, read or written.
class IoError : public Error {
 public:
  using Error::Error;
};

/// Concatenates its arguments with operator<< into one string.
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

/// Throws E with the concatenation of args as the message.
template <typename E, typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw E(concat(std::forward<Args>(args)...));
}

namespace detail {

/// How a layer names itself in messages: "name: Kind(...)", or "Kind(...)" without a name.
inline std::string describe(const std::string& name, const std::string& kind) {
  return name.empty() ? kind : name + ": " + kind;
}

/// The largest channel count, kernel size, stride, padding or dilation a layer accepts, so
/// that products of a few of them cannot overflow before they are checked.
constexpr std::int64_t kMaxDimension = std::int64_t(1) << 31;

/// E "<layer>: <what>=<v> must be >= <lo>" unless lo <= v <= kMaxDimension.
template <typename E = OptionsError>
void check_range(const std::string& layer, const char* what, std::int64_t v, std::int64_t lo = 1) {
  if (v < lo) fail<E>(layer, ": ", what, '=', v, " must be >= ", lo);
  if (v > kMaxDimension) fail<E>(layer, ": ", what, '=', v, " must be <= ", kMaxDimension);
}

/// a * b for a, b >= 0, or E "<layer>: <what> overflows (a x b)" when it exceeds int64.
template <typename E>
std::int64_t checked_mul(const std::string& layer, const char* what, std::int64_t a,
                         std::int64_t b) {
  if (a != 0 && b > std::numeric_limits<std::int64_t>::max() / a)
    fail<E>(layer, ": ", what, " overflows (", a, " x ", b, ")");
  return a * b;
}

/// OptionsError unless `value` is finite and > 0, also once converted to the layer's type T
/// (1e-50 is 0 in float).
template <typename T>
void check_positive_finite(const std::string& layer, const char* what, double value) {
  if (!(value > 0) || !std::isfinite(value))
    fail<OptionsError>(layer, ": ", what, '=', value, " must be finite and > 0");
  const T t = static_cast<T>(value);
  if (!(t > T(0)) || !std::isfinite(t))
    fail<OptionsError>(layer, ": ", what, '=', value, " must be finite and > 0 in ",
                       sizeof(T) == sizeof(float) ? "float" : "the layer's type", " (it is ", t,
                       " there)");
}

}  // namespace detail
}  // namespace dynconv

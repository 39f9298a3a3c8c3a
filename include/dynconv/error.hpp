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

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dynconv {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class OptionsError : public Error {
 public:
  using Error::Error;
};
class ShapeError : public Error {
 public:
  using Error::Error;
};
class FormatError : public Error {
 public:
  using Error::Error;
};
class IoError : public Error {
 public:
  using Error::Error;
};

namespace detail {

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

}  // namespace detail
}  // namespace dynconv

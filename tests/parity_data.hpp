// The PyTorch parity data sets of the tests: a directory (named by an environment variable that
// ctest's fixture sets) holding manifest.txt, one case name per line, and <case>.safetensors per
// case with the tensors and string metadata describing it. Read when a test first runs (not when
// tests are registered: ctest lists them at build time, before the data exist).
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/runtime.hpp>
#include <dynconv/safetensors.hpp>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace parity {

struct Case {
  std::string name;
  std::string load_error;                  // non-empty if the file could not be read
  std::vector<dynconv::SafeTensors> file;  // one element once loaded (SafeTensors has no empty state)
  std::map<std::string, std::string> meta;
  const dynconv::SafeTensors& st() const { return file.front(); }
  const std::string& kind() const {
    static const std::string none;
    const auto it = meta.find("kind");
    return it == meta.end() ? none : it->second;
  }
};

struct Data {
  std::string dir;
  std::string problem;  // why there is no data; empty if there is
  std::vector<Case> cases;
};

inline std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

/// The data set in the directory that environment variable `env_var` names.
inline Data load(const char* env_var) {
  Data d;
  const char* env = std::getenv(env_var);
  if (env == nullptr || *env == '\0') {
    d.problem = std::string(env_var) + " is not set";
    return d;
  }
  d.dir = env;
  std::ifstream manifest(d.dir + "/manifest.txt");
  if (!manifest) {
    d.problem = d.dir + "/manifest.txt does not exist";
    return d;
  }
  for (std::string line; std::getline(manifest, line);) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    Case c;
    c.name = line;
    try {
      c.file.push_back(dynconv::SafeTensors::load(d.dir + "/" + line + ".safetensors"));
      c.meta = c.st().metadata();
    } catch (const std::exception& e) {
      c.load_error = e.what();
    }
    d.cases.push_back(std::move(c));
  }
  return d;
}

/// Metadata accessors; a missing or malformed value is a dynconv::FormatError naming the case.
struct Meta {
  const Case& c;

  const std::string& str(const std::string& key) const {
    const auto it = c.meta.find(key);
    if (it == c.meta.end()) dynconv::fail<dynconv::FormatError>(c.name, ": metadata has no '", key, "'");
    return it->second;
  }
  bool has(const std::string& key) const { return c.meta.count(key) != 0; }
  dynconv::Index integer(const std::string& key) const {
    const std::string& s = str(key);
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != s.size())
      dynconv::fail<dynconv::FormatError>(c.name, ": metadata ", key, "='", s, "' is not an integer");
    return static_cast<dynconv::Index>(v);
  }
  double real(const std::string& key) const {
    const std::string& s = str(key);
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != s.size())
      dynconv::fail<dynconv::FormatError>(c.name, ": metadata ", key, "='", s, "' is not a number");
    return v;
  }
  bool flag(const std::string& key) const { return integer(key) != 0; }
};

}  // namespace parity

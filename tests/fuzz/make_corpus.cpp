// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/, committed):
//
//   corpus/safetensors/  valid files of every dtype and rank (written by SafeTensorsWriter and by
//                        hand) and one or more crafted bad files per reader rule, after the cases
//                        of tests/test_safetensors.cpp: truncated, header length over the limit
//                        or past the end, bad JSON / UTF-8, deep nesting, duplicate keys, bad
//                        entries, dtype x shape overflow, gaps, overlaps, offsets past the end ...
//   corpus/model_load/   the tiny model of tiny_model.hpp as Model::save writes it (F32, and
//                        converted to F16 / BF16 / F64), its static twin (a LoadMode::Upcycle
//                        checkpoint), and variants: missing, extra, mis-shaped, non-finite or
//                        out-of-range tensors, BatchNorm counters, temperatures ...
//   corpus/graph_load/   graph files (docs/graph_format.md) of a few tiny networks that use every
//                        op of the format (conv2d; dynamic_conv2d of each attention: dy,
//                        condconv with its own and with a shared routing, odconv with and
//                        without each head; condconv_routing, batch_norm, linear, every
//                        activation, add / sub / mul with broadcast, cat, flatten, identity, the
//                        pools, softmax, log_softmax, upsample), two inputs, nodes out of order,
//                        test vectors, F16 / BF16 / F64 weights; and near misses, one rule of the
//                        reader broken each (version 2, an unknown op, a cycle, a missing
//                        temperature or attention tensor, tau = 0, a weight contradicting the
//                        attributes, a shared routing of the wrong width, a huge channel count,
//                        cut JSON ...). Each network is built as a dynconv Graph next to its
//                        JSON, so the recorded shapes are dynconv's shape inference and the
//                        tensors what Graph::save writes; every valid seed is loaded back with
//                        load_graph before it is written, and every near miss must be refused.
//
//   usage: fuzz_make_corpus <corpus directory>     (e.g. tests/fuzz/corpus)
// Deterministic: running it again rewrites the same bytes. Built on demand
// (cmake --build <build> --target fuzz_make_corpus), or by default with DYNCONV_FUZZ=ON.
#include "tiny_model.hpp"

#include <dynconv/graph_file.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/session.hpp>
#include <dynconv/upsample.hpp>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
using dynconv::DType;
using dynconv::Index;
using dynconv::SafeTensors;
using dynconv::SafeTensorsWriter;
using Bytes = std::vector<std::uint8_t>;

fs::path out_dir;
int written = 0;

void write(const std::string& name, const Bytes& bytes) {
  std::ofstream out(out_dir / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", (out_dir / name).string().c_str());
    std::exit(1);
  }
  ++written;
}

// ---- raw files ------------------------------------------------------------------------------

/// 8-byte little-endian n, then header, then data.
Bytes file_with_length(std::uint64_t n, const std::string& header, const Bytes& data = {}) {
  Bytes out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(n >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Bytes file(const std::string& header, const Bytes& data = {}) {
  return file_with_length(header.size(), header, data);
}

Bytes zeros(std::size_t n) { return Bytes(n, 0); }

Bytes cat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

template <typename S>
Bytes le_bytes(std::initializer_list<S> values) {
  Bytes out(values.size() * sizeof(S));
  std::size_t at = 0;
  for (S v : values) {
    std::memcpy(out.data() + at, &v, sizeof(S));
    at += sizeof(S);
  }
  return out;
}

std::string entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return R"({"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}";
}

std::string one(const std::string& name, const std::string& e) {
  return "{\"" + name + "\":" + e + "}";
}

std::string nested_arrays(std::size_t n) { return std::string(n, '[') + std::string(n, ']'); }
std::string nested_objects(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += "{\"a\":";
  return s + "1" + std::string(n, '}');
}

// ---- corpus/safetensors ---------------------------------------------------------------------

void valid_safetensors() {
  write("valid_empty", file("{}"));
  write("valid_empty_padded", file("{}      "));
  write("valid_trailing_whitespace", file("{}  \n\t "));
  write("valid_metadata_only", file(R"({"__metadata__":{}})"));
  write("valid_f32_2", file(one("a", entry("F32", "[2]", "[0,8]")), le_bytes<float>({1.5f, -2})));
  write("valid_metadata_and_tensor",
        file(R"({"__metadata__":{"k":"v","model":"x"},"w":)" + entry("F32", "[1,2]", "[0,8]") + "}",
             le_bytes<float>({0.25f, 3})));
  // Every dtype, ranks 0 to 4, from the writer.
  {
    SafeTensorsWriter w;
    dynconv::Tensor<float, 0> s;
    s() = 7.5f;
    dynconv::Tensor<float, 1> v(3);
    v.setValues({1.f, -2.f, 0.5f});
    dynconv::Tensor<float, 2> m(2, 3);
    m.setValues({{1.f, 2.f, 3.f}, {4.f, 5.f, 6.f}});
    dynconv::Tensor<double, 3> t(2, 1, 2);
    t.setValues({{{0.1, -0.2}}, {{1e10, -3.0}}});
    dynconv::Tensor<std::int64_t, 4> i(1, 2, 1, 2);
    i.setValues(
        {{{{-1, 2}},
          {{std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::min()}}}});
    w.add("scalar", s);
    w.add("vector_f16", v, DType::F16);
    w.add("matrix_bf16", m, DType::BF16);
    w.add("matrix_f32", m);
    w.add("cube_f64", t);
    w.add("ints", i);
    w.set_metadata("format", "pt");
    w.set_metadata("note", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
    write("valid_writer_all_dtypes", w.to_bytes());
  }
  // Hand-written, entries in any order, offsets not in name order.
  write("valid_hand_order",
        file("{\"b\":" + entry("F16", "[2]", "[0,4]") + ",\"a\":" + entry("I64", "[]", "[4,12]") +
                 "}",
             cat(le_bytes<std::uint16_t>({0x3C00, 0xC000}), le_bytes<std::int64_t>({-42}))));
  // Zero-size tensors anywhere, and a zero dimension next to a huge one.
  write("valid_zero_size_anywhere",
        file("{\"a\":" + entry("F32", "[1]", "[0,4]") + ",\"e0\":" + entry("F32", "[0]", "[0,0]") +
                 ",\"e4\":" + entry("F64", "[0,2]", "[4,4]") + ",\"e8\":" +
                 entry("I64", "[3,0]", "[8,8]") + ",\"b\":" + entry("F32", "[1]", "[4,8]") + "}",
             zeros(8)));
  write("valid_zero_dim_huge_dim",
        file(one("z", entry("BF16", "[0,9223372036854775807]", "[0,0]"))));
  // Values that do not convert to int64: fractions, NaN, infinities, out of range.
  write("valid_f64_not_integers",
        file(one("d", entry("F64", "[5]", "[0,40]")),
             le_bytes<double>({0.5, std::numeric_limits<double>::quiet_NaN(),
                               std::numeric_limits<double>::infinity(), 9.3e18, -9.3e18})));
  write("valid_f16_inf_nan", file(one("h", entry("F16", "[4]", "[0,8]")),
                                  le_bytes<std::uint16_t>({0x7C00, 0xFC00, 0x7E00, 0x0001})));
  write("valid_bf16_values", file(one("b", entry("BF16", "[2,2]", "[0,8]")),
                                  le_bytes<std::uint16_t>({0x3F80, 0x7F80, 0xFF80, 0x7FC0})));
  write("valid_f64_huge_for_float",
        file(one("d", entry("F64", "[2]", "[0,16]")), le_bytes<double>({1e300, -1e-300})));
  // Names with JSON escapes and non-ASCII characters.
  write("valid_escaped_names",
        file("{\"\\u0041\\u00e9\\ud83d\\ude00\":" + entry("F32", "[1]", "[0,4]") +
                 ",\"tab\\tnew\\nline\\\"q\\\\\":" + entry("F32", "[1]", "[4,8]") +
                 ",\"caf\xC3\xA9\":" + entry("F32", "[0]", "[8,8]") + "}",
             zeros(8)));
  write("valid_high_rank", file(one("r", entry("F32", "[1,1,1,1,1,1,1,2]", "[0,8]")), zeros(8)));
  write("valid_nul_escape_name", file("{\"a\\u0000b\":" + entry("F32", "[1]", "[0,4]") +
                                          ",\"__metadata__\":{\"\\u0000\":\"\\u0000\"}}",
                                      zeros(4)));
}

void bad_safetensors() {
  const std::string good = entry("F32", "[2]", "[0,8]");
  // Too short, header length over the limit or past the end.
  write("bad_0_bytes", Bytes{});
  write("bad_7_bytes", Bytes{2, 0, 0, 0, 0, 0, 0});
  write("bad_header_over_limit", file_with_length(100'000'001, "{}"));
  write("bad_header_u64_max", file_with_length(std::numeric_limits<std::uint64_t>::max(), "{}"));
  write("bad_header_exactly_limit", file_with_length(100'000'000, "{}"));
  write("bad_header_past_end", file_with_length(100, "{}"));
  write("bad_header_past_end_by_1", file_with_length(3, "{}"));
  write("bad_header_length_zero", file_with_length(0, "{}"));
  // Not JSON, not an object, not starting with '{'.
  write("bad_json_cut", file(R"({"a": )"));
  write("bad_json_empty", file(""));
  write("bad_json_trailing", file("{} x"));
  write("bad_json_nul_padding", file(std::string("{}\0", 3)));
  write("bad_json_nul_in_string", file(std::string("{\"a\":\"\0\"}", 8)));
  write("bad_json_single_quotes", file("{'a': 1}"));
  write("bad_json_lone_surrogate_escape", file(R"({"\ud800":1})"));
  write("bad_not_object_array", file("[1, 2]"));
  write("bad_not_object_string", file("\"{}\""));
  write("bad_not_object_number", file("12345678"));
  write("bad_leading_space", file(" {}"));
  write("bad_leading_newline", file("\n{}"));
  // Not UTF-8.
  write("bad_utf8_ff", file("{\"a\xFF\":" + good + "}", zeros(8)));
  write("bad_utf8_overlong", file("{\"\xC0\xAF\":1}"));
  write("bad_utf8_surrogate", file("{\"\xED\xA0\x80\":1}"));
  write("bad_utf8_above_max", file("{\"\xF4\x90\x80\x80\":1}"));
  write("bad_utf8_stray_continuation", file("{\"\x80\":1}"));
  write("bad_utf8_cut_short", file("{}\xE2\x82"));
  write("bad_utf8_latin1_metadata", file("{\"__metadata__\":{\"k\":\"\xE9t\xE9\"}}"));
  // Duplicate keys.
  write("bad_duplicate_tensor", file("{\"a\":" + good + ",\"a\":" + good + "}", zeros(8)));
  write("bad_duplicate_field",
        file(R"({"a":{"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,4]}})", zeros(4)));
  write("bad_duplicate_metadata_key", file(R"({"__metadata__":{"k":"1","k":"2"}})"));
  write("bad_duplicate_metadata", file(R"({"__metadata__":{},"__metadata__":{}})"));
  write("bad_duplicate_by_escape", file("{\"a\":" + good + ",\"\\u0061\":" + good + "}", zeros(8)));
  // Nested too deeply (one level too deep, and a few thousand levels).
  write("bad_nested_arrays_deep", file("{\"w\":" + nested_arrays(5000) + "}"));
  write("bad_nested_objects_deep", file("{\"w\":" + nested_objects(2000) + "}"));
  write("bad_nested_shape", file("{\"w\":" + entry("F32", "[[2]]", "[0,8]") + "}", zeros(8)));
  write("bad_nested_offsets", file("{\"w\":" + entry("F32", "[1]", "[0,{}]") + "}", zeros(4)));
  write("bad_nested_metadata", file(R"({"__metadata__":{"k":[["v"]]}})"));
  write("bad_nested_top", file(nested_arrays(100)));
  write("bad_nested_unclosed", file("{\"w\":" + std::string(3000, '[')));
  // Entries.
  write("bad_entry_number", file(R"({"w":5})"));
  write("bad_entry_array", file(R"({"w":["F32",[1],[0,4]]})", zeros(4)));
  write("bad_entry_no_dtype", file(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", zeros(4)));
  write("bad_entry_no_shape", file(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", zeros(4)));
  write("bad_entry_no_offsets", file(R"({"w":{"dtype":"F32","shape":[1]}})", zeros(4)));
  write("bad_entry_extra_field",
        file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"offset":0}})", zeros(4)));
  write("bad_dtype_f8", file(one("w", entry("F8", "[1]", "[0,1]")), zeros(1)));
  write("bad_dtype_lowercase", file(one("w", entry("f32", "[1]", "[0,4]")), zeros(4)));
  write("bad_dtype_i32", file(one("w", entry("I32", "[1]", "[0,4]")), zeros(4)));
  write("bad_dtype_number",
        file(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", zeros(4)));
  for (const auto& [tag, shape] :
       std::vector<std::pair<std::string, std::string>>{{"number", "4"},
                                                        {"negative", "[-1]"},
                                                        {"float", "[2.0]"},
                                                        {"string", "[\"2\"]"},
                                                        {"null", "[null]"},
                                                        {"object", "{}"},
                                                        {"over_u64", "[18446744073709551616]"},
                                                        {"over_index", "[9223372036854775808,0]"},
                                                        {"exponent", "[1e2]"},
                                                        {"minus_zero", "[-0]"}})
    write("bad_shape_" + tag, file(one("w", entry("F32", shape, "[0,16]")), zeros(16)));
  for (const auto& [tag, offsets] :
       std::vector<std::pair<std::string, std::string>>{{"one", "[4]"},
                                                        {"three", "[0,4,8]"},
                                                        {"negative", "[-4,0]"},
                                                        {"float", "[0,4.0]"},
                                                        {"reversed", "[8,4]"},
                                                        {"string", "\"0-4\""},
                                                        {"null", "null"}})
    write("bad_offsets_" + tag, file(one("w", entry("F32", "[1]", offsets)), zeros(8)));
  write("bad_metadata_number", file(R"({"__metadata__":5})"));
  write("bad_metadata_null", file(R"({"__metadata__":null})"));
  write("bad_metadata_array", file(R"({"__metadata__":["a"]})"));
  write("bad_metadata_value_number", file(R"({"__metadata__":{"epoch":3}})"));
  write("bad_metadata_value_object", file(R"({"__metadata__":{"a":"x","b":{}}})"));
  // Byte size against offsets, and overflow of dtype x shape.
  write("bad_size_differs", file(one("conv.weight", entry("F32", "[4,3]", "[0,40]")), zeros(40)));
  write("bad_size_scalar_f64", file(one("s", entry("F64", "[]", "[0,4]")), zeros(4)));
  write("bad_size_zero_dim", file(one("z", entry("BF16", "[3,0]", "[0,2]")), zeros(2)));
  write("bad_overflow_elements", file(one("w", entry("F32", "[4294967296,4294967296]", "[0,0]"))));
  write("bad_overflow_bytes", file(one("w", entry("F32", "[4611686018427387904]", "[0,0]"))));
  write("bad_overflow_to_zero", file(one("w", entry("F16", "[4294967296,2147483648]", "[0,0]"))));
  // Tiling of the data section.
  write("bad_first_not_at_zero", file(one("w", entry("F32", "[1]", "[4,8]")), zeros(8)));
  write("bad_gap", file("{\"a\":" + entry("F32", "[1]", "[0,4]") +
                            ",\"b\":" + entry("F32", "[1]", "[8,12]") + "}",
                        zeros(12)));
  write("bad_overlap", file("{\"a\":" + entry("F32", "[2]", "[0,8]") +
                                ",\"b\":" + entry("F32", "[2]", "[4,12]") + "}",
                            zeros(12)));
  write("bad_overlap_shared",
        file("{\"a\":" + entry("F32", "[1]", "[0,4]") + ",\"b\":" + entry("I64", "[0]", "[0,0]") +
                 ",\"c\":" + entry("F32", "[1]", "[0,4]") + "}",
             zeros(4)));
  write("bad_overlap_zero_size_inside", file("{\"a\":" + entry("F32", "[2]", "[0,8]") +
                                                 ",\"e\":" + entry("F32", "[0]", "[4,4]") + "}",
                                             zeros(8)));
  write("bad_trailing_bytes", file(one("w", good), zeros(12)));
  write("bad_offsets_past_end", file(one("w", good), zeros(5)));
  write("bad_offsets_far_past_end",
        file(one("w", entry("F64", "[1]", "[1000000000000,1000000000008]"))));
  write("bad_no_tensors_with_data", file("{}", zeros(4)));
  write("bad_metadata_only_with_data", file(R"({"__metadata__":{"a":"b"}})", zeros(1)));
  // A valid writer file, truncated and with single bytes replaced.
  SafeTensorsWriter w;
  dynconv::Tensor<float, 2> t(2, 3);
  t.setValues({{1.f, 2.f, 3.f}, {4.f, 5.f, 6.f}});
  dynconv::Tensor<std::int64_t, 0> s;
  s() = 9;
  w.add("t", t, DType::F16);
  w.add("s", s);
  w.set_metadata("k", "v");
  const Bytes writer_file = w.to_bytes();
  write("valid_writer_small", writer_file);
  for (std::size_t len : {std::size_t{4}, std::size_t{8}, std::size_t{20}, writer_file.size() - 1})
    write("bad_truncated_" + std::to_string(len),
          Bytes(writer_file.begin(), writer_file.begin() + static_cast<std::ptrdiff_t>(len)));
}

// ---- corpus/model_load ----------------------------------------------------------------------

/// A tensor of a parsed file, kept as double values for rewriting.
struct Named {
  std::string name;
  std::vector<Index> shape;
  std::vector<double> values;
};

std::vector<Named> tensors_of(const Bytes& bytes) {
  const SafeTensors st = SafeTensors::parse(bytes);
  std::vector<Named> out;
  for (const std::string& name : st.names())
    out.push_back({name, st.entry(name).shape, st.get_flat<double>(name)});
  return out;
}

/// A file of `tensors`, each stored as `dtype` (floating), with `metadata` (by default the tiny
/// model's).
Bytes file_of(const std::vector<Named>& tensors, DType dtype = DType::F32,
              const std::vector<std::pair<std::string, std::string>>& metadata = {{"model", "tiny_dynamic"}}) {
  SafeTensorsWriter w;
  for (const Named& t : tensors) {
    Bytes raw;
    for (double d : t.values) {
      const float v = dtype == DType::F64 ? 0.f : static_cast<float>(d);  // F64 keeps d
      std::uint8_t b[8];
      std::size_t n = 0;
      switch (dtype) {
        case DType::F16: {
          const auto bits = Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(v));
          std::memcpy(b, &bits, n = 2);
          break;
        }
        case DType::BF16: {
          const auto bits = Eigen::numext::bit_cast<std::uint16_t>(Eigen::bfloat16(v));
          std::memcpy(b, &bits, n = 2);
          break;
        }
        case DType::F64: std::memcpy(b, &d, n = 8); break;
        default: std::memcpy(b, &v, n = 4); break;
      }
      raw.insert(raw.end(), b, b + n);
    }
    w.add_raw(t.name, dtype, t.shape, raw.data(), raw.size());
  }
  for (const auto& [key, value] : metadata) w.set_metadata(key, value);
  return w.to_bytes();
}

Named* find(std::vector<Named>& ts, const std::string& name) {
  for (Named& t : ts)
    if (t.name == name) return &t;
  std::fprintf(stderr, "make_corpus: the tiny model has no tensor '%s'\n", name.c_str());
  std::exit(1);
}

std::vector<Named> without(std::vector<Named> ts, const std::string& name) {
  find(ts, name);
  std::vector<Named> out;
  for (Named& t : ts)
    if (t.name != name) out.push_back(std::move(t));
  return out;
}

template <typename F>
std::vector<Named> changed(std::vector<Named> ts, const std::string& name, F&& f) {
  f(*find(ts, name));
  return ts;
}

void model_load() {
  const Bytes dynamic_file = dynconv_fuzz::saved_bytes(dynconv_fuzz::tiny_model<float>(true));
  const Bytes static_file = dynconv_fuzz::saved_bytes(dynconv_fuzz::tiny_model<float>(false));
  write("valid_dynamic", dynamic_file);
  write("valid_static_upcycle", static_file);
  const std::vector<Named> dy = tensors_of(dynamic_file), st = tensors_of(static_file);
  write("valid_dynamic_f16", file_of(dy, DType::F16));
  write("valid_dynamic_bf16", file_of(dy, DType::BF16));
  write("valid_dynamic_f64", file_of(dy, DType::F64));
  write("valid_static_f16", file_of(st, DType::F16));

  // Upcycle: features.1 given as static (upcycled), features.2 as dynamic (loaded as it is).
  {
    std::vector<Named> mixed = without(without(st, "features.2.0.weight"), "features.2.0.bias");
    for (const Named& t : dy)
      if (t.name.rfind("features.2.", 0) == 0) mixed.push_back(t);
    write("valid_upcycle_mixed", file_of(mixed));
  }
  // Optional and ignored tensors.
  write("valid_no_temperature", file_of(without(dy, "features.1.0.attention.temperature")));
  {
    std::vector<Named> with_counters = dy;
    with_counters.push_back({"features.0.1.num_batches_tracked", {}, {100}});
    with_counters.push_back({"features.1.1.num_batches_tracked", {}, {std::nan("")}});
    write("valid_num_batches_tracked", file_of(with_counters));
  }
  write("valid_temperature_rank2",
        file_of(changed(dy, "features.2.0.attention.temperature", [](Named& t) {
          t.shape = {1, 1};
        })));
  write("valid_temperature_small", file_of(changed(dy, "features.1.0.attention.temperature",
                                                   [](Named& t) { t.values = {1e-30}; })));
  write("valid_values_at_bound", file_of(changed(dy, "features.1.0.weight", [](Named& t) {
          for (double& v : t.values) v = v < 0 ? -1e4 : 1e4;
        })));
  write("valid_running_var_zero", file_of(changed(dy, "features.0.1.running_var", [](Named& t) {
          for (double& v : t.values) v = 0;
        })));
  // Huge finite values: the BatchNorm fold may overflow.
  write("edge_huge_bn_weight", file_of(changed(dy, "features.0.1.weight", [](Named& t) {
          for (double& v : t.values) v = 3e38;
        })));
  write("edge_huge_weights", file_of(changed(dy, "classifier.weight", [](Named& t) {
          for (double& v : t.values) v = 1e38;
        })));

  // Rejected: missing, extra, mis-shaped, non-finite, out-of-range tensors.
  write("bad_missing_weight", file_of(without(dy, "features.1.0.weight")));
  write("bad_missing_bn", file_of(without(dy, "features.0.1.running_mean")));
  write("bad_missing_attention", file_of(without(dy, "features.2.0.attention.fc2.bias")));
  {
    std::vector<Named> extra = dy;
    extra.push_back({"features.3.0.weight", {2, 2}, {1, 2, 3, 4}});
    write("bad_extra_tensor", file_of(extra));
  }
  write("bad_transposed", file_of(changed(dy, "classifier.weight", [](Named& t) {
          t.shape = {t.shape[1], t.shape[0]};
        })));
  write("bad_rank", file_of(changed(dy, "features.0.1.bias", [](Named& t) {
          t.shape = {1, t.shape[0]};
        })));
  write("bad_temperature_two",
        file_of(changed(dy, "features.1.0.attention.temperature", [](Named& t) {
          t.shape = {2};
          t.values = {1, 1};
        })));
  write("bad_temperature_zero", file_of(changed(dy, "features.1.0.attention.temperature",
                                                [](Named& t) { t.values = {0}; })));
  write("bad_temperature_negative", file_of(changed(dy, "features.2.0.attention.temperature",
                                                    [](Named& t) { t.values = {-1}; })));
  write("bad_nan_weight",
        file_of(changed(dy, "features.0.0.weight", [](Named& t) { t.values[5] = std::nan(""); })));
  write("bad_inf_running_var", file_of(changed(dy, "features.1.1.running_var", [](Named& t) {
          t.values[0] = std::numeric_limits<double>::infinity();
        })));
  write("bad_negative_running_var",
        file_of(changed(dy, "features.1.1.running_var", [](Named& t) { t.values[1] = -1; })));
  write("bad_inf_attention", file_of(changed(dy, "features.2.0.attention.fc1.bias", [](Named& t) {
          t.values[0] = -std::numeric_limits<double>::infinity();
        })));
  write("bad_f64_over_float",
        file_of(changed(dy, "classifier.bias",
                        [](Named& t) {
                          t.values[0] = 1e39;  // finite in F64, infinite as the model's float
                        }),
                DType::F64));
  write("bad_static_strict_only_upcycles", file_of(without(st, "classifier.bias")));
  {
    // The model's file with the data section cut short: a FormatError before any load.
    Bytes cut = dynamic_file;
    cut.resize(cut.size() - 4);
    write("bad_truncated", cut);
  }
}

// ---- corpus/graph_load ----------------------------------------------------------------------

using Json = nlohmann::json;
using dynconv::NhwcShape;
using dynconv::Pair;

/// A graph file under construction: its JSON and, next to it, the same network as a dynconv
/// Graph, whose plan gives the recorded shapes and whose save() gives the parameter tensors
/// (fresh, deterministic values; temperatures 1, running variances 1).
class GraphSeed {
 public:
  explicit GraphSeed(Index batch = 1) : batch_(batch) {}

  GraphSeed& input(const std::string& name, Index c, Index h, Index w) {
    graph_.input(name, c);
    inputs_.push_back(NhwcShape{batch_, h, w, c});
    json_["inputs"].push_back({{"name", name}, {"shape", {batch_, c, h, w}}});
    return *this;
  }
  /// Node `name`, op `op` with `attrs`, computed by `module`; `flat`: its value is recorded as
  /// [N, C] (as PyTorch has it after flatten, linear, a routing, softmax).
  template <typename M>
  GraphSeed& node(const std::string& name, const std::string& op, const std::vector<std::string>& inputs,
                  Json attrs, M&& module, bool flat = false) {
    graph_.add(name, std::forward<M>(module), std::vector<dynconv::Value>(inputs.begin(), inputs.end()));
    json_["nodes"].push_back(
        {{"name", name}, {"op", op}, {"inputs", inputs}, {"shape", Json::array()}, {"attrs", std::move(attrs)}});
    flat_.push_back(flat);
    return *this;
  }
  GraphSeed& output(const std::string& name, const std::string& value) {
    graph_.output(name, dynconv::Value(value));
    json_["outputs"].push_back({{"name", name}, {"value", value}});
    return *this;
  }

  /// The graph's JSON, the shapes recorded.
  Json json() const {
    const dynconv::GraphPlan p = graph_.plan(inputs_);
    Json j = json_;
    for (std::size_t i = 0; i < flat_.size(); ++i) {
      const NhwcShape& s = p.shapes[inputs_.size() + i];
      j["nodes"][i]["shape"] = flat_[i] ? Json{s.n, s.c} : Json{s.n, s.c, s.h, s.w};
    }
    return j;
  }
  std::vector<Named> tensors() const {
    SafeTensorsWriter w;
    graph_.save(w);
    return tensors_of(w.to_bytes());
  }

 private:
  Index batch_;
  dynconv::Graph<float> graph_{"seed"};
  std::vector<NhwcShape> inputs_;
  std::vector<bool> flat_;
  Json json_ = {{"format", "dynconv.graph"},
                {"version", 1},
                {"inputs", Json::array()},
                {"nodes", Json::array()},
                {"outputs", Json::array()}};
};

Bytes graph_file(const Json& graph, const std::vector<Named>& tensors, DType dtype = DType::F32) {
  return file_of(tensors, dtype, {{dynconv::kGraphMetadataKey, graph.dump()}});
}
Bytes graph_file(const std::string& graph_text, const std::vector<Named>& tensors) {
  return file_of(tensors, DType::F32, {{dynconv::kGraphMetadataKey, graph_text}});
}

// Attributes as the format spells them.
Json conv_attrs(Index cin, Index cout, Pair k, Pair stride, std::vector<Index> padding, Pair dilation, Index groups,
                bool bias) {
  return {{"in_channels", cin}, {"out_channels", cout}, {"kernel_size", {k[0], k[1]}},
          {"stride", {stride[0], stride[1]}}, {"padding", padding}, {"dilation", {dilation[0], dilation[1]}},
          {"groups", groups}, {"bias", bias}};
}
template <typename Options>
Options geometry(Options o, Pair stride, const std::vector<Index>& p, Pair dilation, Index groups, bool bias) {
  o.stride(stride[0], stride[1]).padding(p[0], p[1], p[2], p[3]).dilation(dilation[0], dilation[1]).groups(groups).bias(bias);
  return o;
}

void conv(GraphSeed& g, const std::string& name, const std::string& in, Index cin, Index cout, Pair k, Pair stride,
          std::vector<Index> p, Pair dilation, Index groups, bool bias) {
  g.node(name, "conv2d", {in}, conv_attrs(cin, cout, k, stride, p, dilation, groups, bias),
         dynconv::Conv2d<float>(geometry(dynconv::Conv2dOptions(cin, cout, k), stride, p, dilation, groups, bias).name(name)));
}

/// A dynamic_conv2d of attention `kind` ("dy", "condconv", "odconv"); hidden 0 for condconv.
void dynamic(GraphSeed& g, const std::string& name, std::vector<std::string> in, const std::string& kind, Index cin,
             Index cout, Index k, Index stride, Index pad, Index groups, bool bias, Index kernels, Index hidden,
             bool shared_routing = false) {
  Json a = conv_attrs(cin, cout, {k, k}, {stride, stride}, {pad, pad, pad, pad}, {1, 1}, groups, bias);
  a["attention"] = kind;
  a["kernels"] = kernels;
  dynconv::DynamicConv2dOptions o(cin, cout, Pair{k, k});
  if (kind == "dy") {
    o.kernels(kernels).hidden_channels(hidden);
    a["hidden"] = hidden;
  } else if (kind == "condconv") {
    o = dynconv::DynamicConv2dOptions::condconv(cin, cout, Pair{k, k}, kernels).shared_routing(shared_routing);
    if (shared_routing) a["shared_routing"] = true;
  } else {
    o = dynconv::DynamicConv2dOptions::odconv(cin, cout, Pair{k, k}, kernels).hidden_channels(hidden);
    a["hidden"] = hidden;
  }
  o = geometry(o, {stride, stride}, {pad, pad, pad, pad}, {1, 1}, groups, bias);
  g.node(name, "dynamic_conv2d", in, a, dynconv::DynamicConv2d<float>(o.name(name)));
}

void batch_norm(GraphSeed& g, const std::string& name, const std::string& in, Index c, double eps) {
  g.node(name, "batch_norm", {in}, {{"num_features", c}, {"eps", eps}},
         dynconv::BatchNorm2d<float>(dynconv::BatchNorm2dOptions(c).eps(eps).name(name)));
}

void activation(GraphSeed& g, const std::string& name, const std::string& op, dynconv::Activation a,
                const std::string& in) {
  g.node(name, op, {in}, Json::object(), dynconv::ActivationLayer<float>(a, name));
}

void linear(GraphSeed& g, const std::string& name, const std::string& in, Index fin, Index fout, bool bias) {
  g.node(name, "linear", {in}, {{"in_features", fin}, {"out_features", fout}, {"bias", bias}},
         dynconv::Linear<float>(dynconv::LinearOptions(fin, fout).bias(bias).name(name)), true);
}

void pool(GraphSeed& g, const std::string& name, const std::string& in, bool max, Index k, Index stride, Index pad,
          bool ceil_mode, Index dilation_or_cip) {
  Json a = {{"kernel_size", {k, k}}, {"stride", {stride, stride}}, {"padding", {pad, pad}}, {"ceil_mode", ceil_mode}};
  dynconv::Pool2dOptions o(Pair{k, k});
  o.stride(stride, stride).padding(pad, pad).ceil_mode(ceil_mode).name(name);
  if (max) {
    a["dilation"] = {dilation_or_cip, dilation_or_cip};
    o.dilation(dilation_or_cip, dilation_or_cip);
    g.node(name, "max_pool2d", {in}, a, dynconv::MaxPool2d<float>(o));
  } else {
    a["count_include_pad"] = dilation_or_cip != 0;
    o.count_include_pad(dilation_or_cip != 0);
    g.node(name, "avg_pool2d", {in}, a, dynconv::AvgPool2d<float>(o));
  }
}

void adaptive(GraphSeed& g, const std::string& name, const std::string& in, Index h, Index w, bool flat) {
  g.node(name, "adaptive_avg_pool2d", {in}, {{"output_size", {h, w}}}, dynconv::AdaptiveAvgPool2d<float>(h, w, name),
         flat);
}

/// x [2, 2, 5, 5] -> conv (2 -> 3, 3x3, pad 1, no bias) -> bn -> relu -> mean [N, C] -> fc
/// (3 -> 4): the graph of tests/test_graph_file.cpp.
GraphSeed basic_net() {
  GraphSeed g(2);
  g.input("x", 2, 5, 5);
  conv(g, "conv", "x", 2, 3, {3, 3}, {1, 1}, {1, 1, 1, 1}, {1, 1}, 1, false);
  batch_norm(g, "bn", "conv", 3, 1e-5);
  activation(g, "relu", "relu", dynconv::Activation::ReLU, "bn");
  adaptive(g, "pool", "relu", 1, 1, true);
  linear(g, "fc", "pool", 3, 4, true);
  g.output("logits", "fc");
  return g;
}

/// DY-Conv with a bias, a BatchNorm and HardSwish, then a depthwise strided DY-Conv.
GraphSeed dy_net() {
  GraphSeed g;
  g.input("x", 3, 6, 6);
  dynamic(g, "dy1", {"x"}, "dy", 3, 4, 3, 1, 1, 1, true, 2, 2);
  batch_norm(g, "bn1", "dy1", 4, 1e-3);
  activation(g, "act1", "hardswish", dynconv::Activation::HardSwish, "bn1");
  dynamic(g, "dy2", {"act1"}, "dy", 4, 4, 3, 2, 1, 4, false, 3, 1);
  g.output("y", "dy2");
  return g;
}

/// CondConv with its own routing (no bias, and a 1x1 one with a bias).
GraphSeed condconv_net() {
  GraphSeed g;
  g.input("x", 3, 5, 5);
  dynamic(g, "cc1", {"x"}, "condconv", 3, 4, 3, 1, 1, 1, false, 3, 0);
  activation(g, "relu", "relu", dynconv::Activation::ReLU, "cc1");
  dynamic(g, "cc2", {"relu"}, "condconv", 4, 4, 1, 1, 0, 1, true, 2, 0);
  g.output("y", "cc2");
  return g;
}

/// One condconv_routing shared by two CondConvs (a 1x1 and a depthwise 3x3).
GraphSeed condconv_shared_net() {
  GraphSeed g;
  g.input("x", 4, 5, 5);
  g.node("route", "condconv_routing", {"x"}, {{"in_channels", 4}, {"experts", 2}},
         dynconv::CondConvRouting<float>(dynconv::CondConvRoutingOptions(4, 2).name("route")), true);
  dynamic(g, "cc1", {"x", "route"}, "condconv", 4, 4, 1, 1, 0, 1, false, 2, 0, true);
  dynamic(g, "cc2", {"cc1", "route"}, "condconv", 4, 4, 3, 1, 1, 4, false, 2, 0, true);
  g.output("y", "cc2");
  return g;
}

/// ODConv with every head, depthwise (no filter head), 1x1 (no spatial head), K = 1 (no kernel
/// head).
GraphSeed odconv_net() {
  GraphSeed g;
  g.input("x", 4, 5, 5);
  dynamic(g, "od1", {"x"}, "odconv", 4, 4, 3, 1, 1, 1, false, 2, 2);
  dynamic(g, "od2", {"od1"}, "odconv", 4, 4, 3, 1, 1, 4, false, 2, 2);
  dynamic(g, "od3", {"od2"}, "odconv", 4, 6, 1, 1, 0, 1, false, 2, 2);
  dynamic(g, "od4", {"od3"}, "odconv", 6, 4, 3, 2, 1, 1, false, 1, 2);
  g.output("y", "od4");
  return g;
}

/// Every activation in a chain.
GraphSeed activations_net() {
  GraphSeed g;
  g.input("x", 2, 3, 3);
  using A = dynconv::Activation;
  const std::vector<std::pair<std::string, A>> acts = {{"relu", A::ReLU},       {"relu6", A::ReLU6},
                                                       {"hardswish", A::HardSwish}, {"hardsigmoid", A::HardSigmoid},
                                                       {"sigmoid", A::Sigmoid}, {"silu", A::SiLU},
                                                       {"tanh", A::Tanh},       {"gelu", A::GELU}};
  std::string prev = "x";
  for (const auto& [op, a] : acts) {
    activation(g, op + "_1", op, a, prev);
    prev = op + "_1";
  }
  g.output("y", prev);
  return g;
}

/// add, sub and mul (same shapes, and a [N, C, 1, 1] value broadcast on either side), a
/// squeeze-and-excitation gate, cat of three values, identity.
GraphSeed elementwise_net() {
  GraphSeed g;
  g.input("x", 3, 4, 4);
  activation(g, "a", "relu", dynconv::Activation::ReLU, "x");
  activation(g, "b", "sigmoid", dynconv::Activation::Sigmoid, "x");
  g.node("sum", "add", {"a", "b"}, Json::object(), dynconv::Add<float>("sum"));
  adaptive(g, "gap", "x", 1, 1, false);
  g.node("centered", "sub", {"sum", "gap"}, Json::object(), dynconv::Sub<float>("centered"));
  conv(g, "se", "gap", 3, 3, {1, 1}, {1, 1}, {0, 0, 0, 0}, {1, 1}, 1, true);
  activation(g, "gate", "hardsigmoid", dynconv::Activation::HardSigmoid, "se");
  g.node("scaled", "mul", {"centered", "gate"}, Json::object(), dynconv::Mul<float>("scaled"));
  g.node("scaled2", "mul", {"gate", "sum"}, Json::object(), dynconv::Mul<float>("scaled2"));
  g.node("both", "cat", {"scaled", "x", "scaled2"}, Json::object(), dynconv::Concat<float>("both"));
  g.node("same", "identity", {"both"}, Json::object(), dynconv::Identity<float>("same"));
  g.output("y", "same");
  return g;
}

/// max_pool2d (dilated, ceil_mode), avg_pool2d (ceil_mode, count_include_pad either way), cat,
/// adaptive_avg_pool2d to 2x2, flatten, linear, softmax and log_softmax.
GraphSeed pools_net() {
  GraphSeed g;
  g.input("x", 2, 7, 7);
  pool(g, "mp", "x", true, 3, 2, 1, false, 1);
  pool(g, "mp2", "x", true, 2, 1, 0, true, 2);
  pool(g, "ap", "x", false, 3, 2, 1, true, 0);
  pool(g, "ap2", "x", false, 2, 2, 0, false, 1);
  g.node("joined", "cat", {"mp", "ap"}, Json::object(), dynconv::Concat<float>("joined"));
  adaptive(g, "adapt", "joined", 2, 2, false);
  g.node("flat", "flatten", {"adapt"}, Json::object(), dynconv::Flatten<float>("flat"), true);
  linear(g, "fc", "flat", 16, 3, false);
  g.node("prob", "softmax", {"fc"}, Json::object(), dynconv::Softmax<float>("prob"), true);
  g.node("logp", "log_softmax", {"fc"}, Json::object(), dynconv::LogSoftmax<float>("logp"), true);
  g.output("prob", "prob").output("logp", "logp").output("mp2", "mp2").output("ap2", "ap2");
  return g;
}

/// upsample by size and by scale factor, nearest and bilinear, align_corners either way.
GraphSeed upsample_net() {
  GraphSeed g;
  g.input("x", 2, 3, 3);
  using dynconv::UpsampleMode;
  using dynconv::UpsampleOptions;
  g.node("up1", "upsample", {"x"}, {{"size", {5, 4}}, {"mode", "nearest"}},
         dynconv::Upsample<float>(UpsampleOptions().size(5, 4).mode(UpsampleMode::Nearest).name("up1")));
  g.node("up2", "upsample", {"x"}, {{"scale_factor", {2.0, 1.5}}, {"mode", "bilinear"}, {"align_corners", false}},
         dynconv::Upsample<float>(UpsampleOptions().scale_factor(2.0, 1.5).mode(UpsampleMode::Bilinear).name("up2")));
  g.node("up3", "upsample", {"x"}, {{"scale_factor", {2, 2}}, {"mode", "bilinear"}, {"align_corners", true}},
         dynconv::Upsample<float>(
             UpsampleOptions().scale_factor(2, 2).mode(UpsampleMode::Bilinear).align_corners(true).name("up3")));
  g.node("up4", "upsample", {"x"}, {{"size", {6, 6}}, {"mode", "bilinear"}},
         dynconv::Upsample<float>(UpsampleOptions().size(6, 6).mode(UpsampleMode::Bilinear).name("up4")));
  g.output("up1", "up1").output("up2", "up2").output("up3", "up3").output("up4", "up4");
  return g;
}

/// Two inputs; a grouped, dilated, strided convolution of a non-square kernel with uneven
/// padding; an input that is also an output.
GraphSeed two_inputs_net() {
  GraphSeed g;
  g.input("a", 2, 4, 4).input("b", 2, 4, 4);
  g.node("sum", "add", {"a", "b"}, Json::object(), dynconv::Add<float>("sum"));
  conv(g, "conv", "sum", 2, 2, {1, 1}, {1, 1}, {0, 0, 0, 0}, {1, 1}, 1, true);
  conv(g, "conv2", "b", 2, 4, {3, 2}, {2, 1}, {1, 0, 0, 1}, {2, 1}, 2, false);
  g.output("y", "conv").output("z", "conv2").output("skip", "a");
  return g;
}

/// Test vectors: the graph run on a smooth input by dynconv itself, stored as the format's
/// "test" tensors.
std::pair<Json, std::vector<Named>> with_test_vectors(Json graph, std::vector<Named> tensors) {
  const SafeTensors file = SafeTensors::parse(graph_file(graph, tensors), "seed.safetensors");
  dynconv::GraphFile<float> g = dynconv::load_graph<float>(file);
  std::vector<dynconv::Tensor4<float>> xs;
  Json test = {{"inputs", Json::object()}, {"outputs", Json::object()}};
  for (const dynconv::GraphFileValue& v : g.inputs) {
    dynconv::Tensor4<float> x(v.shape[0], v.shape[1], v.shape[2], v.shape[3]);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.37f * static_cast<float>(i) + static_cast<float>(xs.size()));
    const std::string name = "dynconv.test." + v.name;
    tensors.push_back({name, v.shape, std::vector<double>(x.data(), x.data() + x.size())});
    test["inputs"][v.name] = name;
    xs.push_back(std::move(x));
  }
  dynconv::Session<float> s(g.graph, 1);
  if (xs.size() == 1) s.run(xs[0]);
  else s.run({{g.inputs[0].name.c_str(), &xs[0]}, {g.inputs[1].name.c_str(), &xs[1]}});
  for (const dynconv::GraphFileValue& v : g.outputs) {
    const dynconv::Tensor4<float>& y = s.output(v.name);
    const std::string name = "dynconv.test." + v.name;
    std::vector<Index> shape = v.shape;
    shape[0] = y.dimension(0);
    tensors.push_back({name, shape, std::vector<double>(y.data(), y.data() + y.size())});
    test["outputs"][v.name] = name;
  }
  graph["test"] = test;
  return {graph, tensors};
}

void fail_seed(const std::string& name, const std::string& why) {
  std::fprintf(stderr, "make_corpus: graph_load/%s: %s\n", name.c_str(), why.c_str());
  std::exit(1);
}

/// A valid seed: it must load.
void valid_graph(const std::string& name, const Bytes& bytes) {
  try {
    (void)dynconv::load_graph<float>(SafeTensors::parse(bytes, name));
  } catch (const dynconv::Error& e) {
    fail_seed(name, std::string("does not load: ") + e.what());
  }
  write(name, bytes);
}

/// A near miss: load_graph must refuse it with a FormatError holding `message`.
void bad_graph(const std::string& name, const Bytes& bytes, const std::string& message) {
  try {
    (void)dynconv::load_graph<float>(SafeTensors::parse(bytes, name));
  } catch (const dynconv::FormatError& e) {
    if (std::string(e.what()).find(message) == std::string::npos)
      fail_seed(name, std::string("refused, but the message lacks '") + message + "': " + e.what());
    write(name, bytes);
    return;
  } catch (const dynconv::Error& e) {
    fail_seed(name, std::string("refused with another error than a FormatError: ") + e.what());
  }
  fail_seed(name, "loads");
}

/// The first occurrence of `from` in the graph's text replaced by `to`.
std::string edited(const Json& graph, const std::string& from, const std::string& to) {
  std::string s = graph.dump();
  const std::size_t at = s.find(from);
  if (at == std::string::npos) fail_seed("edited", "no '" + from + "' in " + s);
  return s.replace(at, from.size(), to);
}

void graph_load() {
  const std::vector<std::pair<std::string, GraphSeed (*)()>> nets = {
      {"basic", basic_net},           {"dy", dy_net},           {"condconv", condconv_net},
      {"condconv_shared", condconv_shared_net}, {"odconv", odconv_net}, {"activations", activations_net},
      {"elementwise", elementwise_net}, {"pools", pools_net},   {"upsample", upsample_net},
      {"two_inputs", two_inputs_net}};
  for (const auto& [name, make] : nets) {
    const GraphSeed g = make();
    valid_graph("valid_" + name, graph_file(g.json(), g.tensors()));
  }

  const Json basic = basic_net().json(), dy = dy_net().json();
  const std::vector<Named> basic_t = basic_net().tensors(), dy_t = dy_net().tensors();
  valid_graph("valid_basic_f16", graph_file(basic, basic_t, DType::F16));
  valid_graph("valid_basic_bf16", graph_file(basic, basic_t, DType::BF16));
  valid_graph("valid_basic_f64", graph_file(basic, basic_t, DType::F64));
  valid_graph("valid_dy_f16", graph_file(dy, dy_t, DType::F16));
  {
    const auto [g, t] = with_test_vectors(basic, basic_t);
    valid_graph("valid_basic_test_vectors", graph_file(g, t));
    const auto [g2, t2] = with_test_vectors(two_inputs_net().json(), two_inputs_net().tensors());
    valid_graph("valid_two_inputs_test_vectors", graph_file(g2, t2));
  }
  {
    Json reversed = basic;
    std::reverse(reversed["nodes"].begin(), reversed["nodes"].end());
    valid_graph("valid_basic_nodes_reversed", graph_file(reversed, basic_t));
  }
  {
    Json sourced = dy;
    sourced["nodes"][0]["attrs"]["source"] = "kaijieshi7.Dynamic_conv2d";
    std::vector<Named> t = basic_t;
    t.push_back({"bn.num_batches_tracked", {}, {10}});
    valid_graph("valid_dy_source_attr", graph_file(sourced, dy_t));
    valid_graph("valid_basic_num_batches_tracked", graph_file(basic, t));
  }

  // Near misses: one rule broken each.
  bad_graph("bad_version_2", graph_file(edited(basic, "\"version\":1", "\"version\":2"), basic_t), "version 2");
  bad_graph("bad_unknown_op", graph_file(edited(basic, "\"op\":\"relu\"", "\"op\":\"mish\""), basic_t),
            "unknown op 'mish'");
  bad_graph("bad_cycle", graph_file(edited(basic, "\"inputs\":[\"x\"]", "\"inputs\":[\"relu\"]"), basic_t), "cycle");
  bad_graph("bad_unresolved_input", graph_file(edited(basic, "\"inputs\":[\"bn\"]", "\"inputs\":[\"bm\"]"), basic_t),
            "'bm'");
  bad_graph("bad_weight_shape_vs_attrs",
            graph_file(edited(basic, "\"kernel_size\":[3,3]", "\"kernel_size\":[5,5]"), basic_t), "conv.weight");
  bad_graph("bad_huge_channels",
            graph_file(edited(basic, "\"out_channels\":3", "\"out_channels\":2000000000"), basic_t), "conv.weight");
  {
    const std::string text = basic.dump();
    bad_graph("bad_truncated_json", graph_file(text.substr(0, text.size() / 2), basic_t), "not valid JSON");
  }
  bad_graph("bad_missing_attention_tensor", graph_file(dy, without(dy_t, "dy1.attention.fc2.bias")),
            "dy1.attention.fc2.bias");
  bad_graph("bad_missing_temperature", graph_file(dy, without(dy_t, "dy1.attention.temperature")),
            "dy1.attention.temperature");
  bad_graph("bad_tau_zero",
            graph_file(dy, changed(dy_t, "dy1.attention.temperature", [](Named& t) { t.values = {0}; })),
            "temperature");
  bad_graph("bad_odconv_tau_negative",
            graph_file(odconv_net().json(),
                       changed(odconv_net().tensors(), "od1.attention.temperature", [](Named& t) { t.values = {-1}; })),
            "temperature");
  {
    // The routing computes 3 experts, the CondConvs mix 2.
    Json g = condconv_shared_net().json();
    g["nodes"][0]["attrs"]["experts"] = 3;
    g["nodes"][0]["shape"] = {1, 3};
    std::vector<Named> t = changed(condconv_shared_net().tensors(), "route.weight", [](Named& w) {
      w.shape = {3, 4};
      w.values.resize(12, 0.25);
    });
    t = changed(t, "route.bias", [](Named& b) {
      b.shape = {3};
      b.values.resize(3, 0.0);
    });
    bad_graph("bad_shared_routing_width", graph_file(g, t), "cc1");
  }
  {
    std::vector<Named> t = basic_t;
    t.push_back({"stray.weight", {3}, {1, 2, 3}});
    bad_graph("bad_extra_tensor", graph_file(basic, t), "stray.weight");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus directory>\n", argv[0]);
    return 2;
  }
  const fs::path root(argv[1]);
  out_dir = root / "safetensors";
  fs::create_directories(out_dir);
  valid_safetensors();
  bad_safetensors();
  out_dir = root / "model_load";
  fs::create_directories(out_dir);
  model_load();
  out_dir = root / "graph_load";
  fs::create_directories(out_dir);
  graph_load();
  std::printf("wrote %d files under %s\n", written, root.string().c_str());
  return 0;
}

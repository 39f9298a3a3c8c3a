// Writes the seed corpora of the two fuzz targets (tests/fuzz/corpus/, committed):
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
//
//   usage: fuzz_make_corpus <corpus directory>     (e.g. tests/fuzz/corpus)
// Deterministic: running it again rewrites the same bytes. Built on demand
// (cmake --build <build> --target fuzz_make_corpus), or by default with DYNCONV_FUZZ=ON.
#include "tiny_model.hpp"

#include <dynconv/safetensors.hpp>

#include <Eigen/Core>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
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

/// A file of `tensors`, each stored as `dtype` (floating), with the tiny model's metadata.
Bytes file_of(const std::vector<Named>& tensors, DType dtype = DType::F32) {
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
  w.set_metadata("model", "tiny_dynamic");
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
  std::printf("wrote %d files under %s\n", written, root.string().c_str());
  return 0;
}

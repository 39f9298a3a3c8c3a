// Tests for dynconv/safetensors.hpp: round trips, known F16/BF16 bit patterns, one crafted bad
// file per reader rule, and an independent check of the writer's output.
#include "dynconv/safetensors.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using dynconv::DType;
using dynconv::FormatError;
using dynconv::Index;
using dynconv::IoError;
using dynconv::OptionsError;
using dynconv::SafeTensors;
using dynconv::SafeTensorsWriter;
using dynconv::ShapeError;
using dynconv::Tensor;
using Bytes = std::vector<std::uint8_t>;

// ---- helpers, written independently of the code under test ----------------------------------

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

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::uint16_t read_u16_le(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}

float float_from_bits(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/// Passes if f throws exactly E (or a subclass) with needle in its message.
template <typename E, typename F>
::testing::AssertionResult throws_with(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const E& e) {
    if (std::string(e.what()).find(needle) != std::string::npos)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "message \"" << e.what() << "\" lacks \"" << needle << "\"";
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "wrong exception type, message: " << e.what();
  }
  return ::testing::AssertionFailure() << "no exception thrown";
}

/// Passes if parsing bytes throws a FormatError that starts with the source name and contains
/// needle.
::testing::AssertionResult rejects(const Bytes& bytes, const std::string& needle) {
  const auto with_source = throws_with<FormatError>(
      [&] { SafeTensors::parse(bytes, "bad.safetensors"); }, "bad.safetensors: ");
  if (!with_source) return with_source;
  return throws_with<FormatError>([&] { SafeTensors::parse(bytes, "bad.safetensors"); }, needle);
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "dynconv_test_" + name;
}

/// n '[' then n ']'.
std::string nested_arrays(std::size_t n) { return std::string(n, '[') + std::string(n, ']'); }

/// {"a":{"a":...{"a":1}...}} with n objects.
std::string nested_objects(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += "{\"a\":";
  return s + "1" + std::string(n, '}');
}

/// A tensor entry's JSON text.
std::string entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return R"({"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}";
}

// ---- dtypes ---------------------------------------------------------------------------------

TEST(SafeTensorsDType, NamesSizesAndMapping) {
  EXPECT_STREQ(dynconv::dtype_name(DType::F16), "F16");
  EXPECT_STREQ(dynconv::dtype_name(DType::BF16), "BF16");
  EXPECT_STREQ(dynconv::dtype_name(DType::F32), "F32");
  EXPECT_STREQ(dynconv::dtype_name(DType::F64), "F64");
  EXPECT_STREQ(dynconv::dtype_name(DType::I64), "I64");
  EXPECT_EQ(dynconv::dtype_size(DType::F16), 2u);
  EXPECT_EQ(dynconv::dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dynconv::dtype_size(DType::F32), 4u);
  EXPECT_EQ(dynconv::dtype_size(DType::F64), 8u);
  EXPECT_EQ(dynconv::dtype_size(DType::I64), 8u);
  static_assert(dynconv::dtype_of<float>() == DType::F32);
  static_assert(dynconv::dtype_of<double>() == DType::F64);
  static_assert(dynconv::dtype_of<std::int64_t>() == DType::I64);
  static_assert(dynconv::dtype_of<Eigen::half>() == DType::F16);
  static_assert(dynconv::dtype_of<Eigen::bfloat16>() == DType::BF16);
}

// ---- round trips ----------------------------------------------------------------------------

TEST(SafeTensorsRoundTrip, F32AllRanksThroughAFile) {
  Tensor<float, 0> r0;
  r0() = 3.5f;
  Tensor<float, 1> r1(3);
  r1.setValues({1.f, -2.f, 0.25f});
  Tensor<float, 2> r2(2, 3);
  r2.setValues({{1.f, 2.f, 3.f}, {4.f, 5.f, 6.f}});
  Tensor<float, 4> r4(2, 3, 4, 5);
  for (Index i = 0; i < r4.size(); ++i) r4.data()[i] = 0.5f * static_cast<float>(i) - 7.f;
  Tensor<float, 5> r5(1, 2, 1, 3, 2);
  for (Index i = 0; i < r5.size(); ++i) r5.data()[i] = -1.f / static_cast<float>(i + 1);

  SafeTensorsWriter w;
  w.add("r0", r0);
  w.add("r1", r1);
  w.add("r2", r2);
  w.add("r4", r4);
  w.add("r5", r5);
  const std::string path = temp_path("f32.safetensors");
  w.save(path);
  const SafeTensors st = SafeTensors::load(path);
  std::remove(path.c_str());

  EXPECT_EQ(st.names(), (std::vector<std::string>{"r0", "r1", "r2", "r4", "r5"}));
  EXPECT_TRUE(st.entry("r0").shape.empty());
  EXPECT_EQ((st.get<float, 0>("r0")()), 3.5f);
  const auto g1 = st.get<float, 1>("r1");
  EXPECT_EQ(g1(0), 1.f);
  EXPECT_EQ(g1(1), -2.f);
  EXPECT_EQ(g1(2), 0.25f);
  const auto g2 = st.get<float, 2>("r2");
  ASSERT_EQ(g2.dimension(0), 2);
  ASSERT_EQ(g2.dimension(1), 3);
  EXPECT_EQ(g2(1, 2), 6.f);
  EXPECT_EQ(g2(0, 1), 2.f);
  const auto g4 = st.get<float, 4>("r4");
  EXPECT_EQ(st.entry("r4").shape, (std::vector<Index>{2, 3, 4, 5}));
  EXPECT_EQ(g4(1, 2, 3, 4), 0.5f * static_cast<float>(119) - 7.f);  // last element, flat index 119
  EXPECT_EQ(g4(0, 1, 0, 2), 0.5f * static_cast<float>(22) - 7.f);   // 1*20 + 0*5 + 2
  const auto g5 = st.get<float, 5>("r5");
  EXPECT_EQ(st.entry("r5").shape, (std::vector<Index>{1, 2, 1, 3, 2}));
  for (Index i = 0; i < r5.size(); ++i) EXPECT_EQ(g5.data()[i], -1.f / static_cast<float>(i + 1));
}

TEST(SafeTensorsRoundTrip, F64KeepsDoublePrecision) {
  Tensor<double, 1> t(4);
  t.setValues({0.1, 1e300, -std::numeric_limits<double>::denorm_min(), 1.0 + 0x1p-52});
  SafeTensorsWriter w;
  w.add("d", t);
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  EXPECT_EQ(st.entry("d").dtype, DType::F64);
  const auto g = st.get<double, 1>("d");
  for (Index i = 0; i < 4; ++i) EXPECT_EQ(g(i), t(i));
}

TEST(SafeTensorsRoundTrip, I64KeepsAllBits) {
  Tensor<std::int64_t, 2> t(2, 2);
  t.setValues({{std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::min()},
               {(std::int64_t{1} << 53) + 1, -7}});
  SafeTensorsWriter w;
  w.add("i", t);
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  EXPECT_EQ(st.entry("i").dtype, DType::I64);
  const auto g = st.get<std::int64_t, 2>("i");
  EXPECT_EQ(g(0, 0), std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(g(0, 1), std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(g(1, 0), (std::int64_t{1} << 53) + 1);
  EXPECT_EQ(g(1, 1), -7);
  // Stored little-endian: -7 is F9 FF FF FF FF FF FF FF.
  const std::uint8_t* raw = st.raw_data("i");
  EXPECT_EQ(read_u64_le(raw + 24), 0xFFFFFFFFFFFFFFF9ull);
}

TEST(SafeTensorsRoundTrip, F16WritesKnownBitPatterns) {
  Tensor<float, 1> t(8);
  t.setValues({1.0f, -2.5f, 65504.f, 0.1f, 0x1p-24f, 65520.f, 0.0f, -0.0f});
  SafeTensorsWriter w;
  w.add("h", t, DType::F16);
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  EXPECT_EQ(st.entry("h").dtype, DType::F16);
  EXPECT_EQ(st.entry("h").end - st.entry("h").begin, 16u);
  const std::uint8_t* raw = st.raw_data("h");
  const std::uint16_t expected[] = {
      0x3C00,  // 1.0
      0xC100,  // -2.5 = -1.25 * 2^1
      0x7BFF,  // 65504, the largest finite half
      0x2E66,  // 0.1 rounds to 0.0999755859375
      0x0001,  // 2^-24, the smallest subnormal
      0x7C00,  // 65520 is halfway to 65536 and rounds (to even) to +inf
      0x0000, 0x8000};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(read_u16_le(raw + 2 * i), expected[i]) << "element " << i;

  const auto back = st.get_flat<float>("h");
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], -2.5f);
  EXPECT_EQ(back[2], 65504.f);
  EXPECT_EQ(back[3], 0.0999755859375f);
  EXPECT_EQ(back[4], 5.9604644775390625e-08f);
  EXPECT_EQ(back[5], std::numeric_limits<float>::infinity());
  EXPECT_EQ(back[6], 0.0f);
  EXPECT_TRUE(std::signbit(back[7]));
}

TEST(SafeTensorsRoundTrip, F16ReadsKnownBitPatterns) {
  const std::uint16_t bits[] = {0x3C00, 0xC100, 0x7BFF, 0x3555, 0x0400, 0xFC00};
  Bytes raw;
  for (std::uint16_t b : bits) {  // little-endian
    raw.push_back(static_cast<std::uint8_t>(b & 0xFF));
    raw.push_back(static_cast<std::uint8_t>(b >> 8));
  }
  SafeTensorsWriter w;
  w.add_raw("h", DType::F16, {2, 3}, raw.data(), raw.size());
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  const auto g = st.get<double, 2>("h");
  EXPECT_EQ(g(0, 0), 1.0);
  EXPECT_EQ(g(0, 1), -2.5);
  EXPECT_EQ(g(0, 2), 65504.0);
  EXPECT_EQ(g(1, 0), 0.333251953125);   // 2^-2 * (1 + 341/1024)
  EXPECT_EQ(g(1, 1), 6.103515625e-05);  // 2^-14, the smallest normal
  EXPECT_EQ(g(1, 2), -std::numeric_limits<double>::infinity());
}

TEST(SafeTensorsRoundTrip, BF16RoundsToNearestEven) {
  // Inputs as float bit patterns; BF16 keeps the top 16 bits, rounding the low 16 to nearest even.
  const std::uint32_t in[] = {
      0x3F800000,  // 1.0                            -> 0x3F80
      0xC0200000,  // -2.5                           -> 0xC020
      0x40490FDB,  // pi, low half 0x0FDB < 0x8000    -> 0x4049 = 3.140625 (rounded down)
      0x3F80C000,  // 1 + 2^-8 + 2^-9, low 0xC000     -> 0x3F81 = 1.0078125 (rounded up)
      0x3F808000,  // 1 + 2^-8, a tie, 0x3F80 even    -> 0x3F80 = 1.0
      0x3F818000,  // 1 + 3*2^-8, a tie, 0x3F81 odd   -> 0x3F82 = 1.015625
      0x477FE000,  // 65504, low 0xE000               -> 0x4780 = 65536
  };
  const std::uint16_t out[] = {0x3F80, 0xC020, 0x4049, 0x3F81, 0x3F80, 0x3F82, 0x4780};
  const float values[] = {1.0f, -2.5f, 3.140625f, 1.0078125f, 1.0f, 1.015625f, 65536.f};
  Tensor<float, 1> t(7);
  for (int i = 0; i < 7; ++i) t(i) = float_from_bits(in[i]);
  EXPECT_EQ(t(2), 3.14159274101257324f);  // the bit pattern is float pi

  SafeTensorsWriter w;
  w.add("b", t, DType::BF16);
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  EXPECT_EQ(st.entry("b").dtype, DType::BF16);
  const std::uint8_t* raw = st.raw_data("b");
  const auto back = st.get_flat<float>("b");
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(read_u16_le(raw + 2 * i), out[i]) << "element " << i;
    EXPECT_EQ(back[static_cast<std::size_t>(i)], values[i]) << "element " << i;
  }
}

TEST(SafeTensorsRoundTrip, HalfAndDoubleSourceTensors) {
  Tensor<Eigen::half, 1> h(2);
  h(0) = Eigen::half(1.0f);
  h(1) = Eigen::half(-2.5f);
  Tensor<double, 1> d(2);
  d.setValues({0.1, 1e300});
  SafeTensorsWriter w;
  w.add("h", h);                 // stored F16 as is
  w.add("h32", h, DType::F32);   // widened
  w.add("d32", d, DType::F32);   // narrowed: 0.1 -> 0.1f, 1e300 -> inf
  w.add("dbf", d, DType::BF16);  // through float: 0.1f = 0x3DCCCCCD -> 0x3DCD
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  EXPECT_EQ(read_u16_le(st.raw_data("h")), 0x3C00);
  EXPECT_EQ(read_u16_le(st.raw_data("h") + 2), 0xC100);
  EXPECT_EQ(st.get_flat<float>("h32"), (std::vector<float>{1.0f, -2.5f}));
  EXPECT_EQ(st.get_flat<float>("d32"),
            (std::vector<float>{0.1f, std::numeric_limits<float>::infinity()}));
  EXPECT_EQ(read_u16_le(st.raw_data("dbf")), 0x3DCD);
}

TEST(SafeTensorsRoundTrip, ZeroSizeDimensions) {
  Tensor<float, 2> a(0, 3);
  Tensor<double, 4> b(2, 0, 3, 1);
  Tensor<float, 1> c(2);
  c.setValues({1.f, 2.f});
  SafeTensorsWriter w;
  w.add("a", a);
  w.add("b", b);
  w.add("c", c);
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  EXPECT_EQ(st.entry("a").shape, (std::vector<Index>{0, 3}));
  EXPECT_EQ(st.entry("a").begin, st.entry("a").end);
  EXPECT_EQ(st.entry("b").shape, (std::vector<Index>{2, 0, 3, 1}));
  const auto ga = st.get<float, 2>("a");
  EXPECT_EQ(ga.dimension(0), 0);
  EXPECT_EQ(ga.dimension(1), 3);
  EXPECT_EQ((st.get<double, 4>("b").size()), 0);
  EXPECT_TRUE(st.get_flat<std::int64_t>("b").empty());
  EXPECT_EQ(st.get_flat<float>("c"), (std::vector<float>{1.f, 2.f}));
}

TEST(SafeTensorsRoundTrip, Metadata) {
  SafeTensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("empty", "");
  w.set_metadata("unicode \xE6\x9D\x83", "caf\xC3\xA9 \"quoted\"\n");
  Tensor<float, 1> t(1);
  t(0) = 1.f;
  w.add("t", t);
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  const std::map<std::string, std::string> expected = {
      {"format", "pt"}, {"empty", ""}, {"unicode \xE6\x9D\x83", "caf\xC3\xA9 \"quoted\"\n"}};
  EXPECT_EQ(st.metadata(), expected);
  EXPECT_EQ(st.names(), std::vector<std::string>{"t"});
  EXPECT_FALSE(st.contains("__metadata__"));
}

TEST(SafeTensorsRoundTrip, EmptyWriterGivesEmptyFile) {
  const Bytes bytes = SafeTensorsWriter().to_bytes();
  ASSERT_EQ(bytes.size(), 16u);
  EXPECT_EQ(read_u64_le(bytes.data()), 8u);
  EXPECT_EQ(std::string(bytes.begin() + 8, bytes.end()), "{}      ");
  const SafeTensors st = SafeTensors::parse(bytes);
  EXPECT_TRUE(st.names().empty());
  EXPECT_TRUE(st.metadata().empty());
}

// ---- reading ---------------------------------------------------------------------------------

TEST(SafeTensorsRead, HandWrittenFileInAnyHeaderOrder) {
  // Not padded, entries not in offset order, a scalar, a zero-size tensor, UTF-8 names.
  const std::string header = "{\"b\":" + entry("F32", "[2]", "[8,16]") +
                             ",\"\xE6\x9D\x83\":" + entry("I64", "[]", "[0,8]") +
                             ",\"z\":" + entry("F64", "[0,5]", "[16,16]") + "}  ";
  Bytes data = {42, 0, 0,    0,    0, 0, 0, 0,  // int64 42
                0,  0, 0x80, 0x3F,              // float 1.0
                0,  0, 0x20, 0xC0};             // float -2.5
  const SafeTensors st = SafeTensors::parse(file(header, data), "hand.safetensors");
  EXPECT_EQ(st.names(), (std::vector<std::string>{"b", "z", "\xE6\x9D\x83"}));
  EXPECT_EQ((st.get<std::int64_t, 0>("\xE6\x9D\x83")()), 42);
  EXPECT_EQ((st.get<double, 0>("\xE6\x9D\x83")()), 42.0);
  EXPECT_EQ(st.get_flat<float>("b"), (std::vector<float>{1.0f, -2.5f}));
  EXPECT_EQ((st.get<double, 1>("b")(1)), -2.5);
  EXPECT_EQ(st.entry("z").shape, (std::vector<Index>{0, 5}));
  EXPECT_TRUE(st.get_flat<double>("z").empty());
}

TEST(SafeTensorsRead, ConvertsBetweenDtypes) {
  Tensor<std::int64_t, 1> i(2);
  i.setValues({-3, (std::int64_t{1} << 40)});
  Tensor<float, 1> whole(3);
  whole.setValues({-4.0f, 0.0f, 1024.0f});
  SafeTensorsWriter w;
  w.add("i", i);
  w.add("whole", whole, DType::F16);
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  EXPECT_EQ(st.get_flat<float>("i"), (std::vector<float>{-3.0f, 1099511627776.0f}));
  EXPECT_EQ(st.get_flat<double>("i"), (std::vector<double>{-3.0, 1099511627776.0}));
  EXPECT_EQ(st.get_flat<std::int64_t>("whole"), (std::vector<std::int64_t>{-4, 0, 1024}));
}

TEST(SafeTensorsRead, FloatToInt64NeedsAnIntegerInRange) {
  Tensor<float, 1> frac(2);
  frac.setValues({1.0f, 2.5f});
  Tensor<double, 1> big(1);
  big(0) = 1e19;
  Tensor<float, 1> nan(1);
  nan(0) = std::numeric_limits<float>::quiet_NaN();
  SafeTensorsWriter w;
  w.add("frac", frac);
  w.add("big", big);
  w.add("nan", nan, DType::BF16);
  const SafeTensors st = SafeTensors::parse(w.to_bytes(), "conv.safetensors");
  EXPECT_TRUE(throws_with<FormatError>([&] { st.get_flat<std::int64_t>("frac"); },
                                       "conv.safetensors: tensor 'frac' (F32) element 1 = 2.5 is "
                                       "not an integer in the int64 range"));
  EXPECT_TRUE(
      throws_with<FormatError>([&] { st.get<std::int64_t, 1>("big"); }, "element 0 = 1e+19"));
  EXPECT_TRUE(throws_with<FormatError>([&] { st.get<std::int64_t, 1>("nan"); },
                                       "tensor 'nan' (BF16) element 0"));
}

TEST(SafeTensorsRead, RawDataPointsAtLittleEndianBytes) {
  Tensor<float, 1> a(1), b(1);
  a(0) = 1.0f;
  b(0) = -2.5f;
  SafeTensorsWriter w;
  w.add("a", a);
  w.add("b", b);
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  const std::uint8_t* pa = st.raw_data("a");
  const std::uint8_t* pb = st.raw_data("b");
  EXPECT_EQ(pb - pa, 4);
  EXPECT_EQ((Bytes{pa[0], pa[1], pa[2], pa[3]}), (Bytes{0x00, 0x00, 0x80, 0x3F}));
  EXPECT_EQ((Bytes{pb[0], pb[1], pb[2], pb[3]}), (Bytes{0x00, 0x00, 0x20, 0xC0}));
}

TEST(SafeTensorsRead, MissingFileIsIoError) {
  const std::string path = temp_path("no_such_dir/missing.safetensors");
  EXPECT_TRUE(
      throws_with<IoError>([&] { SafeTensors::load(path); }, path + ": cannot open for reading"));
}

TEST(SafeTensorsRead, DirectoryIsIoError) {
  EXPECT_TRUE(throws_with<IoError>([&] { SafeTensors::load("/"); }, "/: cannot "));
}

TEST(SafeTensorsRead, LoadPrefixesMessagesWithThePath) {
  const std::string path = temp_path("short.safetensors");
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fputs("abc", f);
  std::fclose(f);
  EXPECT_TRUE(
      throws_with<FormatError>([&] { SafeTensors::load(path); }, path + ": file has 3 bytes"));
  std::remove(path.c_str());
}

TEST(SafeTensorsRead, WrongRankIsShapeError) {
  Tensor<float, 4> t(2, 3, 4, 5);
  t.setZero();
  SafeTensorsWriter w;
  w.add("conv.weight", t);
  const SafeTensors st = SafeTensors::parse(w.to_bytes(), "weights.safetensors");
  EXPECT_TRUE(throws_with<ShapeError>([&] { st.get<float, 2>("conv.weight"); },
                                      "weights.safetensors: tensor 'conv.weight' has shape [2, 3, "
                                      "4, 5] (rank 4) but rank 2 was requested"));
  EXPECT_TRUE(throws_with<ShapeError>([&] { st.get<double, 0>("conv.weight"); },
                                      "but rank 0 was requested"));
}

TEST(SafeTensorsRead, UnknownNameIsFormatError) {
  const SafeTensors st = SafeTensors::parse(SafeTensorsWriter().to_bytes(), "w.safetensors");
  const std::string msg = "w.safetensors: no tensor named 'nope'";
  EXPECT_FALSE(st.contains("nope"));
  EXPECT_TRUE(throws_with<FormatError>([&] { st.entry("nope"); }, msg));
  EXPECT_TRUE(throws_with<FormatError>([&] { st.get<float, 1>("nope"); }, msg));
  EXPECT_TRUE(throws_with<FormatError>([&] { st.get_flat<double>("nope"); }, msg));
  EXPECT_TRUE(throws_with<FormatError>([&] { st.raw_data("nope"); }, msg));
}

// ---- the reader's rules: one crafted bad file (or several) per rule ---------------------------

const std::string kGood = entry("F32", "[2]", "[0,8]");  // needs 8 data bytes

TEST(SafeTensorsRules, ValidMinimalFilesAreAccepted) {
  EXPECT_NO_THROW(SafeTensors::parse(file("{}")));
  EXPECT_NO_THROW(SafeTensors::parse(file("{}  \n\t ")));  // trailing whitespace is allowed
  EXPECT_NO_THROW(SafeTensors::parse(file("{\"a\":" + kGood + "}", zeros(8))));
  EXPECT_NO_THROW(SafeTensors::parse(file(R"({"__metadata__":{}})")));
}

TEST(SafeTensorsRules, FileShorterThan8Bytes) {
  EXPECT_TRUE(rejects({}, "file has 0 bytes, fewer than the 8-byte header length"));
  EXPECT_TRUE(
      rejects({2, 0, 0, 0, 0, 0, 0}, "file has 7 bytes, fewer than the 8-byte header length"));
}

TEST(SafeTensorsRules, HeaderLongerThan100MB) {
  EXPECT_TRUE(rejects(file_with_length(100'000'001, "{}"),
                      "header length 100000001 exceeds the limit of 100000000 bytes"));
  EXPECT_TRUE(rejects(file_with_length(std::numeric_limits<std::uint64_t>::max(), "{}"),
                      "header length 18446744073709551615 exceeds"));
  // Exactly 100 MB is allowed by this rule (and then fails the next one).
  EXPECT_TRUE(rejects(file_with_length(100'000'000, "{}"),
                      "header length 100000000 needs 100000008 bytes but the file has 10"));
}

TEST(SafeTensorsRules, HeaderPastTheEndOfTheFile) {
  EXPECT_TRUE(rejects(file_with_length(100, "{}"),
                      "header length 100 needs 108 bytes but the file has 10"));
  EXPECT_TRUE(
      rejects(file_with_length(3, "{}"), "header length 3 needs 11 bytes but the file has 10"));
}

TEST(SafeTensorsRules, HeaderNotValidJson) {
  EXPECT_TRUE(rejects(file(R"({"a": )"), "header is not valid JSON"));
  EXPECT_TRUE(rejects(file(""), "header is not valid JSON"));
  EXPECT_TRUE(rejects(file("{} x"), "header is not valid JSON"));
  EXPECT_TRUE(rejects(file(std::string("{}\0", 3)),
                      "header is not valid JSON: NUL byte at header offset 2"));  // NUL padding
  EXPECT_TRUE(rejects(file(std::string("{\"a\":\"\0\"}", 8)),
                      "header is not valid JSON: NUL byte at header offset 6"));
  EXPECT_TRUE(rejects(file("{'a': 1}"), "header is not valid JSON"));
}

TEST(SafeTensorsRules, HeaderNotAJsonObject) {
  EXPECT_TRUE(rejects(file("[1, 2]"), "header must be a JSON object, got array"));
  EXPECT_TRUE(rejects(file("\"{}\""), "header must be a JSON object, got string"));
  EXPECT_TRUE(rejects(file("12345678"), "header must be a JSON object, got number"));
}

TEST(SafeTensorsRules, HeaderNotStartingWithBrace) {
  EXPECT_TRUE(rejects(file(" {}"), "header must start with '{' (got byte 0x20)"));
  EXPECT_TRUE(rejects(file("\n{}"), "header must start with '{' (got byte 0xa)"));
}

TEST(SafeTensorsRules, HeaderNotValidUtf8) {
  EXPECT_TRUE(rejects(file("{\"a\xFF\":" + kGood + "}", zeros(8)),
                      "header is not valid UTF-8 (byte 0xff at header offset 3)"));
  EXPECT_TRUE(rejects(file("{\"\xC0\xAF\":1}"),
                      "not valid UTF-8 (byte 0xc0 at header offset 2)"));  // overlong '/'
  EXPECT_TRUE(rejects(file("{\"\xED\xA0\x80\":1}"),
                      "not valid UTF-8 (byte 0xed at header offset 2)"));  // surrogate
  EXPECT_TRUE(
      rejects(file("{\"\xF4\x90\x80\x80\":1}"), "not valid UTF-8 (byte 0xf4"));  // > U+10FFFF
  EXPECT_TRUE(rejects(file("{\"\x80\":1}"), "not valid UTF-8 (byte 0x80"));  // stray continuation
  EXPECT_TRUE(
      rejects(file("{}\xE2\x82"), "not valid UTF-8 (byte 0xe2 at header offset 2)"));  // cut short
  EXPECT_TRUE(
      rejects(file("{\"__metadata__\":{\"k\":\"\xE9t\xE9\"}}"), "not valid UTF-8"));  // Latin-1
}

TEST(SafeTensorsRules, DuplicateKeys) {
  EXPECT_TRUE(rejects(file("{\"a\":" + kGood + ",\"a\":" + kGood + "}", zeros(8)),
                      "header has duplicate key 'a'"));
  EXPECT_TRUE(rejects(
      file(R"({"a":{"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,4]}})", zeros(4)),
      "header has duplicate key 'dtype'"));
  EXPECT_TRUE(
      rejects(file(R"({"__metadata__":{"k":"1","k":"2"}})"), "header has duplicate key 'k'"));
  EXPECT_TRUE(rejects(file(R"({"__metadata__":{},"__metadata__":{}})"),
                      "header has duplicate key '__metadata__'"));
  // The same key in different objects is fine.
  EXPECT_NO_THROW(SafeTensors::parse(file(
      "{\"a\":" + entry("F32", "[1]", "[0,4]") + ",\"b\":" + entry("F32", "[1]", "[4,8]") + "}",
      zeros(8))));
}

// A crafted header nested 100,000 levels deep used to overflow the stack: the error message
// quoted the value with nlohmann's recursive dump(). The reader now stops at the first array or
// object that starts at depth 3 (header object 0 > entry 1 > shape/data_offsets 2 > number 3).
TEST(SafeTensorsRules, DeeplyNestedHeadersFailCleanly) {
  const std::string rule = "header is nested too deeply: ";
  const std::string array3 = rule + "an array starts at depth 3";
  const std::string object3 = rule + "an object starts at depth 3";
  const std::size_t deep = 100'000;
  // In a tensor entry.
  EXPECT_TRUE(rejects(file("{\"w\":" + nested_arrays(deep) + "}"), array3));
  EXPECT_TRUE(rejects(file("{\"w\":" + nested_objects(deep) + "}"), object3));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", nested_arrays(deep), "[0,4]") + "}", zeros(4)),
                      array3));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[1]", nested_arrays(deep)) + "}", zeros(4)),
                      array3));
  // In __metadata__, as its value and as one of its values.
  EXPECT_TRUE(rejects(file("{\"__metadata__\":" + nested_arrays(deep) + "}"), array3));
  EXPECT_TRUE(rejects(file("{\"__metadata__\":" + nested_objects(deep) + "}"), object3));
  EXPECT_TRUE(rejects(file("{\"__metadata__\":{\"k\":" + nested_arrays(deep) + "}}"), array3));
  // At the top level.
  EXPECT_TRUE(rejects(file(nested_arrays(deep)), array3));
  EXPECT_TRUE(rejects(file(nested_objects(deep)), object3));
  // Never closed: the depth rule fires before the parser reaches the end of the input.
  EXPECT_TRUE(rejects(file("{\"w\":" + std::string(deep, '[')), array3));
  // One level too deep is enough, and the message states the rule.
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[[2]]", "[0,8]") + "}", zeros(8)),
                      array3 + " (the header object is depth 0), but a valid header has arrays "
                               "and objects only at depths 0-2 (header object > tensor entry > "
                               "shape or data_offsets array > number)"));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[1]", "[0,{}]") + "}", zeros(4)), object3));
  EXPECT_TRUE(rejects(file(R"({"__metadata__":{"k":[["v"]]}})"), array3));
}

TEST(SafeTensorsRules, DeepestValidNestingIsAccepted) {
  // Every level a valid header uses: the header object (depth 0), __metadata__ and a tensor
  // entry (1), a metadata string, the dtype, shape and data_offsets (2), dimensions and
  // offsets (3).
  const SafeTensors st = SafeTensors::parse(
      file(R"({"__metadata__":{"k":"v"},"w":)" + entry("F32", "[1,2]", "[0,8]") + "}", zeros(8)));
  EXPECT_EQ(st.metadata().at("k"), "v");
  EXPECT_EQ(st.entry("w").shape, (std::vector<Index>{1, 2}));
  // Wrong but shallow values at depth 2 still get their own, more precise message.
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "{}", "[0,4]") + "}", zeros(4)),
                      "tensor 'w' has shape {}, not an array of non-negative integers"));
  EXPECT_TRUE(rejects(file(R"({"__metadata__":{"a":"x","b":[]}})"),
                      "__metadata__ value of 'b' must be a string, got []"));
}

// Error messages quote JSON values through json_brief, which must stay bounded on any value,
// even one the reader's depth rule would never let through.
TEST(SafeTensorsRules, QuotedValuesAreBriefAndSafe) {
  using dynconv::detail::json_brief;
  const auto deep = nlohmann::json::parse(nested_arrays(100'000));  // nlohmann parses iteratively
  EXPECT_EQ(json_brief(deep), "[[[[[[[[[...]]]]]]]]]");
  EXPECT_EQ(json_brief(nlohmann::json::parse(nested_objects(100'000))),
            R"({"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":{...}}}}}}}}})");
  // Shallow values read as dump() writes them, cut to 57 characters and "..." past 60.
  for (const char* text : {"5", "null", "\"F8\"", "[]", "{}", "[1,2.5,\"x\"]", R"({"b":[1],"a":{}})",
                           "[[[[[[[[1]]]]]]]]"}) {
    const auto j = nlohmann::json::parse(text);
    EXPECT_EQ(json_brief(j), j.dump()) << text;
  }
  std::vector<int> many(1000, 7);
  const nlohmann::json long_array = many;
  EXPECT_EQ(json_brief(long_array), long_array.dump().substr(0, 57) + "...");
}

TEST(SafeTensorsRules, EntryNotAnObject) {
  EXPECT_TRUE(rejects(file(R"({"w":5})"), "tensor 'w' must be an object, got 5"));
  EXPECT_TRUE(rejects(file(R"({"w":["F32",[1],[0,4]]})", zeros(4)),
                      "tensor 'w' must be an object, got [\"F32\""));
}

TEST(SafeTensorsRules, EntryLacksAField) {
  EXPECT_TRUE(rejects(file(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", zeros(4)),
                      "tensor 'w' lacks the field 'dtype'"));
  EXPECT_TRUE(rejects(file(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", zeros(4)),
                      "tensor 'w' lacks the field 'shape'"));
  EXPECT_TRUE(rejects(file(R"({"w":{"dtype":"F32","shape":[1]}})", zeros(4)),
                      "tensor 'w' lacks the field 'data_offsets'"));
}

TEST(SafeTensorsRules, EntryHasAnExtraField) {
  EXPECT_TRUE(rejects(
      file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"offset":0}})", zeros(4)),
      "tensor 'w' has unexpected field 'offset'"));
}

TEST(SafeTensorsRules, UnknownDtype) {
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F8", "[1]", "[0,1]") + "}", zeros(1)),
                      "tensor 'w' has unsupported dtype \"F8\""));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("f32", "[1]", "[0,4]") + "}", zeros(4)),
                      "unsupported dtype \"f32\""));
  // Valid in the reference, but not one of dynconv's dtypes.
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("I32", "[1]", "[0,4]") + "}", zeros(4)),
                      "unsupported dtype \"I32\" (supported: F16, BF16, F32, F64, I64)"));
  EXPECT_TRUE(rejects(file(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", zeros(4)),
                      "unsupported dtype 4"));
}

TEST(SafeTensorsRules, ShapeNotAnArrayOfNonNegativeIntegers) {
  const std::string tail = "not an array of non-negative integers";
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "4", "[0,16]") + "}", zeros(16)),
                      "tensor 'w' has shape 4, " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[-1]", "[0,0]") + "}"),
                      "tensor 'w' has shape [-1], " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[2.0]", "[0,8]") + "}", zeros(8)),
                      "has shape [2.0], " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[\"2\"]", "[0,8]") + "}", zeros(8)),
                      "has shape [\"2\"], " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[null]", "[0,4]") + "}", zeros(4)),
                      "has shape [null], " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "{}", "[0,4]") + "}", zeros(4)),
                      "has shape {}, " + tail));
  // An integer too large for nlohmann's uint64 becomes a float, and a dimension must fit an Index.
  EXPECT_TRUE(
      rejects(file("{\"w\":" + entry("F32", "[18446744073709551616]", "[0,0]") + "}"), tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[9223372036854775808,0]", "[0,0]") + "}"),
                      "tensor 'w' has dimension 9223372036854775808 in shape "
                      "[9223372036854775808,0], too large for an index"));
}

TEST(SafeTensorsRules, DataOffsetsNotTwoOrderedNonNegativeIntegers) {
  const std::string tail = "not two non-negative integers [begin, end] with begin <= end";
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[1]", "[4]") + "}", zeros(4)),
                      "tensor 'w' has data_offsets [4], " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[1]", "[0,4,8]") + "}", zeros(4)),
                      "data_offsets [0,4,8], " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[1]", "[-4,0]") + "}", zeros(4)),
                      "data_offsets [-4,0], " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[1]", "[0,4.0]") + "}", zeros(4)),
                      "data_offsets [0,4.0], " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[1]", "[8,4]") + "}", zeros(8)),
                      "data_offsets [8,4], " + tail));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[1]", "\"0-4\"") + "}", zeros(4)),
                      "data_offsets \"0-4\", " + tail));
}

TEST(SafeTensorsRules, MetadataNotAnObjectOfStrings) {
  EXPECT_TRUE(
      rejects(file(R"({"__metadata__":5})"), "__metadata__ must be an object of strings, got 5"));
  EXPECT_TRUE(rejects(file(R"({"__metadata__":null})"),
                      "__metadata__ must be an object of strings, got null"));
  EXPECT_TRUE(rejects(file(R"({"__metadata__":["a"]})"),
                      "__metadata__ must be an object of strings, got [\"a\"]"));
  EXPECT_TRUE(rejects(file(R"({"__metadata__":{"epoch":3}})"),
                      "__metadata__ value of 'epoch' must be a string, got 3"));
  EXPECT_TRUE(rejects(file(R"({"__metadata__":{"a":"x","b":{}}})"),
                      "__metadata__ value of 'b' must be a string, got {}"));
}

TEST(SafeTensorsRules, ByteSizeDiffersFromOffsets) {
  const Bytes bytes = file("{\"conv.weight\":" + entry("F32", "[4,3]", "[0,40]") + "}", zeros(40));
  try {
    SafeTensors::parse(bytes, "weights.safetensors");
    ADD_FAILURE() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_STREQ(e.what(),
                 "weights.safetensors: tensor 'conv.weight' has shape [4, 3] x F32 = 48 bytes but "
                 "data_offsets [0, 40] span 40 bytes");
  }
  EXPECT_TRUE(
      rejects(file("{\"s\":" + entry("F64", "[]", "[0,4]") + "}", zeros(4)),
              "tensor 's' has shape [] x F64 = 8 bytes but data_offsets [0, 4] span 4 bytes"));
  EXPECT_TRUE(rejects(file("{\"z\":" + entry("BF16", "[3,0]", "[0,2]") + "}", zeros(2)),
                      "has shape [3, 0] x BF16 = 0 bytes but data_offsets [0, 2] span 2 bytes"));
}

TEST(SafeTensorsRules, ByteSizeOverflows) {
  EXPECT_TRUE(rejects(
      file("{\"w\":" + entry("F32", "[4294967296,4294967296]", "[0,0]") + "}"),
      "tensor 'w' has shape [4294967296, 4294967296] x F32 whose byte size overflows 64 bits"));
  // The element count fits (2^62) but times 4 bytes it does not.
  EXPECT_TRUE(rejects(
      file("{\"w\":" + entry("F32", "[4611686018427387904]", "[0,0]") + "}"),
      "tensor 'w' has shape [4611686018427387904] x F32 whose byte size overflows 64 bits"));
  // Wrapped around to exactly 0 bytes must not pass as an empty tensor: 2^32 * 2^31 * 2 bytes =
  // 2^64.
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F16", "[4294967296,2147483648]", "[0,0]") + "}"),
                      "overflows 64 bits"));
  // Zero bytes, but non-zero dimensions that multiply past the largest index 2^63 - 1: get<T, 3>
  // threw std::bad_alloc from Eigen's size check (found by tests/fuzz/fuzz_safetensors).
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("F32", "[4294967296,2147483648,0]", "[0,0]") + "}"),
                      "tensor 'w' has shape [4294967296, 2147483648, 0] whose non-zero dimensions "
                      "multiply to more than the largest index 9223372036854775807"));
  EXPECT_TRUE(rejects(file("{\"w\":" + entry("I64", "[0,4294967296,4294967296]", "[0,0]") + "}"),
                      "whose non-zero dimensions multiply to more than the largest index"));
  const SafeTensors largest = SafeTensors::parse(
      file("{\"w\":" + entry("F32", "[0,9223372036854775807,1]", "[0,0]") + "}"));
  EXPECT_EQ((largest.get<float, 3>("w").size()), 0);
}

TEST(SafeTensorsRules, FirstTensorDoesNotBeginAtZero) {
  EXPECT_TRUE(
      rejects(file("{\"w\":" + entry("F32", "[1]", "[4,8]") + "}", zeros(8)),
              "tensor 'w' begins at offset 4 but the first tensor must begin at 0 (a gap)"));
}

TEST(SafeTensorsRules, GapBetweenTensors) {
  EXPECT_TRUE(
      rejects(file("{\"a\":" + entry("F32", "[1]", "[0,4]") +
                       ",\"b\":" + entry("F32", "[1]", "[8,12]") + "}",
                   zeros(12)),
              "tensor 'b' begins at offset 8 but the previous tensor 'a' ends at 4 (a gap)"));
}

TEST(SafeTensorsRules, OverlappingTensors) {
  EXPECT_TRUE(
      rejects(file("{\"a\":" + entry("F32", "[2]", "[0,8]") +
                       ",\"b\":" + entry("F32", "[2]", "[4,12]") + "}",
                   zeros(12)),
              "tensor 'b' begins at offset 4 but the previous tensor 'a' ends at 8 (an overlap)"));
  // Two tensors sharing the same bytes.
  EXPECT_TRUE(rejects(
      file("{\"a\":" + entry("F32", "[1]", "[0,4]") + ",\"b\":" + entry("I64", "[0]", "[0,0]") +
               ",\"c\":" + entry("F32", "[1]", "[0,4]") + "}",
           zeros(4)),
      "tensor 'c' begins at offset 0 but the previous tensor 'a' ends at 4 (an overlap)"));
  // A zero-size tensor inside another one.
  EXPECT_TRUE(rejects(
      file(
          "{\"a\":" + entry("F32", "[2]", "[0,8]") + ",\"e\":" + entry("F32", "[0]", "[4,4]") + "}",
          zeros(8)),
      "tensor 'e' begins at offset 4 but the previous tensor 'a' ends at 8 (an overlap)"));
}

TEST(SafeTensorsRules, LastTensorDoesNotEndAtEndOfFile) {
  // Trailing bytes after the last tensor.
  EXPECT_TRUE(rejects(
      file("{\"w\":" + kGood + "}", zeros(12)),
      "the last tensor 'w' ends at offset 8 but the data section has 12 bytes (file size "));
  // Offsets past the end of the file.
  EXPECT_TRUE(rejects(file("{\"w\":" + kGood + "}", zeros(5)),
                      "the last tensor 'w' ends at offset 8 but the data section has 5 bytes"));
  EXPECT_TRUE(
      rejects(file("{\"w\":" + entry("F64", "[1]", "[1000000000000,1000000000008]") + "}"),
              "tensor 'w' begins at offset 1000000000000 but the first tensor must begin at 0"));
}

TEST(SafeTensorsRules, NoTensorsNeedsAnEmptyDataSection) {
  EXPECT_TRUE(
      rejects(file("{}", zeros(4)), "header lists no tensors but the data section has 4 bytes"));
  EXPECT_TRUE(rejects(file(R"({"__metadata__":{"a":"b"}})", zeros(1)),
                      "header lists no tensors but the data section has 1 bytes"));
}

TEST(SafeTensorsRules, ZeroSizeTensorsAnywhereAreFine) {
  const std::string header =
      "{\"a\":" + entry("F32", "[1]", "[0,4]") + ",\"e0\":" + entry("F32", "[0]", "[0,0]") +
      ",\"e4\":" + entry("F64", "[0,2]", "[4,4]") + ",\"e8\":" + entry("I64", "[3,0]", "[8,8]") +
      ",\"b\":" + entry("F32", "[1]", "[4,8]") + "}";
  const SafeTensors st = SafeTensors::parse(file(header, zeros(8)));
  EXPECT_EQ(st.names().size(), 5u);
  EXPECT_EQ(st.entry("e8").begin, 8u);
}

// Corrupting a valid file anywhere must give a FormatError or a valid file, and never touch
// memory outside the buffer (run under AddressSanitizer to check the latter).
TEST(SafeTensorsRules, CorruptedFilesFailCleanly) {
  Tensor<float, 2> t(2, 3);
  t.setValues({{1.f, 2.f, 3.f}, {4.f, 5.f, 6.f}});
  Tensor<std::int64_t, 0> s;
  s() = 9;
  SafeTensorsWriter w;
  w.add("t", t, DType::F16);
  w.add("s", s);
  w.set_metadata("k", "v");
  const Bytes good = w.to_bytes();

  const auto try_parse = [](const Bytes& b) -> int {  // 0 accepted, 1 FormatError
    try {
      const SafeTensors st = SafeTensors::parse(b);
      for (const auto& name : st.names()) {
        (void)st.get_flat<double>(name);
        (void)st.raw_data(name);
      }
      return 0;
    } catch (const FormatError&) {
      return 1;
    }
  };
  EXPECT_EQ(try_parse(good), 0);
  for (std::size_t len = 0; len < good.size(); ++len)
    EXPECT_EQ(try_parse(Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len))), 1)
        << len;
  const std::uint8_t replacements[] = {0x00, 0xFF, '{', '}', '"', ',', '0', '9', ' ', 0x80};
  int accepted = 0;
  for (std::size_t i = 0; i < good.size(); ++i)
    for (std::uint8_t r : replacements) {
      Bytes b = good;
      b[i] = r;
      accepted += try_parse(b) == 0;  // anything else propagates and fails the test
    }
  EXPECT_GT(accepted, 0);  // e.g. data bytes can take any value
}

// ---- the writer ------------------------------------------------------------------------------

// Decodes the writer's output with nlohmann directly, not with SafeTensors.
TEST(SafeTensorsWriterFormat, OutputFollowsTheFormat) {
  Tensor<float, 1> a(3);
  a.setValues({1.0f, -2.5f, 0.0f});
  Tensor<std::int64_t, 2> b(1, 2);
  b.setValues({{5, -1}});
  Tensor<double, 0> c;
  c() = 1.0;
  Tensor<float, 2> empty(0, 4);
  SafeTensorsWriter w;
  w.add("c", c);  // added out of name order
  w.add("a", a);
  w.add("empty", empty, DType::BF16);
  w.add("b", b);
  w.set_metadata("source", "test");
  const Bytes bytes = w.to_bytes();

  ASSERT_GE(bytes.size(), 8u);
  const std::uint64_t n = read_u64_le(bytes.data());
  EXPECT_EQ(n % 8, 0u);
  ASSERT_LE(8 + n, bytes.size());
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  EXPECT_EQ(header.front(), '{');
  const std::size_t close = header.rfind('}');
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos)
      << "padding must be spaces";
  EXPECT_LT(header.size() - close - 1, 8u);

  const auto j = nlohmann::ordered_json::parse(header);
  ASSERT_TRUE(j.is_object());
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"__metadata__", "a", "b", "c", "empty"}));
  EXPECT_EQ(j["__metadata__"], nlohmann::ordered_json({{"source", "test"}}));

  // Data offsets follow name order, contiguous, ending at the end of the file.
  const std::uint64_t data_size = bytes.size() - 8 - n;
  EXPECT_EQ(j["a"]["dtype"], "F32");
  EXPECT_EQ(j["a"]["shape"], nlohmann::ordered_json({3}));
  EXPECT_EQ(j["a"]["data_offsets"], nlohmann::ordered_json({0, 12}));
  EXPECT_EQ(j["b"]["dtype"], "I64");
  EXPECT_EQ(j["b"]["shape"], nlohmann::ordered_json({1, 2}));
  EXPECT_EQ(j["b"]["data_offsets"], nlohmann::ordered_json({12, 28}));
  EXPECT_EQ(j["c"]["dtype"], "F64");
  EXPECT_EQ(j["c"]["shape"], nlohmann::ordered_json::array());
  EXPECT_EQ(j["c"]["data_offsets"], nlohmann::ordered_json({28, 36}));
  EXPECT_EQ(j["empty"]["dtype"], "BF16");
  EXPECT_EQ(j["empty"]["shape"], nlohmann::ordered_json({0, 4}));
  EXPECT_EQ(j["empty"]["data_offsets"], nlohmann::ordered_json({36, 36}));
  EXPECT_EQ(data_size, 36u);
  for (const auto& item : j.items()) {
    if (item.key() == "__metadata__") continue;
    EXPECT_EQ(item.value().size(), 3u) << item.key();
  }

  // The data bytes, little-endian.
  const std::uint8_t* data = bytes.data() + 8 + n;
  EXPECT_EQ(Bytes(data, data + 12), (Bytes{0, 0, 0x80, 0x3F, 0, 0, 0x20, 0xC0, 0, 0, 0, 0}));
  EXPECT_EQ(read_u64_le(data + 12), 5u);
  EXPECT_EQ(read_u64_le(data + 20), 0xFFFFFFFFFFFFFFFFull);
  EXPECT_EQ(read_u64_le(data + 28), 0x3FF0000000000000ull);  // 1.0 as a double
}

TEST(SafeTensorsWriterFormat, SaveWritesTheSameBytes) {
  Tensor<float, 1> a(2);
  a.setValues({1.f, 2.f});
  SafeTensorsWriter w;
  w.add("a", a);
  const std::string path = temp_path("save.safetensors");
  w.save(path);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  Bytes read(1024);
  read.resize(std::fread(read.data(), 1, read.size(), f));
  std::fclose(f);
  std::remove(path.c_str());
  EXPECT_EQ(read, w.to_bytes());
}

TEST(SafeTensorsWriterErrors, SaveToAMissingDirectoryIsIoError) {
  const std::string path = temp_path("no_such_dir/out.safetensors");
  EXPECT_TRUE(throws_with<IoError>([&] { SafeTensorsWriter().save(path); },
                                   path + ": cannot open for writing"));
}

TEST(SafeTensorsWriterErrors, DuplicateOrReservedNames) {
  Tensor<float, 1> t(1);
  t.setZero();
  SafeTensorsWriter w;
  w.add("w", t);
  EXPECT_TRUE(throws_with<OptionsError>([&] { w.add("w", t); },
                                        "SafeTensorsWriter: duplicate tensor name 'w'"));
  const float x = 0;
  EXPECT_TRUE(throws_with<OptionsError>([&] { w.add_raw("w", DType::F32, {1}, &x, 4); },
                                        "duplicate tensor name 'w'"));
  EXPECT_TRUE(throws_with<OptionsError>([&] { w.add("__metadata__", t); },
                                        "the name '__metadata__' is reserved"));
  EXPECT_TRUE(throws_with<OptionsError>([&] { w.add("bad\xFF", t); }, "is not valid UTF-8"));
  EXPECT_TRUE(
      throws_with<OptionsError>([&] { w.set_metadata("k", "\xC0\x80"); }, "is not valid UTF-8"));
}

// The writer used to produce headers longer than the reader's 100,000,000-byte limit.
TEST(SafeTensorsWriterErrors, HeaderOverTheReadersLimitIsOptionsError) {
  // The padded header size is checked against the limit; the limit itself is fine.
  EXPECT_NO_THROW(SafeTensorsWriter::check_header_size(0));
  EXPECT_NO_THROW(SafeTensorsWriter::check_header_size(100'000'000));
  EXPECT_TRUE(throws_with<OptionsError>(
      [] { SafeTensorsWriter::check_header_size(100'000'008); },
      "SafeTensorsWriter: the header would be 100000008 bytes, over the limit of 100000000 bytes "
      "that readers accept (too much metadata, or too many or too long tensor names)"));
  EXPECT_TRUE(throws_with<OptionsError>(
      [] { SafeTensorsWriter::check_header_size(std::numeric_limits<std::uint64_t>::max()); },
      "the header would be 18446744073709551615 bytes"));

  // End to end: 100 MB of metadata (rejected before the header is built, so this is quick).
  const std::string path = temp_path("too_large.safetensors");
  std::remove(path.c_str());
  {
    SafeTensorsWriter w;
    w.set_metadata("k", std::string(100'000'000, 'x'));
    EXPECT_TRUE(throws_with<OptionsError>(
        [&] { w.to_bytes(); },
        "SafeTensorsWriter: the header would be at least 100000003 bytes, over the limit of "
        "100000000 bytes"));
    EXPECT_TRUE(throws_with<OptionsError>([&] { w.save(path); }, "over the limit"));
    std::FILE* f = std::fopen(path.c_str(), "rb");
    EXPECT_EQ(f, nullptr) << "save() created " << path;
    if (f) std::fclose(f);
  }
  // Tensor names count too.
  {
    SafeTensorsWriter w;
    Tensor<float, 0> t;
    t() = 1.f;
    w.add(std::string(50'000'000, 'a'), t);
    w.add(std::string(50'000'000, 'b'), t);
    EXPECT_TRUE(throws_with<OptionsError>([&] { w.to_bytes(); },
                                          "the header would be at least 100000002 bytes"));
  }
}

TEST(SafeTensorsWriterErrors, StoredDtypeMustSuitTheElementType) {
  Tensor<float, 1> f(1);
  f.setZero();
  Tensor<std::int64_t, 1> i(1);
  i.setZero();
  SafeTensorsWriter w;
  EXPECT_TRUE(throws_with<OptionsError>([&] { w.add("f", f, DType::I64); },
                                        "tensor 'f' of F32 cannot be stored as I64"));
  EXPECT_TRUE(throws_with<OptionsError>([&] { w.add("i", i, DType::F32); },
                                        "tensor 'i' of I64 cannot be stored as F32"));
  EXPECT_TRUE(SafeTensors::parse(w.to_bytes()).names().empty());  // nothing was added
}

TEST(SafeTensorsWriterErrors, AddRawChecksTheByteCount) {
  const std::uint8_t buf[16] = {};
  SafeTensorsWriter w;
  EXPECT_TRUE(throws_with<OptionsError>(
      [&] {
        w.add_raw("r", DType::F32, {2, 3}, buf, 16);
      },
      "tensor 'r' has shape [2, 3] x F32 = 24 bytes but 16 bytes were given"));
  EXPECT_TRUE(throws_with<OptionsError>([&] { w.add_raw("r", DType::F32, {-1}, buf, 0); },
                                        "tensor 'r' has invalid shape [-1]"));
  EXPECT_TRUE(throws_with<OptionsError>([&] { w.add_raw("r", DType::F16, {4}, nullptr, 8); },
                                        "tensor 'r' has null data"));
  // The reader's index rule: a shape it would reject is not written.
  EXPECT_TRUE(throws_with<OptionsError>(
      [&] {
        w.add_raw("r", DType::F32, {0, Index(1) << 32, Index(1) << 32}, nullptr, 0);
      },
      "tensor 'r' has shape [0, 4294967296, 4294967296] whose non-zero dimensions multiply to "
      "more than the largest index"));
  // The writer counts bytes as the reader does (elements first, then x dtype size): a zero-size
  // shape whose dimensions x 4 bytes would overflow 64 bits is still writable (found by
  // tests/fuzz/fuzz_safetensors: the writer rejected a file the reader had accepted).
  w.add_raw("z", DType::F32, {4294967295, 2147483648, 0}, nullptr, 0);
  w.add_raw("r", DType::F64, {2}, buf, 16);
  w.add_raw("e", DType::F64, {0}, nullptr, 0);
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  EXPECT_EQ(st.get_flat<double>("r"), (std::vector<double>{0.0, 0.0}));
  EXPECT_TRUE(st.get_flat<double>("e").empty());
  EXPECT_EQ(st.entry("z").shape, (std::vector<Index>{4294967295, 2147483648, 0}));
}

}  // namespace

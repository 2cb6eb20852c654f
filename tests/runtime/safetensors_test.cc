// Safetensors reader, writer and checkpoint directories, including every malformed-file case of the
// ST-01..ST-11 and ST-13 rows of the bad-input list (shared/research/ecosystem_reliability.md, B4).
#include "runtime/safetensors.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using ::dsv4::testing::TempDir;

// ---- helpers ------------------------------------------------------------------------------------

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out;
}

// A file image: the header length, the header text verbatim, then `data_bytes` bytes 0, 1, 2, ...
std::string Image(const std::string& header, uint64_t data_bytes = 0) {
  std::string out = LengthPrefix(header.size()) + header;
  for (uint64_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<char>(i));
  return out;
}

// One header entry: "name":{"dtype":..,"shape":..,"data_offsets":[b,e]}; `shape` is JSON text.
std::string Entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t begin,
                  uint64_t end) {
  return absl::StrCat("\"", name, "\":{\"dtype\":\"", dtype, "\",\"shape\":", shape, ",\"data_offsets\":[", begin, ",",
                      end, "]}");
}

std::string Header(std::initializer_list<std::string> entries) {
  return absl::StrCat("{", absl::StrJoin(entries, ","), "}");
}

std::string WriteFile(const std::string& dir, const std::string& name, const std::string& contents) {
  const std::string path = dir + "/" + name;
  std::ofstream out(path, std::ios::binary);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  return path;
}

std::string WriteFile(const std::string& dir, const std::string& name, const std::vector<uint8_t>& contents) {
  return WriteFile(dir, name, std::string(contents.begin(), contents.end()));
}

// Writes `contents` as model.safetensors in a fresh directory and returns its path.
std::string WriteModel(const std::string& contents) { return WriteFile(TempDir(), "model.safetensors", contents); }

absl::Status OpenStatus(const std::string& path) { return SafetensorsFile::Open(path).status(); }

// The status is an error whose message contains every one of `words`.
::testing::AssertionResult FailsWith(const absl::Status& st, std::initializer_list<std::string> words) {
  if (st.ok()) return ::testing::AssertionFailure() << "expected an error, got OK";
  const std::string msg(st.message());
  for (const std::string& w : words) {
    if (msg.find(w) == std::string::npos) {
      return ::testing::AssertionFailure() << "error \"" << msg << "\" lacks \"" << w << "\"";
    }
  }
  return ::testing::AssertionSuccess() << msg;
}

std::unique_ptr<SafetensorsFile> OpenOk(const std::string& path) {
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? std::move(file).value() : nullptr;
}

std::vector<uint8_t> Iota(size_t n, uint8_t start = 0) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(start + i);
  return v;
}

std::vector<uint8_t> BytesOf(const TensorInfo& t) { return std::vector<uint8_t>(t.data, t.data + t.nbytes); }

// ---- dtypes -------------------------------------------------------------------------------------

TEST(SafetensorsDType, NamesAndBits) {
  const std::vector<std::pair<DType, std::pair<std::string, int>>> want = {
      {DType::kBOOL, {"BOOL", 8}},       {DType::kU8, {"U8", 8}},           {DType::kI8, {"I8", 8}},
      {DType::kI16, {"I16", 16}},        {DType::kU16, {"U16", 16}},        {DType::kF16, {"F16", 16}},
      {DType::kBF16, {"BF16", 16}},      {DType::kI32, {"I32", 32}},        {DType::kU32, {"U32", 32}},
      {DType::kF32, {"F32", 32}},        {DType::kF64, {"F64", 64}},        {DType::kI64, {"I64", 64}},
      {DType::kU64, {"U64", 64}},        {DType::kF8_E4M3, {"F8_E4M3", 8}}, {DType::kF8_E5M2, {"F8_E5M2", 8}},
      {DType::kF8_E8M0, {"F8_E8M0", 8}}, {DType::kF4, {"F4", 4}},
  };
  for (const auto& [type, name_bits] : want) {
    EXPECT_EQ(DTypeName(type), name_bits.first);
    EXPECT_EQ(DTypeBits(type), name_bits.second) << name_bits.first;
    // Every name parses back to its dtype.
    const std::string path =
        WriteModel(Image(Header({Entry("t", name_bits.first, "[2]", 0, name_bits.second / 4)}), name_bits.second / 4));
    auto file = OpenOk(path);
    ASSERT_NE(file, nullptr);
    EXPECT_EQ(file->tensors().at("t").dtype, type);
  }
}

// ---- ST-01: header length field ------------------------------------------------------------------

TEST(SafetensorsST01, EmptyFile) {
  const std::string path = WriteModel("");
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "header too small"}));
}

TEST(SafetensorsST01, SevenByteFile) {
  const std::string path = WriteModel(std::string(7, '\x01'));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "header too small", "7 bytes"}));
}

// ---- ST-02: header length bounds -----------------------------------------------------------------

TEST(SafetensorsST02, HeaderLengthMaxU64) {
  const std::string path = WriteModel(LengthPrefix(~uint64_t{0}) + "{}");
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "header too large", "18446744073709551615"}));
}

TEST(SafetensorsST02, HeaderLengthPastFile) {
  const std::string path = WriteModel(LengthPrefix(100) + "{}      ");
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "invalid header length", "100", "16-byte file"}));
}

TEST(SafetensorsST02, HeaderLengthOverCap) {
  const std::string path = WriteModel(LengthPrefix(SafetensorsFile::kMaxHeaderBytes + 1) + "{}");
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "header too large", "100000001"}));
}

TEST(SafetensorsST02, HeaderLengthAtCapButPastFile) {
  const std::string path = WriteModel(LengthPrefix(SafetensorsFile::kMaxHeaderBytes) + "{}");
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "invalid header length"}));
}

// ---- ST-03: header text --------------------------------------------------------------------------

TEST(SafetensorsST03, NotUtf8) {
  const std::string path = WriteModel(Image(Header({Entry("w\xff", "U8", "[1]", 0, 1)}), 1));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "UTF-8"}));
}

TEST(SafetensorsST03, Utf8SurrogateAndOverlongRejected) {
  for (const std::string bad : {"\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "\xe2\x82"}) {
    const std::string path = WriteModel(Image(Header({Entry("w" + bad, "U8", "[1]", 0, 1)}), 1));
    EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "UTF-8"}));
  }
}

TEST(SafetensorsST03, Utf8NamesAccepted) {
  const std::string name = "w\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";  // e-acute, euro sign, emoji
  auto file = OpenOk(WriteModel(Image(Header({Entry(name, "U8", "[1]", 0, 1)}), 1)));
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->tensors().count(name), 1u);
}

TEST(SafetensorsST03, NotJson) {
  const std::string path = WriteModel(Image("{\"w\": nope}"));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "header", "JSON"}));
}

TEST(SafetensorsST03, JsonArray) {
  const std::string path = WriteModel(Image("[1, 2, 3]"));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "JSON object"}));
}

TEST(SafetensorsST03, JsonScalar) {
  const std::string path = WriteModel(Image("\"a string\""));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "JSON object"}));
}

TEST(SafetensorsST03, TrailingGarbage) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[1]", 0, 1)}) + "  x", 1));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "JSON"}));
}

TEST(SafetensorsST03, TwoObjects) {
  const std::string path = WriteModel(Image("{}{}"));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "JSON"}));
}

TEST(SafetensorsST03, SpacePaddingAccepted) {
  const std::string header = Header({Entry("w", "U8", "[3]", 0, 3)});
  const std::string padded = header + std::string(8 - header.size() % 8, ' ');
  auto file = OpenOk(WriteModel(Image(padded, 3)));
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->tensors().at("w").nbytes, 3u);
  EXPECT_EQ(BytesOf(file->tensors().at("w")), Iota(3));
}

TEST(SafetensorsST03, EmptyHeaderObjectAccepted) {
  auto file = OpenOk(WriteModel(Image("{}      ")));
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(file->tensors().empty());
}

TEST(SafetensorsST03, DeepNestingRejectedQuickly) {
  const std::string header = "{\"w\":" + std::string(1'000'000, '[') + std::string(1'000'000, ']') + "}";
  const std::string path = WriteModel(Image(header));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "nested"}));
}

// ---- ST-04: dtypes -------------------------------------------------------------------------------

TEST(SafetensorsST04, UnknownDType) {
  const std::string path = WriteModel(Image(Header({Entry("layers.0.w", "F7", "[1]", 0, 1)}), 1));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'layers.0.w'", "unknown dtype", "F7", "dtype"}));
}

TEST(SafetensorsST04, UnsupportedDTypes) {
  for (const char* dtype : {"C64", "F6_E2M3", "F6_E3M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}) {
    const std::string path = WriteModel(Image(Header({Entry("w", dtype, "[1]", 0, 8)}), 8));
    EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "unsupported dtype", dtype}));
  }
}

TEST(SafetensorsST04, DTypeNotString) {
  const std::string path = WriteModel(Image("{\"w\":{\"dtype\":8,\"shape\":[1],\"data_offsets\":[0,1]}}", 1));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "'dtype'"}));
}

TEST(SafetensorsST04, F4OddElementCount) {
  const std::string path = WriteModel(Image(Header({Entry("experts.w", "F4", "[3]", 0, 2)}), 2));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'experts.w'", "F4", "[3]", "misaligned"}));
}

TEST(SafetensorsST04, F4EvenElementCountAccepted) {
  auto file = OpenOk(WriteModel(Image(Header({Entry("w", "F4", "[2, 3]", 0, 3)}), 3)));
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->tensors().at("w").nbytes, 3u);
  EXPECT_EQ(file->tensors().at("w").numel(), 6);
}

// ---- ST-05: shapes -------------------------------------------------------------------------------

TEST(SafetensorsST05, ShapeProductOverflowsU64) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[4294967296, 4294967296]", 0, 0)})));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "overflow"}));
}

TEST(SafetensorsST05, ShapeProductOverflowsI64) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[4294967296, 2147483648]", 0, 0)})));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "overflow"}));
}

TEST(SafetensorsST05, DimensionPastI64) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[9223372036854775808]", 0, 0)})));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "shape", "overflow"}));
}

TEST(SafetensorsST05, DimensionPastU64) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[18446744073709551616]", 0, 0)})));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "shape"}));
}

TEST(SafetensorsST05, BitCountOverflows) {
  // 2^62 elements fit int64, but 2^62 * 32 bits do not fit u64.
  const std::string path = WriteModel(Image(Header({Entry("w", "F32", "[4611686018427387904]", 0, 0)})));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "F32", "overflow"}));
}

TEST(SafetensorsST05, NegativeDimension) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[-1, 4]", 0, 0)})));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "shape", "negative"}));
}

TEST(SafetensorsST05, FractionalDimension) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[1.5]", 0, 0)})));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "shape"}));
}

TEST(SafetensorsST05, ShapeNotArray) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "4", 0, 4)}), 4));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "shape"}));
}

TEST(SafetensorsST05, ZeroDimensionAccepted) {
  const std::string header = Header({Entry("empty", "F32", "[0, 4]", 0, 0), Entry("w", "U8", "[2]", 0, 2),
                                     Entry("empty_end", "BF16", "[3, 0]", 2, 2)});
  auto file = OpenOk(WriteModel(Image(header, 2)));
  ASSERT_NE(file, nullptr);
  const TensorInfo& e = file->tensors().at("empty");
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(e.nbytes, 0u);
  EXPECT_EQ(e.ShapeString(), "[0, 4]");
  EXPECT_EQ(file->tensors().at("empty_end").nbytes, 0u);
  EXPECT_EQ(BytesOf(file->tensors().at("w")), Iota(2));
}

TEST(SafetensorsST05, ScalarHasOneElement) {
  auto file = OpenOk(WriteModel(Image(Header({Entry("s", "F32", "[]", 0, 4)}), 4)));
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->tensors().at("s").numel(), 1);
  EXPECT_EQ(file->tensors().at("s").ShapeString(), "[]");
}

// ---- ST-06: offsets ------------------------------------------------------------------------------

TEST(SafetensorsST06, Gap) {
  const std::string path =
      WriteModel(Image(Header({Entry("a", "U8", "[4]", 0, 4), Entry("b", "U8", "[4]", 8, 12)}), 12));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'b'", "data_offsets [8, 12]", "gap of 4 bytes", "'a'"}));
}

TEST(SafetensorsST06, Overlap) {
  const std::string path =
      WriteModel(Image(Header({Entry("a", "U8", "[8]", 0, 8), Entry("b", "U8", "[8]", 4, 12)}), 12));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'b'", "data_offsets [4, 12]", "overlap", "'a'"}));
}

TEST(SafetensorsST06, SameRangeTwice) {
  const std::string path = WriteModel(Image(Header({Entry("a", "U8", "[8]", 0, 8), Entry("b", "U8", "[8]", 0, 8)}), 8));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "overlap"}));
}

TEST(SafetensorsST06, OutOfOrderButContiguousAccepted) {
  // "a" sorts first by name but lives second in the buffer; the reference reader sorts by offset.
  auto file = OpenOk(WriteModel(Image(Header({Entry("a", "U8", "[4]", 4, 8), Entry("b", "U8", "[4]", 0, 4)}), 8)));
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(BytesOf(file->tensors().at("a")), Iota(4, 4));
  EXPECT_EQ(BytesOf(file->tensors().at("b")), Iota(4, 0));
}

TEST(SafetensorsST06, EndBeforeBegin) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[0]", 4, 0)}), 4));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "data_offsets [4, 0]", "end before"}));
}

TEST(SafetensorsST06, NotStartingAtZero) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[4]", 4, 8)}), 8));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "data_offsets [4, 8]", "start at 0"}));
}

TEST(SafetensorsST06, LastNotAtBufferEnd) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[4]", 0, 4)}), 8));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "holds 8 bytes", "end at 4", "4 trailing bytes"}));
}

TEST(SafetensorsST06, BeyondFile) {
  const std::string header = Header({Entry("w", "U8", "[16]", 0, 16)});
  const std::string path = WriteModel(Image(header, 8));
  const absl::Status st = OpenStatus(path);
  const uint64_t want = 8 + header.size() + 16, have = 8 + header.size() + 8;
  EXPECT_TRUE(FailsWith(st, {path, "truncated", absl::StrCat(want), absl::StrCat(have)}));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
}

TEST(SafetensorsST06, HugeOffsetsDoNotOverflow) {
  // Sixteen contiguous tensors ending at 2^64-1: the expected file size does not fit 64 bits.
  constexpr uint64_t kChunk = uint64_t{1} << 60;
  std::string header = "{";
  for (uint64_t i = 0; i < 16; ++i) {
    const uint64_t bytes = i < 15 ? kChunk : kChunk - 1;
    absl::StrAppend(&header, i ? "," : "",
                    Entry(absl::StrCat("t", i), "U8", absl::StrCat("[", bytes, "]"), i * kChunk, i * kChunk + bytes));
  }
  header += "}";
  const std::string path = WriteModel(Image(header, 8));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "truncated", "18446744073709551615"}));
}

TEST(SafetensorsST06, OffsetsMalformed) {
  for (const std::string offsets : {"[0]", "[0, 1, 2]", "[-1, 0]", "[0, 1.0]", "\"0,1\""}) {
    const std::string path =
        WriteModel(Image("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":" + offsets + "}}", 1));
    EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "data_offsets"})) << offsets;
  }
}

// ---- ST-07: byte length vs shape x dtype ---------------------------------------------------------

TEST(SafetensorsST07, ByteLengthDisagreesWithShape) {
  const std::string path =
      WriteModel(Image(Header({Entry("layers.0.attn.wq_a.weight", "F8_E4M3", "[8, 16]", 0, 100)}), 100));
  EXPECT_TRUE(FailsWith(OpenStatus(path),
                        {path + ": tensor 'layers.0.attn.wq_a.weight': data_offsets [0, 100] give 100 bytes but "
                                "shape [8, 16] of F8_E4M3 needs 128"}));
}

TEST(SafetensorsST07, WiderDType) {
  const std::string path = WriteModel(Image(Header({Entry("w", "BF16", "[4]", 0, 4)}), 4));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "BF16", "needs 8"}));
}

// ---- entry structure -----------------------------------------------------------------------------

TEST(SafetensorsEntry, MissingField) {
  const std::string path = WriteModel(Image("{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}"));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "missing field 'data_offsets'"}));
}

TEST(SafetensorsEntry, UnexpectedField) {
  const std::string path =
      WriteModel(Image("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":1}}", 1));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "unexpected field 'extra'"}));
}

TEST(SafetensorsEntry, NotAnObject) {
  const std::string path = WriteModel(Image("{\"w\":[1,2]}"));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'w'", "object"}));
}

TEST(SafetensorsEntry, MissingAndNonRegularFiles) {
  const std::string dir = TempDir();
  EXPECT_TRUE(FailsWith(OpenStatus(dir + "/absent.safetensors"), {dir + "/absent.safetensors", "cannot open"}));
  EXPECT_EQ(OpenStatus(dir + "/absent.safetensors").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(FailsWith(OpenStatus(dir), {dir, "not a regular file"}));
}

// ---- ST-08: duplicate names ----------------------------------------------------------------------

TEST(SafetensorsST08, DuplicateTensorNameInHeader) {
  const std::string path = WriteModel(Image(Header({Entry("w", "U8", "[4]", 0, 4), Entry("w", "U8", "[4]", 4, 8)}), 8));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "duplicate tensor name 'w'"}));
}

TEST(SafetensorsST08, DuplicateFieldInEntry) {
  const std::string path =
      WriteModel(Image("{\"w\":{\"dtype\":\"U8\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "duplicate key 'dtype'", "'w'"}));
}

TEST(SafetensorsST08, DuplicateMetadataKey) {
  const std::string path = WriteModel(Image("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}"));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "duplicate key 'a'", "__metadata__"}));
}

TEST(SafetensorsST08, SameTensorInTwoFilesWithoutIndex) {
  const std::string dir = TempDir();
  const std::string a = WriteFile(dir, "a.safetensors", WriteSafetensors({{"w", DType::kU8, {2}, Iota(2)}}));
  const std::string b = WriteFile(dir, "b.safetensors", WriteSafetensors({{"w", DType::kU8, {2}, Iota(2)}}));
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"'w'", a, b}));
}

// ---- ST-09: metadata and header size -------------------------------------------------------------

TEST(SafetensorsST09, MetadataNonStringValue) {
  const std::string path = WriteModel(Image("{\"__metadata__\":{\"format\":\"pt\",\"step\":5}}"));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "__metadata__", "'step'", "string"}));
}

TEST(SafetensorsST09, MetadataNotObject) {
  const std::string path = WriteModel(Image("{\"__metadata__\":[\"pt\"]}"));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "__metadata__", "object"}));
}

TEST(SafetensorsST09, MetadataRead) {
  auto file = OpenOk(WriteModel(Image("{\"__metadata__\":{\"format\":\"pt\"}}")));
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->metadata().at("format"), "pt");
}

TEST(SafetensorsST09, ManyTinyTensorsLinear) {
  constexpr int kCount = 100'000;
  std::string header = "{";
  for (int i = 0; i < kCount; ++i) {
    absl::StrAppend(&header, i ? "," : "", Entry(absl::StrCat("t", i), "U8", "[1]", i, i + 1));
  }
  header += "}";
  const std::string path = WriteModel(Image(header, kCount));
  const auto start = std::chrono::steady_clock::now();
  auto file = OpenOk(path);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->tensors().size(), static_cast<size_t>(kCount));
  EXPECT_EQ(file->tensors().at("t1234").data[0], static_cast<uint8_t>(1234));
  EXPECT_LT(seconds, 30.0);  // linear; a quadratic pass would take far longer
}

// ---- ST-10: truncated file -----------------------------------------------------------------------

TEST(SafetensorsST10, TruncatedShard) {
  std::vector<uint8_t> image =
      WriteSafetensors({{"a", DType::kF32, {4, 4}, Iota(64)}, {"b", DType::kU8, {8}, Iota(8)}});
  const uint64_t full = image.size();
  image.resize(full - 10);
  const std::string path = WriteModel(std::string(image.begin(), image.end()));
  const absl::Status st = OpenStatus(path);
  EXPECT_TRUE(FailsWith(st, {path, "truncated", absl::StrCat(full, " bytes"), absl::StrCat(full - 10, " bytes")}));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
}

TEST(SafetensorsST10, TruncatedInsideHeader) {
  std::vector<uint8_t> image = WriteSafetensors({{"a", DType::kF32, {4}, Iota(16)}});
  image.resize(20);
  const std::string path = WriteModel(std::string(image.begin(), image.end()));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "invalid header length"}));
}

// ---- ST-13: packed FP4 stored as I8 with a wrong byte count --------------------------------------

TEST(SafetensorsST13, PackedFp4WrongByteCount) {
  const std::string name = "layers.0.ffn.experts.3.w1.weight";
  const std::string path = WriteModel(Image(Header({Entry(name, "I8", "[128, 64]", 0, 8191)}), 8191));
  EXPECT_TRUE(FailsWith(OpenStatus(path), {path, "'" + name + "'", "I8", "[128, 64]", "8191", "8192"}));
}

// ---- ST-11: sharded checkpoints ------------------------------------------------------------------

std::string IndexJson(const std::vector<std::pair<std::string, std::string>>& weight_map) {
  std::vector<std::string> items;
  for (const auto& [tensor, shard] : weight_map) items.push_back(absl::StrCat("\"", tensor, "\":\"", shard, "\""));
  return absl::StrCat("{\"metadata\":{\"total_size\":0},\"weight_map\":{", absl::StrJoin(items, ","), "}}");
}

void WriteIndex(const std::string& dir, const std::vector<std::pair<std::string, std::string>>& weight_map) {
  WriteFile(dir, "model.safetensors.index.json", IndexJson(weight_map));
}

TEST(SafetensorsST11, ValidShardedRoundTrip) {
  const std::string dir = TempDir();
  WriteFile(dir, "model-00001-of-00002.safetensors",
            WriteSafetensors({{"embed.weight", DType::kBF16, {4, 2}, Iota(16)},
                              {"layers.0.w", DType::kF8_E4M3, {2, 3}, Iota(6, 100)}}));
  WriteFile(dir, "model-00002-of-00002.safetensors",
            WriteSafetensors(
                {{"layers.0.scale", DType::kF8_E8M0, {1, 1}, {127}}, {"head.weight", DType::kF32, {2}, Iota(8, 50)}}));
  WriteFile(dir, "unrelated.safetensors", "not even a safetensors file");  // not in the index: ignored
  WriteIndex(dir, {{"embed.weight", "model-00001-of-00002.safetensors"},
                   {"layers.0.w", "model-00001-of-00002.safetensors"},
                   {"layers.0.scale", "model-00002-of-00002.safetensors"},
                   {"head.weight", "model-00002-of-00002.safetensors"}});
  auto ckpt = Checkpoint::OpenDir(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->all().size(), 4u);
  const TensorInfo* w = (*ckpt)->Find("layers.0.w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kF8_E4M3);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(BytesOf(*w), Iota(6, 100));
  EXPECT_EQ(w->file, dir + "/model-00001-of-00002.safetensors");
  const TensorInfo* head = (*ckpt)->Find("head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(BytesOf(*head), Iota(8, 50));
  EXPECT_EQ(head->file, dir + "/model-00002-of-00002.safetensors");
  EXPECT_EQ(BytesOf(*(*ckpt)->Find("layers.0.scale")), std::vector<uint8_t>{127});
  EXPECT_EQ((*ckpt)->Find("absent"), nullptr);
}

TEST(SafetensorsST11, MissingShard) {
  const std::string dir = TempDir();
  WriteFile(dir, "model-00001-of-00002.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {1}}}));
  WriteIndex(dir, {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(),
                        {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "'b'", "does not exist"}));
}

TEST(SafetensorsST11, ShardNameWithDotDot) {
  const std::string dir = TempDir();
  fs::create_directory(dir + "/model");
  WriteFile(dir, "x.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {1}}}));  // exists, outside
  WriteIndex(dir + "/model", {{"a", "../x.safetensors"}});
  EXPECT_TRUE(
      FailsWith(Checkpoint::OpenDir(dir + "/model").status(), {"index.json", "'../x.safetensors'", "'a'", ".."}));
}

TEST(SafetensorsST11, ShardNameDotDotInside) {
  const std::string dir = TempDir();
  WriteIndex(dir, {{"a", "sub/../../x.safetensors"}});
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"index.json", "escapes"}));
}

TEST(SafetensorsST11, AbsoluteShardPath) {
  const std::string dir = TempDir();
  const std::string outside = WriteFile(TempDir(), "x.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {1}}}));
  WriteIndex(dir, {{"a", outside}});
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"index.json", outside, "absolute"}));
}

// A Hugging Face hub cache: the snapshot's files (the index included) are symlinks into
// ../../blobs/, outside the snapshot folder. It loads with the index as it does without.
TEST(SafetensorsST11, HubSnapshotWithIndex) {
  const std::string repo = TempDir() + "/models--deepseek-ai--tiny";
  const std::string snap = repo + "/snapshots/0123abcd";
  fs::create_directories(repo + "/blobs");
  fs::create_directories(snap);
  WriteFile(repo + "/blobs", "b1", WriteSafetensors({{"a", DType::kU8, {1}, {7}}}));
  WriteFile(repo + "/blobs", "b2", WriteSafetensors({{"b", DType::kU8, {2}, {8, 9}}}));
  WriteIndex(repo + "/blobs", {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
  fs::rename(repo + "/blobs/model.safetensors.index.json", repo + "/blobs/b3");
  fs::create_symlink("../../blobs/b1", snap + "/model-00001-of-00002.safetensors");
  fs::create_symlink("../../blobs/b2", snap + "/model-00002-of-00002.safetensors");
  fs::create_symlink("../../blobs/b3", snap + "/model.safetensors.index.json");
  auto ckpt = Checkpoint::OpenDir(snap);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Find("a")->data[0], 7);
  EXPECT_EQ((*ckpt)->Find("b")->data[1], 9);
  EXPECT_EQ((*ckpt)->Find("a")->file, snap + "/model-00001-of-00002.safetensors");
}

// The directory's own symlinks are followed wherever they point, as they are without an index.
TEST(SafetensorsST11, SymlinkedFileOutsideDirFollowed) {
  const std::string dir = TempDir();
  const std::string outside = WriteFile(TempDir(), "x.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {5}}}));
  fs::create_symlink(outside, dir + "/model.safetensors");
  WriteIndex(dir, {{"a", "model.safetensors"}});
  auto ckpt = Checkpoint::OpenDir(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Find("a")->data[0], 5);
}

// An index entry cannot reach outside through a symlinked folder: shards are the directory's files.
TEST(SafetensorsST11, SymlinkedFolderRefused) {
  const std::string dir = TempDir();
  const std::string outside = TempDir();
  WriteFile(outside, "x.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {1}}}));
  fs::create_directory_symlink(outside, dir + "/sub");
  WriteIndex(dir, {{"a", "sub/x.safetensors"}});
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"index.json", "'sub/x.safetensors'", "symlink"}));
}

TEST(SafetensorsST11, DanglingSymlinkNamed) {
  const std::string dir = TempDir();
  fs::create_symlink("../../blobs/missing", dir + "/model.safetensors");
  WriteIndex(dir, {{"a", "model.safetensors"}});
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(),
                        {"index.json", "'model.safetensors'", "../../blobs/missing", "does not exist"}));
}

TEST(SafetensorsST11, SymlinkInsideDirAccepted) {
  const std::string dir = TempDir();
  fs::create_directory(dir + "/blobs");
  WriteFile(dir + "/blobs", "x", WriteSafetensors({{"a", DType::kU8, {1}, {7}}}));
  fs::create_symlink("blobs/x", dir + "/model.safetensors");
  WriteIndex(dir, {{"a", "model.safetensors"}});
  auto ckpt = Checkpoint::OpenDir(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Find("a")->data[0], 7);
}

TEST(SafetensorsST11, TensorInMapAbsentFromShard) {
  const std::string dir = TempDir();
  WriteFile(dir, "s1.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {1}}}));
  WriteIndex(dir, {{"a", "s1.safetensors"}, {"layers.9.w", "s1.safetensors"}});
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"index.json", "'layers.9.w'", "s1.safetensors"}));
}

TEST(SafetensorsST11, ExtraTensorInShardAccepted) {
  const std::string dir = TempDir();
  WriteFile(dir, "s1.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {1}}, {"extra", DType::kU8, {1}, {2}}}));
  WriteIndex(dir, {{"a", "s1.safetensors"}});
  auto ckpt = Checkpoint::OpenDir(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_NE((*ckpt)->Find("extra"), nullptr);
  EXPECT_EQ((*ckpt)->Find("extra")->data[0], 2);
}

TEST(SafetensorsST11, SameTensorInTwoShards) {
  const std::string dir = TempDir();
  const std::string s1 = WriteFile(dir, "s1.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {1}}}));
  const std::string s2 =
      WriteFile(dir, "s2.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {1}}, {"b", DType::kU8, {1}, {1}}}));
  WriteIndex(dir, {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"'a'", s1, s2}));
}

TEST(SafetensorsST11, MalformedIndex) {
  const std::string dir = TempDir();
  WriteFile(dir, "model.safetensors.index.json", "{\"weight_map\": [1]}");
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"index.json", "weight_map"}));
  WriteFile(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 5}}");
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"index.json", "'a'"}));
  WriteFile(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": \"x\", \"a\": \"y\"}}");
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"index.json", "duplicate key 'a'"}));
  WriteFile(dir, "model.safetensors.index.json", "{\"weight_map\": {}} trailing");
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"index.json", "JSON"}));
}

TEST(SafetensorsST11, BadShardPropagatesFileError) {
  const std::string dir = TempDir();
  WriteFile(dir, "s1.safetensors", std::string(5, 'x'));
  WriteIndex(dir, {{"a", "s1.safetensors"}});
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {dir + "/s1.safetensors", "header too small"}));
}

// ---- directories without an index ----------------------------------------------------------------

TEST(SafetensorsCheckpoint, NoFiles) {
  const std::string dir = TempDir();
  WriteFile(dir, "config.json", "{}");
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {"no .safetensors files in " + dir}));
}

TEST(SafetensorsCheckpoint, NotADirectory) {
  const std::string dir = TempDir() + "/absent";
  EXPECT_TRUE(FailsWith(Checkpoint::OpenDir(dir).status(), {dir}));
}

TEST(SafetensorsCheckpoint, AllFilesWithoutIndex) {
  const std::string dir = TempDir();
  WriteFile(dir, "b.safetensors", WriteSafetensors({{"b", DType::kI64, {1}, Iota(8)}}));
  WriteFile(dir, "a.safetensors", WriteSafetensors({{"a", DType::kU8, {1}, {9}}}));
  WriteFile(dir, "notes.txt", "ignored");
  auto ckpt = Checkpoint::OpenDir(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->all().size(), 2u);
  EXPECT_EQ((*ckpt)->Find("a")->data[0], 9);
  EXPECT_EQ(BytesOf(*(*ckpt)->Find("b")), Iota(8));
}

TEST(SafetensorsCheckpoint, FromFiles) {
  auto a = SafetensorsFile::FromMemory(
      std::make_shared<const std::vector<uint8_t>>(WriteSafetensors({{"a", DType::kU8, {1}, {3}}})), "builtin:a");
  auto b = SafetensorsFile::FromMemory(
      std::make_shared<const std::vector<uint8_t>>(WriteSafetensors({{"b", DType::kU8, {1}, {4}}})), "builtin:b");
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  files.push_back(std::move(a).value());
  files.push_back(std::move(b).value());
  auto ckpt = Checkpoint::FromFiles(std::move(files));
  EXPECT_EQ(ckpt->Find("a")->data[0], 3);
  EXPECT_EQ(ckpt->Find("b")->data[0], 4);
  EXPECT_EQ(ckpt->Find("b")->file, "builtin:b");
}

TEST(SafetensorsCheckpointDeathTest, FromFilesDuplicateAborts) {
  auto make = [] {
    auto bytes = std::make_shared<const std::vector<uint8_t>>(WriteSafetensors({{"a", DType::kU8, {1}, {3}}}));
    return std::move(SafetensorsFile::FromMemory(bytes, "builtin")).value();
  };
  EXPECT_DEATH(
      {
        std::vector<std::unique_ptr<SafetensorsFile>> files;
        files.push_back(make());
        files.push_back(make());
        Checkpoint::FromFiles(std::move(files));
      },
      "'a'");
}

// ---- writer round trip ---------------------------------------------------------------------------

TEST(SafetensorsWriter, RoundTrip) {
  const std::vector<TensorToWrite> tensors = {
      {"w.fp8", DType::kF8_E4M3, {3, 5}, Iota(15, 1)},
      {"w.scale", DType::kF8_E8M0, {2}, {127, 128}},
      {"embed", DType::kBF16, {2, 3}, Iota(12, 20)},
      {"ids", DType::kI64, {4}, Iota(32, 40)},
      {"norm", DType::kF32, {2, 2}, Iota(16, 80)},
      {"packed", DType::kF4, {6}, Iota(3, 200)},
      {"scalar", DType::kU8, {}, {42}},
      {"empty", DType::kF32, {0, 7}, {}},
  };
  const std::vector<uint8_t> image = WriteSafetensors(tensors, {{"format", "pt"}});
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | image[i];
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(image[8], '{');
  EXPECT_EQ(image[8 + header_len - 1] == ' ' || image[8 + header_len - 1] == '}', true);

  for (bool from_memory : {false, true}) {
    SCOPED_TRACE(from_memory ? "FromMemory" : "Open");
    auto file = from_memory ? SafetensorsFile::FromMemory(std::make_shared<const std::vector<uint8_t>>(image), "mem")
                            : SafetensorsFile::Open(WriteModel(std::string(image.begin(), image.end())));
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_EQ((*file)->metadata().at("format"), "pt");
    ASSERT_EQ((*file)->tensors().size(), tensors.size());
    for (const TensorToWrite& t : tensors) {
      const TensorInfo& got = (*file)->tensors().at(t.name);
      EXPECT_EQ(got.name, t.name);
      EXPECT_EQ(got.dtype, t.dtype) << t.name;
      EXPECT_EQ(got.shape, t.shape) << t.name;
      EXPECT_EQ(got.nbytes, t.bytes.size()) << t.name;
      EXPECT_EQ(BytesOf(got), t.bytes) << t.name;
      EXPECT_EQ(got.file, (*file)->path());
    }
  }
}

TEST(SafetensorsWriter, LayoutInGivenOrder) {
  const std::vector<uint8_t> image =
      WriteSafetensors({{"z", DType::kU8, {2}, {1, 2}}, {"a", DType::kU8, {3}, {3, 4, 5}}});
  auto file = SafetensorsFile::FromMemory(std::make_shared<const std::vector<uint8_t>>(image), "mem");
  ASSERT_TRUE(file.ok()) << file.status();
  const uint8_t* base = (*file)->tensors().at("z").data;
  EXPECT_EQ((*file)->tensors().at("a").data, base + 2);
  EXPECT_EQ(image.back(), 5);
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsFromMemory, ErrorsNameTheImage) {
  auto st = SafetensorsFile::FromMemory(std::make_shared<const std::vector<uint8_t>>(3, 0), "builtin:v4-tiny");
  EXPECT_TRUE(FailsWith(st.status(), {"builtin:v4-tiny", "header too small"}));
  EXPECT_FALSE(SafetensorsFile::FromMemory(nullptr, "x").ok());
}

// ---- the shared golden checkpoint ----------------------------------------------------------------

TEST(SafetensorsGolden, TinyModel) {
  if (!dsv4::testing::SharedAvailable()) GTEST_SKIP() << "shared/ golden data not available";
  const std::string path = dsv4::testing::SharedDir() + "/golden/v4-tiny/model.safetensors";
  auto file = OpenOk(path);
  ASSERT_NE(file, nullptr);
  EXPECT_GT(file->tensors().size(), 100u);
  const TensorInfo& embed = file->tensors().at("embed.weight");
  EXPECT_EQ(embed.dtype, DType::kBF16);
  EXPECT_EQ(embed.shape, (std::vector<int64_t>{1024, 256}));
  EXPECT_EQ(embed.nbytes, 1024u * 256u * 2u);
  EXPECT_EQ(embed.file, path);
  const TensorInfo& w1 = file->tensors().at("layers.0.ffn.experts.0.w1.weight");
  EXPECT_EQ(w1.dtype, DType::kI8);
  EXPECT_EQ(w1.shape, (std::vector<int64_t>{128, 128}));
  EXPECT_EQ(w1.nbytes, 128u * 128u);
  // Every tensor lies inside the file.
  for (const auto& [name, t] : file->tensors()) {
    EXPECT_EQ(t.nbytes * 8, static_cast<uint64_t>(t.numel()) * DTypeBits(t.dtype)) << name;
  }
}

}  // namespace
}  // namespace dsv4

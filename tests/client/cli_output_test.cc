// The `plume` CLI's interface, through the real binaries: --json documents
// (one on stdout, stable keys, values equal to the text and .npy forms),
// flag spellings (kebab-case everywhere, underscores accepted, old spellings
// kept), float64 .npy input, and the error for a server that cannot be
// reached.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <set>
#include <string>
#include <vector>

#include "plume/io/array.h"
#include "plume/io/npy.h"
#include "tests/client/cli_fixture.h"

namespace {

using namespace plume::cli_testing;
using Json = nlohmann::ordered_json;  // keys in document order

// Parses `r`'s stdout as one JSON document (failing the test if it is not).
Json Parse(const RunResult& r) {
  Json j = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << "stdout is not one JSON document:\n" << r.out << r.err;
  return j;
}

std::vector<std::string> Keys(const Json& j) {
  std::vector<std::string> k;
  for (auto it = j.begin(); it != j.end(); ++it) k.push_back(it.key());
  return k;
}

const std::vector<std::string> kMatrixKeys = {
    "name",         "rows",    "cols",      "format",  "scale_mode", "source_dtype",  "non_saturating",
    "padded_cols",  "row_stride_bytes", "num_scales", "resident_bytes", "created_unix_ms", "created",
    "placement",    "devices", "shard_rows", "backend", "content_hash", "gemv_kernels"};
const std::vector<std::string> kCacheKeys = {
    "name",        "kv_heads",         "seq",        "head_dim", "format", "scale_mode",
    "source_dtype", "non_saturating", "page_tokens", "row_stride_bytes", "page_bytes", "pages",
    "capacity_tokens", "resident_bytes", "created_unix_ms", "created", "backend"};

// The values of a --json result, flattened.
std::vector<double> Flatten(const Json& j) {
  std::vector<double> out;
  if (j.is_array()) {
    for (const auto& e : j) {
      const auto sub = Flatten(e);
      out.insert(out.end(), sub.begin(), sub.end());
    }
  } else {
    out.push_back(j.get<double>());
  }
  return out;
}

class CliOutputTest : public E2eTest {
 protected:
  void Save(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    ASSERT_TRUE(plume::io::WriteNpy(File(name), plume::io::FromFloats(std::move(shape), v.data())).ok());
  }
  // A float64 .npy of `v` (numpy's default dtype), written by hand.
  void SaveF64(const std::string& name, const std::string& shape, const std::vector<double>& v) {
    std::string dict = "{'descr': '<f8', 'fortran_order': False, 'shape': " + shape + ", }";
    while ((10 + dict.size() + 1) % 64 != 0) dict.push_back(' ');
    dict.push_back('\n');
    std::string image = "\x93NUMPY\x01";
    image.push_back('\0');
    image.push_back(static_cast<char>(dict.size() & 0xff));
    image.push_back(static_cast<char>(dict.size() >> 8));
    image += dict;
    image.append(reinterpret_cast<const char*>(v.data()), v.size() * 8);
    std::ofstream(File(name), std::ios::binary) << image;
  }
};

TEST_F(CliOutputTest, JsonDocumentsHaveStableKeysAndTheValues) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const int64_t rows = 30, cols = 40, batch = 3;
  Save("w.npy", {rows, cols}, RandomFloats(rows * cols, 501, 1.0f));
  Save("x.npy", {batch, cols}, RandomFloats(batch * cols, 502, 1.0f));

  auto up = Cli({"upload", "w", File("w.npy"), "--json"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  const Json uploaded = Parse(up);
  EXPECT_EQ(Keys(uploaded), kMatrixKeys) << uploaded.dump(1);
  EXPECT_EQ(uploaded["name"], "w");
  EXPECT_EQ(uploaded["rows"], rows);
  EXPECT_EQ(uploaded["cols"], cols);
  EXPECT_EQ(uploaded["format"], "e4m3");
  EXPECT_EQ(uploaded["scale_mode"], "row");
  EXPECT_EQ(uploaded["source_dtype"], "f32");
  EXPECT_EQ(uploaded["backend"], "cpu");
  EXPECT_EQ(uploaded["content_hash"].get<std::string>().rfind("plume64v2:", 0), 0u) << uploaded.dump(1);
  EXPECT_GT(uploaded["resident_bytes"].get<int64_t>(), rows * cols);

  auto info = Cli({"info", "w", "--json"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(Parse(info), uploaded);
  auto list = Cli({"list", "--json"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  const Json listed = Parse(list);
  EXPECT_EQ(Keys(listed), std::vector<std::string>{"matrices"});
  ASSERT_EQ(listed["matrices"].size(), 1u);
  EXPECT_EQ(listed["matrices"][0], uploaded);

  // GEMV: the values printed are those written to -o.
  ASSERT_EQ(Cli({"gemv", "w", File("x.npy"), "-o", File("y.npy")}).exit_code, 0);
  auto y = plume::io::ReadNpy(File("y.npy"));
  ASSERT_TRUE(y.ok()) << y.status();
  auto gemv = Cli({"gemv", "w", File("x.npy"), "--json"});
  ASSERT_EQ(gemv.exit_code, 0) << gemv.err;
  const Json g = Parse(gemv);
  EXPECT_EQ(Keys(g), (std::vector<std::string>{"matrix", "input", "seconds", "output", "values"}));
  EXPECT_EQ(g["matrix"], "w");
  EXPECT_EQ(g["input"], (Json{{"file", File("x.npy")}, {"file_dtype", "f32"}, {"dtype", "f32"}, {"shape", {batch, cols}}}));
  EXPECT_EQ(g["output"], (Json{{"file", nullptr}, {"dtype", "f32"}, {"shape", {batch, rows}}}));
  EXPECT_GT(g["seconds"].get<double>(), 0);
  ASSERT_EQ(g["values"].size(), static_cast<size_t>(batch));
  ASSERT_EQ(g["values"][0].size(), static_cast<size_t>(rows));
  const std::vector<float> yv = plume::io::ToFloats(*y);
  const std::vector<double> jv = Flatten(g["values"]);
  ASSERT_EQ(jv.size(), yv.size());
  for (size_t i = 0; i < yv.size(); ++i) ASSERT_EQ(static_cast<float>(jv[i]), yv[i]) << i;
  auto written = Cli({"gemv", "w", File("x.npy"), "-o", File("y2.npy"), "--json"});
  ASSERT_EQ(written.exit_code, 0) << written.err;
  const Json w2 = Parse(written);
  EXPECT_TRUE(w2["values"].is_null());
  EXPECT_EQ(w2["output"]["file"], File("y2.npy"));

  // K/V caches and attention.
  const int64_t kv_heads = 2, heads = 4, seq = 70, dim = 16;
  Save("k.npy", {kv_heads, seq, dim}, RandomFloats(kv_heads * seq * dim, 503, 1.0f));
  Save("k2.npy", {kv_heads, 5, dim}, RandomFloats(kv_heads * 5 * dim, 504, 1.0f));
  Save("q.npy", {1, heads, 2, dim}, RandomFloats(heads * 2 * dim, 505, 1.0f));
  auto kvu = Cli({"kv", "upload", "c", File("k.npy"), File("k.npy"), "--json"});
  ASSERT_EQ(kvu.exit_code, 0) << kvu.err;
  const Json cache = Parse(kvu);
  EXPECT_EQ(Keys(cache), kCacheKeys) << cache.dump(1);
  EXPECT_EQ(cache["seq"], seq);
  EXPECT_EQ(cache["scale_mode"], "block");
  auto kva = Cli({"kv", "append", "c", File("k2.npy"), File("k2.npy"), "--json"});
  ASSERT_EQ(kva.exit_code, 0) << kva.err;
  EXPECT_EQ(Parse(kva)["seq"], seq + 5);
  auto kvi = Cli({"kv", "info", "c", "--json"});
  ASSERT_EQ(kvi.exit_code, 0) << kvi.err;
  const Json appended = Parse(kvi);
  EXPECT_EQ(appended["pages"], 2);
  EXPECT_EQ(appended["capacity_tokens"], 128);
  auto kvl = Cli({"kv", "list", "--json"});
  ASSERT_EQ(kvl.exit_code, 0) << kvl.err;
  EXPECT_EQ(Parse(kvl), (Json{{"caches", {appended}}}));

  ASSERT_EQ(Cli({"attend", "c", File("q.npy"), "--causal", "-o", File("o.npy")}).exit_code, 0);
  auto o = plume::io::ReadNpy(File("o.npy"));
  ASSERT_TRUE(o.ok()) << o.status();
  auto att = Cli({"attend", "c", File("q.npy"), "--causal", "--json"});
  ASSERT_EQ(att.exit_code, 0) << att.err;
  const Json a = Parse(att);
  EXPECT_EQ(Keys(a), (std::vector<std::string>{"cache", "query", "causal", "softmax_scale", "seconds", "output",
                                               "values"}));
  EXPECT_EQ(a["causal"], true);
  EXPECT_TRUE(a["softmax_scale"].is_null());
  EXPECT_EQ(a["output"]["shape"], (Json{1, heads, 2, dim}));
  const std::vector<double> av = Flatten(a["values"]);
  const std::vector<float> ov = plume::io::ToFloats(*o);
  ASSERT_EQ(av.size(), ov.size());
  for (size_t i = 0; i < ov.size(); ++i) ASSERT_EQ(static_cast<float>(av[i]), ov[i]) << i;

  auto health = Cli({"health", "--json"});
  ASSERT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(Parse(health), (Json{{"server", "127.0.0.1:" + std::to_string(port_)},
                                 {"service", ""},
                                 {"status", "SERVING"},
                                 {"serving", true}}));

  // An error prints nothing on stdout: `error: CODE: message` on stderr.
  auto missing = Cli({"info", "nope", "--json"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.out, "");
  EXPECT_NE(missing.err.find("error: NOT_FOUND"), std::string::npos) << missing.err;
}

// Every long option of every subcommand is listed with both spellings.
TEST_F(CliOutputTest, EveryFlagIsKebabCaseWithAnUnderscoreAlias) {
  const std::vector<std::vector<std::string>> commands = {
      {},           {"upload"},         {"upload-model"}, {"list"},         {"info"},         {"delete"},
      {"gemv"},     {"kv", "upload"},   {"kv", "append"}, {"kv", "list"},   {"kv", "info"},   {"kv", "delete"},
      {"attend"},   {"bench"},          {"health"}};
  const std::regex option_line(R"(^\s+(-[-A-Za-z0-9_,]+))");
  std::set<std::string> seen;
  for (auto args : commands) {
    args.push_back("--help");
    auto r = CliAt("127.0.0.1:1", args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::istringstream lines(r.out);
    int options = 0;
    for (std::string line; std::getline(lines, line);) {
      std::smatch m;
      if (!std::regex_search(line, m, option_line)) continue;
      std::vector<std::string> names;
      std::istringstream parts(m[1].str());
      for (std::string n; std::getline(parts, n, ',');) names.push_back(n);
      ++options;
      // The first long name is the kebab-case one.
      for (const std::string& n : names) {
        if (n.rfind("--", 0) != 0) continue;
        EXPECT_EQ(n.find('_'), std::string::npos) << "first spelling " << n << " is not kebab-case: " << line;
        break;
      }
      for (const std::string& n : names) {
        seen.insert(n);
        if (n.rfind("--", 0) != 0) continue;
        std::string twin = "--";
        for (char c : n.substr(2)) twin += c == '-' ? '_' : c == '_' ? '-' : c;
        if (twin == n) continue;
        EXPECT_NE(std::find(names.begin(), names.end(), twin), names.end())
            << n << " has no twin " << twin << ": " << line;
      }
    }
    EXPECT_GE(options, 1) << r.out;  // -h,--help at least
  }
  // The spellings older scripts and docs used are still there.
  for (const char* old : {"--out-dtype", "--output_dtype", "--window_ms", "--max_windows", "--max_seconds",
                          "--metrics_url", "--metrics_user", "--metrics_password_file", "--max_outstanding",
                          "--tls-ca", "--token-file", "--scale-tensor", "--non-saturating"}) {
    EXPECT_EQ(seen.count(old), 1u) << old;
  }
}

// The aliases work, not only appear in --help.
TEST_F(CliOutputTest, OldAndUnderscoreSpellingsWork) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  Save("w.npy", {16, 32}, RandomFloats(16 * 32, 601, 1.0f));
  Save("x.npy", {32}, RandomFloats(32, 602, 1.0f));
  ASSERT_EQ(Cli({"upload", "w", File("w.npy"), "--non_saturating", "--scale", "row"}).exit_code, 0);
  for (const char* flag : {"--output-dtype", "--output_dtype", "--out-dtype", "--out_dtype"}) {
    auto r = Cli({"gemv", "w", File("x.npy"), flag, "f16", "-o", File("y.npy")});
    ASSERT_EQ(r.exit_code, 0) << flag << ": " << r.err;
    auto y = plume::io::ReadNpy(File("y.npy"));
    ASSERT_TRUE(y.ok());
    EXPECT_EQ(y->dtype, plume::io::ElemType::kF16) << flag;
  }
  Save("k.npy", {1, 8, 16}, RandomFloats(8 * 16, 603, 1.0f));
  Save("q.npy", {1, 1, 1, 16}, RandomFloats(16, 604, 1.0f));
  ASSERT_EQ(Cli({"kv", "upload", "c", File("k.npy"), File("k.npy")}).exit_code, 0);
  for (const char* flag : {"--output-dtype", "--output_dtype", "--out-dtype"}) {
    auto r = Cli({"attend", "c", File("q.npy"), flag, "f16", "--json"});
    ASSERT_EQ(r.exit_code, 0) << flag << ": " << r.err;
    EXPECT_EQ(Parse(r)["output"]["dtype"], "f16") << flag;
  }
  // A global flag with its underscore spelling, after the subcommand.
  auto info = Cli({"info", "w", "--upload_deadline", "5", "--json"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(Parse(info)["non_saturating"], true);
}

TEST_F(CliOutputTest, Float64InputsAreConvertedWithANote) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const int64_t rows = 24, cols = 48;
  const std::vector<float> w32 = RandomFloats(rows * cols, 701, 1.0f);
  const std::vector<float> x32 = RandomFloats(2 * cols, 702, 1.0f);
  // float64 files holding values that float32 holds exactly, and their float32 twins.
  SaveF64("w64.npy", "(24, 48)", std::vector<double>(w32.begin(), w32.end()));
  SaveF64("x64.npy", "(2, 48)", std::vector<double>(x32.begin(), x32.end()));
  Save("w32.npy", {rows, cols}, w32);
  Save("x32.npy", {2, cols}, x32);

  auto up64 = Cli({"upload", "w64", File("w64.npy"), "--json"});
  ASSERT_EQ(up64.exit_code, 0) << up64.err;
  EXPECT_NE(up64.err.find("note: " + File("w64.npy") + " is float64 (numpy's default); converted to float32"),
            std::string::npos)
      << up64.err;
  auto up32 = Cli({"upload", "w32", File("w32.npy"), "--json"});
  ASSERT_EQ(up32.exit_code, 0) << up32.err;
  EXPECT_EQ(up32.err.find("note:"), std::string::npos) << up32.err;
  // The server got the same float32 matrix: the same content hash.
  EXPECT_EQ(Parse(up64)["content_hash"], Parse(up32)["content_hash"]);
  EXPECT_EQ(Parse(up64)["source_dtype"], "f32");

  auto g64 = Cli({"gemv", "w64", File("x64.npy"), "--json"});
  ASSERT_EQ(g64.exit_code, 0) << g64.err;
  EXPECT_NE(g64.err.find("note: " + File("x64.npy") + " is float64"), std::string::npos) << g64.err;
  auto g32 = Cli({"gemv", "w32", File("x32.npy"), "--json"});
  ASSERT_EQ(g32.exit_code, 0) << g32.err;
  const Json a = Parse(g64), b = Parse(g32);
  EXPECT_EQ(a["input"]["file_dtype"], "f64");
  EXPECT_EQ(a["input"]["dtype"], "f32");
  EXPECT_EQ(a["values"], b["values"]);

  // Values beyond float32's range: counted in the note.
  SaveF64("big.npy", "(48,)", std::vector<double>(48, 1e300));
  auto big = Cli({"gemv", "w32", File("big.npy")});
  EXPECT_NE(big.err.find("48 values beyond float32's range became +-inf"), std::string::npos) << big.err;

  // K/V and queries too.
  const std::vector<float> k = RandomFloats(2 * 10 * 16, 703, 1.0f);
  SaveF64("k64.npy", "(2, 10, 16)", std::vector<double>(k.begin(), k.end()));
  auto kv = Cli({"kv", "upload", "c", File("k64.npy"), File("k64.npy")});
  ASSERT_EQ(kv.exit_code, 0) << kv.err;
  EXPECT_NE(kv.err.find("k64.npy is float64"), std::string::npos) << kv.err;
  SaveF64("q64.npy", "(1, 2, 1, 16)", std::vector<double>(k.begin(), k.begin() + 32));
  auto att = Cli({"attend", "c", File("q64.npy"), "--json"});
  ASSERT_EQ(att.exit_code, 0) << att.err;
  EXPECT_EQ(Parse(att)["query"]["file_dtype"], "f64");
}

TEST_F(CliOutputTest, AServerThatCannotBeReachedIsNamed) {
  // A port bound but not listening: connections to it are refused, and no
  // other process can take it meanwhile.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string address = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  Save("w.npy", {4, 8}, RandomFloats(32, 801, 1.0f));
  Save("x.npy", {8}, RandomFloats(8, 802, 1.0f));

  const std::vector<std::vector<std::string>> commands = {
      {"list"}, {"list", "--json"}, {"info", "w"}, {"health"}, {"gemv", "w", File("x.npy")},
      {"upload", "w", File("w.npy")}, {"kv", "list"}, {"delete", "w"}};
  for (const auto& args : commands) {
    auto r = CliAt(address, args);
    EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << r.err;
    EXPECT_EQ(r.out, "") << args[0];
    EXPECT_NE(r.err.find("error: UNAVAILABLE: cannot reach plume server at " + address + " ("), std::string::npos)
        << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find("); is it running? pass --server HOST:PORT"), std::string::npos) << args[0] << ": " << r.err;
  }
  close(fd);
}

}  // namespace

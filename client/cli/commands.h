// The `plume` subcommands. Each returns the process exit code:
// 0 success, 1 an RPC failed, 2 a usage or local input error.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "plume/client/client.h"
#include "plume/io/array.h"

namespace plume::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRpc = 1;
inline constexpr int kExitUsage = 2;

struct GlobalFlags {
  std::string server = "localhost:50051";
  // Unary calls: the call's deadline. Streamed uploads: per message (each
  // message must be accepted, and the answer come, within it).
  double timeout_s = 30.0;
  // Streamed uploads: a deadline for the whole upload; 0: none.
  double upload_deadline_s = 0.0;
  bool tls = false;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string token;
  std::string token_file;
};

struct UploadFlags {
  std::string name;
  std::string file;  // .npy or .safetensors; empty with --codes
  std::string format;  // "" = e4m3 (F32/F16/BF16 sources); FP8 tensors carry theirs
  std::string scale;   // "" = row (F32/F16/BF16 sources); FP8: from the scale tensor, or "none"
  std::string tensor;
  std::string scale_tensor;  // FP8 safetensors: the scale tensor's KEY
  std::string codes;         // --codes: [rows, cols] uint8 FP8 codes (.npy)
  std::string scales;        // --scales: float32 scales (.npy); the shape picks the mode
  bool non_saturating = false;
  int chunk_mib = 1;
  std::string placement = "auto";  // multi-GPU servers
  bool json = false;
};

struct UploadModelFlags {
  std::string file;  // .safetensors or model.safetensors.index.json
  std::string match;   // regex (std::regex ECMAScript, searched); "" = names ending in "weight"
  std::string prefix;  // prepended to each tensor name
  std::string format;  // F32/F16/BF16 tensors: "" = e4m3
  std::string scale;   // F32/F16/BF16 tensors: "" = row
  bool non_saturating = false;
  std::string placement = "auto";
  bool replace = false;  // replace resident matrices of the same name but other content
};

struct GemvFlags {
  std::string name;
  std::string input;
  std::string output;
  std::string output_dtype = "f32";
  bool json = false;
};

struct KvUploadFlags {
  std::string name;
  std::string k_file;
  std::string v_file;
  std::string format = "e4m3";
  std::string scale = "block";
  bool non_saturating = false;
  bool json = false;
};

struct AttendFlags {
  std::string name;
  std::string input;
  std::string output;
  std::string output_dtype = "f32";
  double scale = 0.0;  // 0: 1/sqrt(head_dim)
  bool causal = false;
  bool json = false;
};

// Helpers shared by the subcommands.
// Prints "error: CODE: message" to stderr and returns `exit_code`.
int Fail(const absl::Status& s, int exit_code);
int UsageError(const std::string& msg);  // Fail(INVALID_ARGUMENT, kExitUsage)
absl::StatusOr<std::unique_ptr<Client>> MakeClient(const GlobalFlags& g);
// A streamed upload's call options: --timeout per message, --upload-deadline
// (if any) for the whole upload.
CallOptions UploadCallOptions(const GlobalFlags& g);
// An RPC's failure as the CLI reports it: UNAVAILABLE on a channel that
// never reached the server becomes "cannot reach plume server at ADDRESS
// (...); is it running? pass --server HOST:PORT".
absl::Status ExplainRpcError(const GlobalFlags& g, const Client& client, const absl::Status& s);
// Fail(ExplainRpcError(...), kExitRpc).
int RpcFail(const GlobalFlags& g, const Client& client, const absl::Status& s);
// Reads a float .npy file (f32, f16; f64, numpy's default, is converted to
// f32 with a note on stderr). `file_dtype`, if given, receives the file's
// own dtype name (f64 when converted).
absl::StatusOr<io::Array> ReadFloatNpy(const std::string& path, std::string* file_dtype = nullptr);
absl::StatusOr<v1::DType> ParseFloatDType(const std::string& s);  // f32, f16, bf16
// The wire dtype of a float array.
v1::DType ToWireDType(io::ElemType t);
// Parses --format (e4m3, e5m2; "" = e4m3), --scale (none, tensor, row,
// block128, block128x128; "" = row) and --placement.
absl::StatusOr<v1::DType> ParseFormat(const std::string& s);
absl::StatusOr<v1::ScaleMode> ParseScaleMode(const std::string& s);
absl::StatusOr<v1::Placement> ParsePlacement(const std::string& s);
// Prints rows as aligned columns: words left-aligned, the `numeric` columns
// right-aligned.
void PrintTable(const std::vector<std::vector<std::string>>& rows, const std::set<size_t>& numeric);

int RunUpload(const GlobalFlags& g, const UploadFlags& f);
// FP8 inputs of `plume upload` (checkpoint_commands.cc): an F8_E4M3/F8_E5M2
// tensor of a .safetensors file with its scale tensor, or --codes/--scales.
int RunUploadFp8Tensor(const GlobalFlags& g, const UploadFlags& f, const std::string& key);
int RunUploadCodes(const GlobalFlags& g, const UploadFlags& f);
// plume upload-model.
int RunUploadModel(const GlobalFlags& g, const UploadModelFlags& f);
// `json`: --json (output.h).
int RunList(const GlobalFlags& g, bool json);
int RunInfo(const GlobalFlags& g, const std::string& name, bool json);
int RunDelete(const GlobalFlags& g, const std::string& name);
int RunGemv(const GlobalFlags& g, const GemvFlags& f);
int RunHealth(const GlobalFlags& g, const std::string& service, bool json);
// plume kv upload|append|list|info|delete, plume attend.
int RunKvUpload(const GlobalFlags& g, const KvUploadFlags& f);
int RunKvAppend(const GlobalFlags& g, const std::string& name, const std::string& k_file,
                const std::string& v_file, bool json);
int RunKvList(const GlobalFlags& g, bool json);
int RunKvInfo(const GlobalFlags& g, const std::string& name, bool json);
int RunKvDelete(const GlobalFlags& g, const std::string& name);
int RunAttend(const GlobalFlags& g, const AttendFlags& f);

}  // namespace plume::cli

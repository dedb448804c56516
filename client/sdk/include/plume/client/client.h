// plume::Client: a synchronous call per MatrixService and AttentionService
// RPC, a GemvSession for GemvStream, an AttentionSession for
// AttentionStream, and a grpc.health.v1 check. Thread-safe: one Client may be
// shared by any number of threads (it owns one gRPC channel).
//
//   plume::ClientOptions opts;
//   opts.target = "localhost:50051";
//   auto client = plume::Client::Connect(opts);
//   if (!client.ok()) ...;
//   auto y = (*client)->Gemv("w", plume::TensorRef::F32(x.data(), {cols}));
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "plume/client/attention_session.h"
#include "plume/client/echo_session.h"
#include "plume/client/gemv_session.h"
#include "plume/client/status.h"
#include "plume/client/tensor.h"
#include "plume/io/byte_source.h"
#include "plume/v1/attention.grpc.pb.h"
#include "plume/v1/attention.pb.h"
#include "plume/v1/diagnostics.grpc.pb.h"
#include "plume/v1/plume.grpc.pb.h"
#include "plume/v1/plume.pb.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace plume {

struct ClientOptions {
  // gRPC target: "host:port", "dns:///name:port", "unix:///path", ...
  std::string target = "localhost:50051";
  // Deadline for each call that does not set its own (CallOptions::timeout).
  std::chrono::milliseconds default_timeout{std::chrono::seconds(30)};
  // Largest message sent or received (a GEMV result of B x rows floats must fit).
  int max_message_bytes = 64 << 20;
  // Size of the data chunks UploadMatrix / UploadPacked stream (clamped to
  // [4 KiB, max_message_bytes - 1 KiB]).
  int64_t upload_chunk_bytes = 1 << 20;

  // TLS: used when `use_tls` is set or any of the files is given. Files hold
  // PEM. An empty CA file means the system roots; cert + key enable mutual TLS.
  bool use_tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // Overrides the name checked against the server certificate (tests only).
  std::string tls_server_name_override;

  // When set, every call carries `authorization: Bearer <token>`.
  std::string bearer_token;

  // Client-side load balancing over the addresses a name resolves to (e.g. a
  // Kubernetes headless Service): "pick_first" (gRPC's default) or "round_robin".
  std::string load_balancing_policy;
  // Retry idempotent calls (Get/List/Delete/Gemv) that fail with UNAVAILABLE,
  // up to this many attempts in all, via gRPC's retry policy. 1 disables it.
  int max_attempts = 3;

  // Gives this client's channel a TCP connection of its own instead of
  // sharing one with other channels to the same target in the process (gRPC
  // shares them by default). A load generator opens several clients with
  // this set to spread its calls over several connections.
  bool dedicated_connection = false;
};

// Per-call overrides.
struct CallOptions {
  // Deadline relative to the call's start; ClientOptions::default_timeout if
  // unset (but see message_timeout).
  std::optional<std::chrono::milliseconds> timeout;
  // Streamed uploads (UploadMatrix, UploadPacked, UploadKV): a per-message
  // timeout instead of a whole-call one. Each message must be accepted by
  // gRPC (which waits, by flow control, for the server to read) within it,
  // and the server's answer must come within it of the last message;
  // otherwise the call is cancelled and returns DEADLINE_EXCEEDED. With it
  // set, `timeout` bounds the whole upload only when set too (unset: no
  // whole-call deadline), so a large upload that keeps moving never times
  // out. Ignored by other calls.
  std::optional<std::chrono::milliseconds> message_timeout;
};

// What to upload: the header fields other than rows/cols/source dtype, which
// come from the tensor.
struct UploadSpec {
  std::string name;
  v1::DType format = v1::DTYPE_E4M3;  // E4M3 or E5M2
  v1::ScaleMode scale_mode = v1::SCALE_MODE_ROW;
  bool non_saturating = false;
  // Where a multi-device server keeps it (plume-server --devices).
  v1::Placement placement = v1::PLACEMENT_AUTO;
  // Optional label of the content (MatrixHeader.content_hash): at most 128
  // of [A-Za-z0-9:._+/=-]; the server keeps it and returns it in
  // MatrixInfo.content_hash. See io::ContentHasher / io::Fp8ContentHash.
  std::string content_hash;
};

// A matrix as resident on the server: its info, the packed words in plume's
// layout and the FP32 scales of its scale mode (GetMatrix include_packed).
struct PackedMatrix {
  v1::MatrixInfo info;
  std::vector<uint32_t> words;
  std::vector<float> scales;
};

// What to upload as a K/V cache: the header fields other than the shape and
// source dtype, which come from the tensors.
struct KvUploadSpec {
  std::string name;
  v1::DType format = v1::DTYPE_E4M3;  // E4M3 or E5M2
  v1::KVScaleMode scale_mode = v1::KV_SCALE_MODE_TOKEN_BLOCK;
  bool non_saturating = false;
};

// Called after each chunk is handed to gRPC, with the payload bytes sent so
// far and the total, on the calling thread.
using UploadProgressFn = std::function<void(int64_t sent_bytes, int64_t total_bytes)>;

enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };
const char* HealthStatusName(HealthStatus s);  // "SERVING", ...

class Client {
 public:
  // Builds the channel (it connects lazily, on the first call). Fails only
  // for bad options, e.g. an unreadable TLS file.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(ClientOptions options);
  // Wraps an existing channel (e.g. an in-process one in tests).
  Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options);
  ~Client();

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Uploads a [rows, cols] F32/F16/BF16 matrix: the server quantizes it.
  absl::StatusOr<v1::MatrixInfo> UploadMatrix(const UploadSpec& spec, const TensorRef& source,
                                              const UploadProgressFn& progress = nullptr,
                                              const CallOptions& call = {});
  // Uploads an already packed matrix: `words` hold rows * padded_cols / 4
  // uint32 in plume's layout and `scales` the FP32 scales for spec.scale_mode.
  absl::StatusOr<v1::MatrixInfo> UploadPacked(const UploadSpec& spec, int64_t rows, int64_t cols,
                                              const uint32_t* words, int64_t num_words,
                                              const float* scales, int64_t num_scales,
                                              const UploadProgressFn& progress = nullptr,
                                              const CallOptions& call = {});

  // The same from FP8 codes as a checkpoint stores them: `codes` holds rows *
  // cols bytes, row-major, one code each (in memory or a range of a file).
  // They are read and packed into plume's layout a message at a time as they
  // are sent, into the message's own buffer: when cols is a multiple of 16
  // the packed bytes are the codes as they are (read straight into the
  // message), otherwise each row gets its zero padding (PackFp8CodesRange).
  // There is no packed copy of the whole matrix.
  absl::StatusOr<v1::MatrixInfo> UploadPackedCodes(const UploadSpec& spec, int64_t rows, int64_t cols,
                                                   const io::ByteSource& codes, const float* scales,
                                                   int64_t num_scales, const UploadProgressFn& progress = nullptr,
                                                   const CallOptions& call = {});

  absl::StatusOr<v1::MatrixInfo> GetMatrix(const std::string& name, const CallOptions& call = {});
  // GetMatrix with include_packed: the resident codes and scales too, the
  // same bytes a pre-packed upload of the matrix would send (the response is
  // the matrix's size: raise max_message_bytes for big ones). FAILED_PRECONDITION
  // when the server returns no words for a non-empty matrix (a server that
  // predates include_packed).
  absl::StatusOr<PackedMatrix> GetMatrixPacked(const std::string& name, const CallOptions& call = {});
  absl::StatusOr<std::vector<v1::MatrixInfo>> ListMatrices(const CallOptions& call = {});
  absl::Status DeleteMatrix(const std::string& name, const CallOptions& call = {});

  // y = W . x for each vector: input [cols] -> [rows], [batch, cols] -> [batch, rows].
  // Optional `input_scale` applies to FP8 inputs only (0 means 1.0).
  absl::StatusOr<HostTensor> Gemv(const std::string& matrix, const TensorRef& input,
                                  v1::DType output_dtype = v1::DTYPE_F32,
                                  const CallOptions& call = {}, float input_scale = 0.0f);

  // Opens a GemvStream on `matrix` (see gemv_session.h).
  absl::StatusOr<std::unique_ptr<GemvSession>> StartGemvSession(const std::string& matrix,
                                                                GemvSessionOptions options = {});

  // ---- AttentionService: K/V caches and attention.

  // Uploads K and V, each [kv_heads, seq, head_dim] in F32/F16/BF16 (same
  // shape and dtype); the server quantizes them into a new cache.
  absl::StatusOr<v1::KVInfo> UploadKV(const KvUploadSpec& spec, const TensorRef& k, const TensorRef& v,
                                      const UploadProgressFn& progress = nullptr,
                                      const CallOptions& call = {});
  // Appends tokens: k and v [kv_heads, tokens, head_dim] (one unary message,
  // so it must fit in max_message_bytes).
  absl::StatusOr<v1::KVInfo> AppendKV(const std::string& name, const TensorRef& k, const TensorRef& v,
                                      const CallOptions& call = {});
  absl::StatusOr<v1::KVInfo> GetKV(const std::string& name, const CallOptions& call = {});
  absl::StatusOr<std::vector<v1::KVInfo>> ListKV(const CallOptions& call = {});
  absl::Status DeleteKV(const std::string& name, const CallOptions& call = {});

  // softmax(scale * Q K^T) V: query [batch, heads, q_len, head_dim] ->
  // output of the same shape in options.output_dtype.
  absl::StatusOr<HostTensor> Attention(const std::string& cache, const TensorRef& query,
                                       const AttentionOptions& options = {},
                                       const CallOptions& call = {});
  // Opens an AttentionStream on `cache` (see attention_session.h).
  absl::StatusOr<std::unique_ptr<AttentionSession>> StartAttentionSession(
      const std::string& cache, AttentionSessionOptions options = {});

  // ---- DiagnosticsService.

  // Sends `payload` and returns what the server sent back (the same bytes).
  absl::StatusOr<HostTensor> Echo(const TensorRef& payload, const CallOptions& call = {});
  // Opens an EchoStream (see echo_session.h).
  absl::StatusOr<std::unique_ptr<EchoSession>> StartEchoSession(EchoSessionOptions options = {});

  // ---- Non-blocking unary calls (gRPC's callback API), for callers that
  // keep many calls in flight from few threads, e.g. `plume bench`. Each
  // returns at once; `done` runs exactly once, on a gRPC thread (or inline
  // when the input is invalid), and must not block. `input` is copied before
  // the call returns. The Client must outlive every call started this way.
  using AsyncDone = std::function<void(absl::StatusOr<HostTensor>)>;
  void GemvAsync(const std::string& matrix, const TensorRef& input, v1::DType output_dtype,
                 AsyncDone done, const CallOptions& call = {});
  void EchoAsync(const TensorRef& payload, AsyncDone done, const CallOptions& call = {});

  // grpc.health.v1.Health/Check for `service` ("" = the whole server).
  absl::StatusOr<HealthStatus> CheckHealth(const std::string& service = "",
                                           const CallOptions& call = {});

  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  // A context with the deadline and the token set.
  std::unique_ptr<grpc::ClientContext> MakeContext(const CallOptions& call) const;
  std::unique_ptr<grpc::ClientContext> MakeContext(std::chrono::milliseconds timeout) const;
  // A streamed upload's context: no deadline when only a per-message
  // timeout is set (CallOptions::message_timeout).
  std::unique_ptr<grpc::ClientContext> MakeUploadContext(const CallOptions& call) const;
  int64_t ChunkBytes() const;  // upload_chunk_bytes, clamped
  // Writes bytes [offset, offset + n) of an upload's data into `out`; an
  // error cancels the upload and is what it returns.
  using DataFill = std::function<absl::Status(int64_t offset, int64_t n, char* out)>;
  // The header, `data_bytes` of data made by `fill` a message at a time into
  // the message's own buffer (one buffer for the whole upload), the scales.
  absl::StatusOr<v1::MatrixInfo> Upload(const v1::MatrixHeader& header, int64_t data_bytes,
                                        const DataFill& fill, std::string_view scales,
                                        const UploadProgressFn& progress, const CallOptions& call);
  absl::StatusOr<v1::MatrixInfo> Upload(const v1::MatrixHeader& header, std::string_view data,
                                        std::string_view scales, const UploadProgressFn& progress,
                                        const CallOptions& call);

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MatrixService::Stub> stub_;
  std::unique_ptr<v1::AttentionService::Stub> attention_stub_;
  std::unique_ptr<v1::DiagnosticsService::Stub> diagnostics_stub_;
};

// The channel arguments (message sizes, LB policy, retry service config)
// Client::Connect uses; exposed for callers that build their own channel.
std::string DefaultServiceConfigJson(const ClientOptions& options);

}  // namespace plume

#include "plume/client/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <future>

#include "absl/strings/str_cat.h"
#include "attention_session_impl.h"
#include "echo_session_impl.h"
#include "gemv_session_impl.h"
#include "message_watchdog.h"
#include "plume/io/array.h"
#include "plume/io/checkpoint.h"
#include "plume/kernels/layout.h"

namespace plume {

static_assert(std::endian::native == std::endian::little,
              "plume's wire tensors are little-endian; the SDK sends host memory as is");

const char* HealthStatusName(HealthStatus s) {
  switch (s) {
    case HealthStatus::kServing: return "SERVING";
    case HealthStatus::kNotServing: return "NOT_SERVING";
    case HealthStatus::kServiceUnknown: return "SERVICE_UNKNOWN";
    default: return "UNKNOWN";
  }
}

std::string DefaultServiceConfigJson(const ClientOptions& options) {
  std::string json = "{";
  if (!options.load_balancing_policy.empty()) {
    absl::StrAppend(&json, "\"loadBalancingConfig\": [{\"", options.load_balancing_policy, "\": {}}]");
  }
  if (options.max_attempts >= 2) {
    if (json.size() > 1) json += ", ";
    // Only calls that are safe to repeat; an upload or delete might have
    // taken effect before the connection broke.
    absl::StrAppend(&json,
                    "\"methodConfig\": [{\"name\": ["
                    "{\"service\": \"plume.v1.MatrixService\", \"method\": \"GetMatrix\"}, "
                    "{\"service\": \"plume.v1.MatrixService\", \"method\": \"ListMatrices\"}, "
                    "{\"service\": \"plume.v1.MatrixService\", \"method\": \"Gemv\"}, "
                    "{\"service\": \"plume.v1.AttentionService\", \"method\": \"GetKV\"}, "
                    "{\"service\": \"plume.v1.AttentionService\", \"method\": \"ListKV\"}, "
                    "{\"service\": \"plume.v1.AttentionService\", \"method\": \"Attention\"}, "
                    "{\"service\": \"plume.v1.DiagnosticsService\", \"method\": \"Echo\"}, "
                    "{\"service\": \"grpc.health.v1.Health\", \"method\": \"Check\"}], "
                    "\"retryPolicy\": {\"maxAttempts\": ",
                    std::min(options.max_attempts, 5),
                    ", \"initialBackoff\": \"0.1s\", \"maxBackoff\": \"1s\", "
                    "\"backoffMultiplier\": 2, \"retryableStatusCodes\": [\"UNAVAILABLE\"]}}]");
  }
  json += "}";
  return json;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(ClientOptions options) {
  if (options.target.empty()) return absl::InvalidArgumentError("empty server target");
  if (options.max_message_bytes < (64 << 10)) {
    return absl::InvalidArgumentError("max_message_bytes must be at least 64 KiB");
  }
  if (options.load_balancing_policy != "" && options.load_balancing_policy != "pick_first" &&
      options.load_balancing_policy != "round_robin") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown load balancing policy '", options.load_balancing_policy, "'"));
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  const bool tls = options.use_tls || !options.tls_ca_file.empty() ||
                   !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (tls) {
    if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
      return absl::InvalidArgumentError("a TLS client certificate needs its key, and vice versa");
    }
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca_file.empty()) {
      if (auto s = io::ReadFileToString(options.tls_ca_file, &ssl.pem_root_certs); !s.ok()) return s;
    }
    if (!options.tls_cert_file.empty()) {
      if (auto s = io::ReadFileToString(options.tls_cert_file, &ssl.pem_cert_chain); !s.ok()) return s;
      if (auto s = io::ReadFileToString(options.tls_key_file, &ssl.pem_private_key); !s.ok()) return s;
    }
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetServiceConfigJSON(DefaultServiceConfigJson(options));
  if (options.dedicated_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (tls && !options.tls_server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name_override);
  }
  auto channel = grpc::CreateCustomChannel(options.target, creds, args);
  return std::make_unique<Client>(std::move(channel), std::move(options));
}

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::MatrixService::NewStub(channel_)),
      attention_stub_(v1::AttentionService::NewStub(channel_)),
      diagnostics_stub_(v1::DiagnosticsService::NewStub(channel_)) {}

Client::~Client() = default;

std::unique_ptr<grpc::ClientContext> Client::MakeContext(std::chrono::milliseconds timeout) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  if (!options_.bearer_token.empty()) {
    ctx->AddMetadata("authorization", "Bearer " + options_.bearer_token);
  }
  return ctx;
}

std::unique_ptr<grpc::ClientContext> Client::MakeContext(const CallOptions& call) const {
  return MakeContext(call.timeout.value_or(options_.default_timeout));
}

std::unique_ptr<grpc::ClientContext> Client::MakeUploadContext(const CallOptions& call) const {
  if (!call.message_timeout.has_value() || call.timeout.has_value()) return MakeContext(call);
  // Per-message timeouts alone: no deadline on the call (the watchdog's).
  auto ctx = MakeContext(options_.default_timeout);
  ctx->set_deadline(std::chrono::system_clock::time_point::max());
  return ctx;
}

namespace {

// The upload header of `spec` for a rows x cols matrix sent as `source`.
v1::MatrixHeader HeaderOf(const UploadSpec& spec, int64_t rows, int64_t cols, v1::DType source) {
  v1::MatrixHeader h;
  h.set_name(spec.name);
  h.set_rows(rows);
  h.set_cols(cols);
  h.set_source_dtype(source);
  h.set_format(spec.format);
  h.set_scale_mode(spec.scale_mode);
  h.set_non_saturating(spec.non_saturating);
  h.set_placement(spec.placement);
  h.set_content_hash(spec.content_hash);
  return h;
}

// `progress`, and each call of it is progress for `watchdog` too.
UploadProgressFn Watched(MessageWatchdog* watchdog, const UploadProgressFn& progress) {
  return [watchdog, &progress](int64_t sent, int64_t total) {
    watchdog->Progress();
    if (progress) progress(sent, total);
  };
}

}  // namespace

int64_t Client::ChunkBytes() const {
  return std::clamp<int64_t>(options_.upload_chunk_bytes, 4 << 10,
                             std::max<int64_t>(4 << 10, options_.max_message_bytes - (1 << 10)));
}

namespace {

// Streams `parts` after the first message (already in `req`), each in chunks
// of `chunk` bytes put into `req` by its setter; reports progress over all of
// them. Returns false once a write fails (Finish then has the status).
template <class Req>
bool WriteChunked(grpc::ClientWriter<Req>* writer, Req& req, int64_t chunk,
                  const std::vector<std::pair<std::string_view, void (*)(Req&, std::string_view)>>& parts,
                  const UploadProgressFn& progress) {
  bool ok = writer->Write(req);
  int64_t total = 0, sent = 0;
  for (const auto& part : parts) total += static_cast<int64_t>(part.first.size());
  if (ok && progress) progress(0, total);
  for (const auto& [data, set] : parts) {
    for (size_t off = 0; ok && off < data.size(); off += static_cast<size_t>(chunk)) {
      const std::string_view piece = data.substr(off, static_cast<size_t>(chunk));
      set(req, piece);
      ok = writer->Write(req);
      if (ok) {
        sent += static_cast<int64_t>(piece.size());
        if (progress) progress(sent, total);
      }
    }
  }
  if (ok) writer->WritesDone();
  return ok;
}

// MatrixHeader.content_hash: at most 128 of [A-Za-z0-9:._+/=-].
absl::Status CheckContentHash(const std::string& h) {
  if (h.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat("content_hash is ", h.size(), " characters; at most 128"));
  }
  for (char c : h) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    std::string_view(":._+/=-").find(c) != std::string_view::npos;
    if (!ok) return absl::InvalidArgumentError("content_hash may hold only A-Z a-z 0-9 and : . _ + / = -");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::MatrixInfo> Client::Upload(const v1::MatrixHeader& header, std::string_view data,
                                              std::string_view scales,
                                              const UploadProgressFn& progress,
                                              const CallOptions& call) {
  return Upload(
      header, static_cast<int64_t>(data.size()),
      [data](int64_t offset, int64_t n, char* out) {
        std::memcpy(out, data.data() + offset, static_cast<size_t>(n));
        return absl::OkStatus();
      },
      scales, progress, call);
}

absl::StatusOr<v1::MatrixInfo> Client::Upload(const v1::MatrixHeader& header, int64_t data_bytes,
                                              const DataFill& fill, std::string_view scales,
                                              const UploadProgressFn& progress,
                                              const CallOptions& call) {
  auto ctx = MakeUploadContext(call);
  MessageWatchdog watchdog(ctx.get(), call.message_timeout);
  const UploadProgressFn report = Watched(&watchdog, progress);
  v1::UploadMatrixResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::UploadMatrixRequest>> writer =
      stub_->UploadMatrix(ctx.get(), &resp);
  v1::UploadMatrixRequest req;
  *req.mutable_header() = header;
  const int64_t chunk = ChunkBytes();
  const int64_t total = data_bytes + static_cast<int64_t>(scales.size());
  bool ok = writer->Write(req);
  if (ok) report(0, total);
  absl::Status filled;
  for (int64_t off = 0; ok && off < data_bytes;) {
    const int64_t n = std::min(chunk, data_bytes - off);
    std::string* d = req.mutable_data();  // the same buffer every message
    d->resize(static_cast<size_t>(n));
    filled = fill(off, n, d->data());
    if (!filled.ok()) {
      ctx->TryCancel();
      break;
    }
    ok = writer->Write(req);
    off += n;
    if (ok) report(off, total);
  }
  if (!filled.ok()) {
    writer->Finish();  // CANCELLED: the upload never finished
    watchdog.Stop();
    return filled;
  }
  for (size_t off = 0; ok && off < scales.size(); off += static_cast<size_t>(chunk)) {
    const std::string_view piece = scales.substr(off, static_cast<size_t>(chunk));
    req.set_scales(piece.data(), piece.size());
    ok = writer->Write(req);
    if (ok) report(data_bytes + static_cast<int64_t>(off + piece.size()), total);
  }
  if (ok) writer->WritesDone();
  watchdog.Progress(/*awaiting_answer=*/true);
  const grpc::Status s = writer->Finish();
  watchdog.Stop();
  if (!s.ok()) return watchdog.Explain(FromGrpcStatus(s));
  return resp.matrix();
}

absl::StatusOr<v1::MatrixInfo> Client::UploadMatrix(const UploadSpec& spec, const TensorRef& source,
                                                    const UploadProgressFn& progress,
                                                    const CallOptions& call) {
  if (auto s = ValidateTensor(source); !s.ok()) return s;
  if (source.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("a matrix must be 2-D, got ", source.shape.size(), " dimensions"));
  }
  if (source.dtype != v1::DTYPE_F32 && source.dtype != v1::DTYPE_F16 &&
      source.dtype != v1::DTYPE_BF16) {
    return absl::InvalidArgumentError("UploadMatrix takes F32, F16 or BF16 data; use UploadPacked for FP8");
  }
  if (auto s = CheckContentHash(spec.content_hash); !s.ok()) return s;
  const v1::MatrixHeader h = HeaderOf(spec, source.shape[0], source.shape[1], source.dtype);
  return Upload(h, source.bytes, {}, progress, call);
}

absl::StatusOr<v1::MatrixInfo> Client::UploadPacked(const UploadSpec& spec, int64_t rows, int64_t cols,
                                                    const uint32_t* words, int64_t num_words,
                                                    const float* scales, int64_t num_scales,
                                                    const UploadProgressFn& progress,
                                                    const CallOptions& call) {
  if (rows < 0 || cols < 0 || num_words < 0 || num_scales < 0) {
    return absl::InvalidArgumentError("negative size");
  }
  if ((num_words > 0 && words == nullptr) || (num_scales > 0 && scales == nullptr)) {
    return absl::InvalidArgumentError("null buffer");
  }
  if (auto s = CheckContentHash(spec.content_hash); !s.ok()) return s;
  const v1::MatrixHeader h = HeaderOf(spec, rows, cols, spec.format);
  return Upload(h,
                std::string_view(reinterpret_cast<const char*>(words), static_cast<size_t>(num_words) * 4),
                std::string_view(reinterpret_cast<const char*>(scales), static_cast<size_t>(num_scales) * 4),
                progress, call);
}

absl::StatusOr<v1::MatrixInfo> Client::UploadPackedCodes(const UploadSpec& spec, int64_t rows, int64_t cols,
                                                         const io::ByteSource& codes, const float* scales,
                                                         int64_t num_scales, const UploadProgressFn& progress,
                                                         const CallOptions& call) {
  if (rows < 0 || cols < 0 || num_scales < 0) return absl::InvalidArgumentError("negative size");
  if (codes.size() != static_cast<uint64_t>(rows * cols)) {
    return absl::InvalidArgumentError(
        absl::StrCat(codes.size(), " bytes of codes for [", rows, ", ", cols, "]: expected ", rows * cols));
  }
  if (num_scales > 0 && scales == nullptr) return absl::InvalidArgumentError("null buffer");
  if (auto s = CheckContentHash(spec.content_hash); !s.ok()) return s;
  const v1::MatrixHeader h = HeaderOf(spec, rows, cols, spec.format);
  const int64_t row_bytes = PackedLayout{rows, cols}.padded_cols();
  std::string rows_read;  // padded layouts: the codes of the rows a message covers
  return Upload(
      h, PackedLayout{rows, cols}.code_bytes(),
      [&codes, rows, cols, row_bytes, &rows_read](int64_t offset, int64_t n, char* out) -> absl::Status {
        if (row_bytes == cols) return codes.Read(static_cast<uint64_t>(offset), static_cast<uint64_t>(n), out);
        const int64_t r0 = offset / row_bytes, r1 = (offset + n + row_bytes - 1) / row_bytes;
        rows_read.resize(static_cast<size_t>((r1 - r0) * cols));
        if (absl::Status s = codes.Read(static_cast<uint64_t>(r0 * cols), rows_read.size(), rows_read.data());
            !s.ok()) {
          return s;
        }
        io::PackFp8CodesRange(rows_read, r1 - r0, cols, offset - r0 * row_bytes, n, out);
        return absl::OkStatus();
      },
      std::string_view(reinterpret_cast<const char*>(scales), static_cast<size_t>(num_scales) * 4), progress,
      call);
}

absl::StatusOr<v1::MatrixInfo> Client::GetMatrix(const std::string& name, const CallOptions& call) {
  auto ctx = MakeContext(call);
  v1::GetMatrixRequest req;
  req.set_name(name);
  v1::GetMatrixResponse resp;
  const grpc::Status s = stub_->GetMatrix(ctx.get(), req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp.matrix();
}

absl::StatusOr<PackedMatrix> Client::GetMatrixPacked(const std::string& name, const CallOptions& call) {
  auto ctx = MakeContext(call);
  v1::GetMatrixRequest req;
  req.set_name(name);
  req.set_include_packed(true);
  v1::GetMatrixResponse resp;
  const grpc::Status s = stub_->GetMatrix(ctx.get(), req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  const v1::MatrixInfo& m = resp.matrix();
  const std::string& w = resp.packed_words();
  const std::string& sc = resp.scales();
  if (w.size() % 4 != 0 || sc.size() % 4 != 0) {
    return absl::InternalError("malformed GetMatrix response: packed words or scales not a multiple of 4 bytes");
  }
  if (w.empty() && m.rows() > 0 && m.cols() > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the server returned no packed codes for '", name, "' (it does not support GetMatrix include_packed)"));
  }
  const int64_t want_words = m.rows() * (m.layout().padded_cols() / 4);
  if (static_cast<int64_t>(w.size() / 4) != want_words) {
    return absl::InternalError(absl::StrCat("malformed GetMatrix response: ", w.size() / 4,
                                            " packed words, the layout needs ", want_words));
  }
  PackedMatrix out;
  out.info = m;
  out.words.resize(w.size() / 4);
  if (!w.empty()) std::memcpy(out.words.data(), w.data(), w.size());
  out.scales.resize(sc.size() / 4);
  if (!sc.empty()) std::memcpy(out.scales.data(), sc.data(), sc.size());
  return out;
}

absl::StatusOr<std::vector<v1::MatrixInfo>> Client::ListMatrices(const CallOptions& call) {
  auto ctx = MakeContext(call);
  v1::ListMatricesResponse resp;
  const grpc::Status s = stub_->ListMatrices(ctx.get(), v1::ListMatricesRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return std::vector<v1::MatrixInfo>(resp.matrices().begin(), resp.matrices().end());
}

absl::Status Client::DeleteMatrix(const std::string& name, const CallOptions& call) {
  auto ctx = MakeContext(call);
  v1::DeleteMatrixRequest req;
  req.set_name(name);
  v1::DeleteMatrixResponse resp;
  return FromGrpcStatus(stub_->DeleteMatrix(ctx.get(), req, &resp));
}

absl::StatusOr<HostTensor> Client::Gemv(const std::string& matrix, const TensorRef& input,
                                        v1::DType output_dtype, const CallOptions& call,
                                        float input_scale) {
  if (auto s = ValidateTensor(input); !s.ok()) return s;
  v1::GemvRequest req;
  req.set_matrix(matrix);
  ToProto(input, req.mutable_input());
  req.set_output_dtype(output_dtype);
  req.set_input_scale(input_scale);
  auto ctx = MakeContext(call);
  v1::GemvResponse resp;
  const grpc::Status s = stub_->Gemv(ctx.get(), req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return FromProto(std::move(*resp.mutable_output()));
}

absl::StatusOr<std::unique_ptr<GemvSession>> Client::StartGemvSession(const std::string& matrix,
                                                                      GemvSessionOptions options) {
  if (options.max_in_flight < 1) return absl::InvalidArgumentError("max_in_flight must be at least 1");
  auto impl = std::make_unique<GemvSession::Impl>();
  impl->matrix = matrix;
  impl->options = options;
  impl->stream_name = "GemvStream";
  impl->max_in_flight = options.max_in_flight;
  impl->ctx = MakeContext(options.timeout.value_or(options_.default_timeout));
  impl->stream = stub_->GemvStream(impl->ctx.get());
  impl->Start();
  return std::unique_ptr<GemvSession>(new GemvSession(std::move(impl)));
}

// ---------------------------------------------------------------- AttentionService

absl::StatusOr<v1::KVInfo> Client::UploadKV(const KvUploadSpec& spec, const TensorRef& k,
                                            const TensorRef& v, const UploadProgressFn& progress,
                                            const CallOptions& call) {
  for (const TensorRef* t : {&k, &v}) {
    if (auto s = ValidateTensor(*t); !s.ok()) return s;
  }
  if (k.shape.size() != 3 || k.shape != v.shape || k.dtype != v.dtype) {
    return absl::InvalidArgumentError(
        "k and v must both be [kv_heads, seq, head_dim] of the same shape and dtype");
  }
  v1::UploadKVRequest req;
  v1::KVHeader* h = req.mutable_header();
  h->set_name(spec.name);
  h->set_kv_heads(k.shape[0]);
  h->set_seq(k.shape[1]);
  h->set_head_dim(k.shape[2]);
  h->set_source_dtype(k.dtype);
  h->set_format(spec.format);
  h->set_scale_mode(spec.scale_mode);
  h->set_non_saturating(spec.non_saturating);
  auto ctx = MakeUploadContext(call);
  MessageWatchdog watchdog(ctx.get(), call.message_timeout);
  v1::UploadKVResponse resp;
  auto writer = attention_stub_->UploadKV(ctx.get(), &resp);
  using R = v1::UploadKVRequest;
  WriteChunked<R>(writer.get(), req, ChunkBytes(),
                  {{k.bytes, [](R& r, std::string_view p) { r.set_k(p.data(), p.size()); }},
                   {v.bytes, [](R& r, std::string_view p) { r.set_v(p.data(), p.size()); }}},
                  Watched(&watchdog, progress));
  watchdog.Progress(/*awaiting_answer=*/true);
  const grpc::Status s = writer->Finish();
  watchdog.Stop();
  if (!s.ok()) return watchdog.Explain(FromGrpcStatus(s));
  return resp.cache();
}

absl::StatusOr<v1::KVInfo> Client::AppendKV(const std::string& name, const TensorRef& k,
                                            const TensorRef& v, const CallOptions& call) {
  for (const TensorRef* t : {&k, &v}) {
    if (auto s = ValidateTensor(*t); !s.ok()) return s;
  }
  v1::AppendKVRequest req;
  req.set_name(name);
  ToProto(k, req.mutable_k());
  ToProto(v, req.mutable_v());
  auto ctx = MakeContext(call);
  v1::AppendKVResponse resp;
  const grpc::Status s = attention_stub_->AppendKV(ctx.get(), req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp.cache();
}

absl::StatusOr<v1::KVInfo> Client::GetKV(const std::string& name, const CallOptions& call) {
  auto ctx = MakeContext(call);
  v1::GetKVRequest req;
  req.set_name(name);
  v1::GetKVResponse resp;
  const grpc::Status s = attention_stub_->GetKV(ctx.get(), req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp.cache();
}

absl::StatusOr<std::vector<v1::KVInfo>> Client::ListKV(const CallOptions& call) {
  auto ctx = MakeContext(call);
  v1::ListKVResponse resp;
  const grpc::Status s = attention_stub_->ListKV(ctx.get(), v1::ListKVRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return std::vector<v1::KVInfo>(resp.caches().begin(), resp.caches().end());
}

absl::Status Client::DeleteKV(const std::string& name, const CallOptions& call) {
  auto ctx = MakeContext(call);
  v1::DeleteKVRequest req;
  req.set_name(name);
  v1::DeleteKVResponse resp;
  return FromGrpcStatus(attention_stub_->DeleteKV(ctx.get(), req, &resp));
}

absl::StatusOr<HostTensor> Client::Attention(const std::string& cache, const TensorRef& query,
                                             const AttentionOptions& options, const CallOptions& call) {
  if (auto s = ValidateTensor(query); !s.ok()) return s;
  const v1::AttentionRequest req = MakeAttentionRequest(cache, query, options);
  auto ctx = MakeContext(call);
  v1::AttentionResponse resp;
  const grpc::Status s = attention_stub_->Attention(ctx.get(), req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return FromProto(std::move(*resp.mutable_output()));
}

absl::StatusOr<std::unique_ptr<AttentionSession>> Client::StartAttentionSession(
    const std::string& cache, AttentionSessionOptions options) {
  if (options.max_in_flight < 1) return absl::InvalidArgumentError("max_in_flight must be at least 1");
  auto impl = std::make_unique<AttentionSession::Impl>();
  impl->cache = cache;
  impl->options = options;
  impl->stream_name = "AttentionStream";
  impl->max_in_flight = options.max_in_flight;
  impl->ctx = MakeContext(options.timeout.value_or(options_.default_timeout));
  impl->stream = attention_stub_->AttentionStream(impl->ctx.get());
  impl->Start();
  return std::unique_ptr<AttentionSession>(new AttentionSession(std::move(impl)));
}

// ---------------------------------------------------------------- DiagnosticsService

absl::StatusOr<HostTensor> Client::Echo(const TensorRef& payload, const CallOptions& call) {
  if (auto s = ValidateTensor(payload); !s.ok()) return s;
  v1::EchoRequest req;
  ToProto(payload, req.mutable_input());
  auto ctx = MakeContext(call);
  v1::EchoResponse resp;
  const grpc::Status s = diagnostics_stub_->Echo(ctx.get(), req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return FromProto(std::move(*resp.mutable_output()));
}

absl::StatusOr<std::unique_ptr<EchoSession>> Client::StartEchoSession(EchoSessionOptions options) {
  if (options.max_in_flight < 1) return absl::InvalidArgumentError("max_in_flight must be at least 1");
  auto impl = std::make_unique<EchoSession::Impl>();
  impl->stream_name = "EchoStream";
  impl->max_in_flight = options.max_in_flight;
  impl->ctx = MakeContext(options.timeout.value_or(options_.default_timeout));
  impl->stream = diagnostics_stub_->EchoStream(impl->ctx.get());
  impl->Start();
  return std::unique_ptr<EchoSession>(new EchoSession(std::move(impl)));
}

namespace {

// One call of the callback API: owns its context and messages until gRPC
// reports the end, then frees them and hands the output (or the status) to
// `done`. Freed first, so that nothing of the call is left to free once the
// caller hears back: the caller may destroy the Client at once, as
// EchoTest.AsyncCallsRoundTrip does.
template <class Req, class Resp>
struct AsyncCall {
  std::unique_ptr<grpc::ClientContext> ctx;
  Req req;
  Resp resp;
  Client::AsyncDone done;

  void Finished(const grpc::Status& s) {
    absl::StatusOr<HostTensor> result =
        s.ok() ? absl::StatusOr<HostTensor>(FromProto(std::move(*resp.mutable_output())))
               : absl::StatusOr<HostTensor>(FromGrpcStatus(s));
    Client::AsyncDone tell = std::move(done);
    delete this;
    tell(std::move(result));
  }
};

}  // namespace

void Client::GemvAsync(const std::string& matrix, const TensorRef& input, v1::DType output_dtype,
                       AsyncDone done, const CallOptions& call) {
  if (auto s = ValidateTensor(input); !s.ok()) return done(s);
  auto* c = new AsyncCall<v1::GemvRequest, v1::GemvResponse>{MakeContext(call), {}, {}, std::move(done)};
  c->req.set_matrix(matrix);
  ToProto(input, c->req.mutable_input());
  c->req.set_output_dtype(output_dtype);
  stub_->async()->Gemv(c->ctx.get(), &c->req, &c->resp, [c](grpc::Status s) { c->Finished(s); });
}

void Client::EchoAsync(const TensorRef& payload, AsyncDone done, const CallOptions& call) {
  if (auto s = ValidateTensor(payload); !s.ok()) return done(s);
  auto* c = new AsyncCall<v1::EchoRequest, v1::EchoResponse>{MakeContext(call), {}, {}, std::move(done)};
  ToProto(payload, c->req.mutable_input());
  diagnostics_stub_->async()->Echo(c->ctx.get(), &c->req, &c->resp,
                                   [c](grpc::Status s) { c->Finished(s); });
}

// grpc.health.v1 is not in Debian's gRPC packages, so the two tiny messages
// are encoded by hand and sent through the generic stub:
//   HealthCheckRequest  { string service = 1; }
//   HealthCheckResponse { ServingStatus status = 1; }  (enum, varint)
namespace {

bool ReadVarint(std::string_view s, size_t* pos, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= s.size()) return false;
    const uint8_t b = static_cast<uint8_t>(s[(*pos)++]);
    *v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

void WriteVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

}  // namespace

absl::StatusOr<HealthStatus> Client::CheckHealth(const std::string& service, const CallOptions& call) {
  std::string req;
  if (!service.empty()) {
    req.push_back(0x0a);  // field 1, length-delimited
    WriteVarint(service.size(), &req);
    req += service;
  }
  grpc::Slice slice(req);
  grpc::ByteBuffer req_buf(&slice, 1);
  grpc::ByteBuffer resp_buf;
  auto ctx = MakeContext(call);
  grpc::GenericStub stub(channel_);
  std::promise<grpc::Status> done;
  stub.UnaryCall(ctx.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req_buf,
                 &resp_buf, [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status s = done.get_future().get();  // the deadline bounds this wait
  if (!s.ok()) return FromGrpcStatus(s);
  std::vector<grpc::Slice> slices;
  if (!resp_buf.Dump(&slices).ok()) return absl::InternalError("cannot read the health response");
  std::string resp;
  for (const auto& sl : slices) resp.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  uint64_t status = 0;
  size_t pos = 0;
  while (pos < resp.size()) {
    uint64_t tag, v;
    if (!ReadVarint(resp, &pos, &tag)) return absl::InternalError("malformed health response");
    switch (tag & 7) {
      case 0:
        if (!ReadVarint(resp, &pos, &v)) return absl::InternalError("malformed health response");
        if ((tag >> 3) == 1) status = v;
        break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2:
        if (!ReadVarint(resp, &pos, &v) || v > resp.size() - std::min(pos, resp.size())) {
          return absl::InternalError("malformed health response");
        }
        pos += v;
        break;
      default: return absl::InternalError("malformed health response");
    }
    if (pos > resp.size()) return absl::InternalError("malformed health response");
  }
  if (status > 3) return HealthStatus::kUnknown;
  return static_cast<HealthStatus>(status);
}

}  // namespace plume

// The in-process server fixture of server_test.cc and
// server_attention_test.cc: the real server on 127.0.0.1:0 with the CPU
// backend, driven through the real SDK, and the helper both files use.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "plume/client/client.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/grpc/server.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/test_server.h"

namespace plume::server_test {

inline std::vector<float> Random(int64_t n, uint32_t seed) { return testing::RandomNormal(n, seed); }

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(int64_t{1} << 30); }

  void Start(int64_t budget) {
    core::EngineOptions eo = testing::TestEngineOptions();
    eo.store.budget_bytes = budget;
    eo.limits.max_vectors_per_request = 64;
    eo.limits.max_attention_rows = 4096;
    auto t = testing::StartTestServer(eo);
    ASSERT_TRUE(t.ok()) << t.status();
    engine_ = std::move(t->engine);
    server_ = std::move(t->server);
    metrics_ = engine_->metrics();
    store_ = engine_->matrix_store();

    ClientOptions copts;
    copts.target = "127.0.0.1:" + std::to_string(server_->port());
    copts.upload_chunk_bytes = 4096;  // many chunks
    auto c = Client::Connect(copts);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }

  void TearDown() override {
    client_.reset();
    if (server_) server_->Shutdown(std::chrono::milliseconds(100));
    server_.reset();
  }

  std::unique_ptr<v1::MatrixService::Stub> RawStub() {
    return v1::MatrixService::NewStub(client_->channel());
  }

  absl::StatusOr<v1::MatrixInfo> Upload(const std::string& name, const std::vector<float>& w,
                                        int64_t rows, int64_t cols,
                                        v1::ScaleMode mode = v1::SCALE_MODE_ROW,
                                        v1::DType format = v1::DTYPE_E4M3) {
    UploadSpec spec;
    spec.name = name;
    spec.format = format;
    spec.scale_mode = mode;
    TensorRef src = TensorRef::F32(w.data(), {rows, cols});
    return client_->UploadMatrix(spec, src);
  }

  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<server::Server> server_;  // goes before the engine
  core::Metrics* metrics_ = nullptr;
  core::MatrixStore* store_ = nullptr;
  std::unique_ptr<Client> client_;
};

}  // namespace plume::server_test

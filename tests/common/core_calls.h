// Driving server/core as its transport does, with no gRPC and no protobuf:
// tensors and results a test owns (the plain structs of
// server/core/calls.h view them), and GEMV and attention through the core's
// async paths on a Batcher with an injected clock.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/types/span.h"
#include "server/core/attention_service.h"
#include "server/core/batcher.h"
#include "server/core/calls.h"
#include "server/core/matrix_service.h"
#include "server/core/work_queue.h"

namespace plume::testing {

// A tensor a test owns; view() is what a call carries.
struct HostTensor {
  int dtype = static_cast<int>(DType::kF32);  // a wire number (calls.h)
  std::vector<int64_t> shape;
  std::string data;
  core::TensorView view() const { return {dtype, shape, data}; }
};

template <class T>
HostTensor TensorOf(DType dtype, std::vector<int64_t> shape, const std::vector<T>& values) {
  return {static_cast<int>(dtype), std::move(shape),
          std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T))};
}
inline HostTensor F32Tensor(std::vector<int64_t> shape, const std::vector<float>& values) {
  return TensorOf(DType::kF32, std::move(shape), values);
}

// An F32 upload header of `rows` x `cols`, ROW scales unless told.
inline core::MatrixHeader F32Header(std::string_view name, int64_t rows, int64_t cols,
                                    ScaleMode scale_mode = ScaleMode::kRow) {
  core::MatrixHeader h;
  h.name = name;
  h.rows = rows;
  h.cols = cols;
  h.source_dtype = static_cast<int>(DType::kF32);
  h.scale_mode = static_cast<int>(scale_mode);
  return h;
}

// A result the core writes into memory this owns, poisoned until written.
class HeldResult final : public core::ResultSink {
 public:
  static constexpr char kPoison = '\xa5';

  char* Allocate(DType dtype, absl::Span<const int64_t> shape, size_t bytes) override {
    ++allocations;
    this->dtype = dtype;
    this->shape.assign(shape.begin(), shape.end());
    data.assign(bytes, kPoison);
    return data.data();
  }
  // Allocated, and not a byte of it written since.
  bool untouched() const {
    return allocations == 1 && data.find_first_not_of(kPoison) == std::string::npos;
  }
  // The data as F32 values (an F32 result).
  std::vector<float> floats() const {
    std::vector<float> v(data.size() / sizeof(float));
    std::memcpy(v.data(), data.data(), v.size() * sizeof(float));
    return v;
  }

  int allocations = 0;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string data;
};

// One GEMV or attention at a time through the core's async paths: a Batcher
// whose clock stands still (no timer thread) over a one-thread WorkQueue.
// Under its adaptive policy a request for an idle target launches as soon
// as it is submitted, so each call returns once its done callback ran.
class CoreCalls {
 public:
  explicit CoreCalls(core::Backend* backend) : batcher_(backend, &queue_, nullptr, Options()) {}

  absl::Status Gemv(core::MatrixService& service, const core::GemvCall& call, HeldResult* out) {
    absl::Status status;
    absl::Notification done;
    service.GemvAsync(&batcher_, call, out, {}, [&](const absl::Status& s) {
      status = s;
      done.Notify();
    });
    done.WaitForNotification();
    return status;
  }

  // `seq`, when given, gets the number of cached tokens the call ran over.
  absl::Status Attention(core::AttentionService& service, const core::AttentionCall& call,
                         HeldResult* out, int64_t* seq = nullptr) {
    absl::Status status;
    absl::Notification done;
    service.AttentionAsync(&batcher_, call, out, {}, [&](const absl::Status& s, int64_t ran_over) {
      status = s;
      if (seq != nullptr && s.ok()) *seq = ran_over;
      done.Notify();
    });
    done.WaitForNotification();
    return status;
  }

  core::Batcher* batcher() { return &batcher_; }

 private:
  static core::Batcher::Options Options() {
    core::Batcher::Options o;
    o.now = [] { return core::BatchClock::time_point(std::chrono::seconds(1)); };
    o.timer_thread = false;
    return o;
  }

  core::WorkQueue queue_{1, 1024};
  core::Batcher batcher_;
};

}  // namespace plume::testing

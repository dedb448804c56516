// The SDK example from README.md, kept compiling by the build.
//   quickstart [HOST:PORT]   (default localhost:50051)
#include <cstdio>
#include <random>
#include <vector>

#include "plume/client/client.h"

int main(int argc, char** argv) {
  const int64_t rows = 256, cols = 512;
  std::mt19937 rng(42);
  std::normal_distribution<float> normal;
  std::vector<float> w(rows * cols), x(cols);
  for (auto& v : w) v = normal(rng);
  for (auto& v : x) v = normal(rng);

  plume::ClientOptions opts;
  opts.target = argc > 1 ? argv[1] : "localhost:50051";
  auto client = plume::Client::Connect(opts).value();

  auto info = client->UploadMatrix({.name = "quickstart", .format = plume::v1::DTYPE_E4M3,
                                    .scale_mode = plume::v1::SCALE_MODE_ROW},
                                   plume::TensorRef::F32(w.data(), {rows, cols}));
  if (!info.ok()) {
    std::fprintf(stderr, "upload: %s\n", plume::FormatStatus(info.status()).c_str());
    return 1;
  }
  absl::StatusOr<plume::HostTensor> y =
      client->Gemv("quickstart", plume::TensorRef::F32(x.data(), {cols}));
  if (!y.ok()) {
    std::fprintf(stderr, "gemv: %s\n", plume::FormatStatus(y.status()).c_str());
    return 1;
  }
  std::printf("y[0..3] = %g %g %g %g\n", (*y->ToFloats())[0], (*y->ToFloats())[1],
              (*y->ToFloats())[2], (*y->ToFloats())[3]);

  auto session = client->StartGemvSession("quickstart", {.max_in_flight = 64}).value();
  auto fut = session->Push(plume::TensorRef::F32(x.data(), {cols}));  // blocks when 64 are in flight
  absl::StatusOr<plume::GemvResult> r = fut.get();
  absl::Status done = session->Finish();
  std::printf("stream: item %s, stream %s\n", r.ok() ? "OK" : plume::FormatStatus(r.status()).c_str(),
              plume::FormatStatus(done).c_str());
  return client->DeleteMatrix("quickstart").ok() && r.ok() && done.ok() ? 0 : 1;
}

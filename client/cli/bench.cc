#include "bench.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <semaphore>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "metrics_scrape.h"
#include "plume/io/array.h"
#include "plume/kernels/half.h"

namespace plume::cli {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;

// The server histograms whose _sum/_count deltas give the split.
constexpr const char* kQueue = "plume_queue_duration_seconds";
constexpr const char* kKernel = "plume_kernel_duration_seconds";
constexpr const char* kHost = "plume_host_duration_seconds";
constexpr const char* kBatch = "plume_batch_size";
constexpr const char* kDropped = "plume_requests_dropped_total";

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// `n` normal(0, 1) values (never exactly zero) in `dtype`, from `seed`.
std::string RandomVectors(v1::DType dtype, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int width = DTypeBytes(dtype);
  std::string out(static_cast<size_t>(n * width), '\0');
  for (int64_t i = 0; i < n; ++i) {
    float v = dist(rng);
    if (v == 0.0f) v = 0.5f;
    char* p = out.data() + i * width;
    if (dtype == v1::DTYPE_F32) {
      std::memcpy(p, &v, 4);
    } else {
      const uint16_t h = dtype == v1::DTYPE_F16 ? FloatToHalfBits(v) : FloatToBf16Bits(v);
      std::memcpy(p, &h, 2);
    }
  }
  return out;
}

template <class T>
absl::StatusOr<std::vector<T>> ParseList(const std::string& s, const char* flag) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    T v{};
    bool ok;
    if constexpr (std::is_integral_v<T>) {
      ok = absl::SimpleAtoi(part, &v);
    } else {
      ok = absl::SimpleAtod(part, &v) && std::isfinite(v);
    }
    if (!ok || !(v > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": '", part, "' is not a positive number"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, " is empty"));
  return out;
}

// ---------------------------------------------------------------- recording

// What finished in one window: successes with their latencies, failures.
struct WindowStats {
  double seconds = 0;
  int64_t ok = 0;
  int64_t errors = 0;
  std::vector<float> latency_us;  // of the successes
  std::string first_error;
};

// Completions, sharded by lane so that callbacks of different lanes never
// contend; Take() collects and resets all shards.
class Recorder {
 public:
  explicit Recorder(int shards) {
    for (int i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
    last_ = Clock::now();
  }

  void Record(int shard, Clock::time_point t0, const absl::Status& s) {
    const float us = static_cast<float>(Seconds(Clock::now() - t0) * 1e6);
    Shard& sh = *shards_[static_cast<size_t>(shard) % shards_.size()];
    std::lock_guard<std::mutex> l(sh.mu);
    if (s.ok()) {
      ++sh.stats.ok;
      sh.stats.latency_us.push_back(us);
    } else {
      ++sh.stats.errors;
      if (sh.stats.first_error.empty()) sh.stats.first_error = FormatStatus(s);
    }
  }

  WindowStats Take() {
    WindowStats all;
    const auto now = Clock::now();
    all.seconds = Seconds(now - last_);
    last_ = now;
    for (auto& sh : shards_) {
      WindowStats w;
      {
        std::lock_guard<std::mutex> l(sh->mu);
        std::swap(w, sh->stats);
      }
      all.ok += w.ok;
      all.errors += w.errors;
      all.latency_us.insert(all.latency_us.end(), w.latency_us.begin(), w.latency_us.end());
      if (all.first_error.empty()) all.first_error = std::move(w.first_error);
    }
    return all;
  }

 private:
  struct Shard {
    std::mutex mu;
    WindowStats stats;
  };
  std::vector<std::unique_ptr<Shard>> shards_;
  Clock::time_point last_;  // only the bench's main thread takes
};

// ---------------------------------------------------------------- targets

// Where requests go: a unary method of one client, or one open stream.
class Target {
 public:
  // Called once per request with its status and the bytes of its result.
  using Done = std::function<void(absl::Status, size_t result_bytes)>;
  virtual ~Target() = default;
  // Sends one request. False once the target can take no more (a stream
  // that has ended); `done` has then been called already.
  virtual bool Send(const TensorRef& input, Done done) = 0;
  // Ends the target after the last Send; every `done` has run once it returns.
  virtual absl::Status Close() { return absl::OkStatus(); }
};

class UnaryTarget final : public Target {
 public:
  UnaryTarget(Client* client, bool echo, std::string matrix, v1::DType output_dtype)
      : client_(client), echo_(echo), matrix_(std::move(matrix)), output_dtype_(output_dtype) {}
  bool Send(const TensorRef& input, Done done) override {
    auto cb = [done = std::move(done)](absl::StatusOr<HostTensor> r) {
      done(r.status(), r.ok() ? r->data.size() : 0);
    };
    if (echo_) {
      client_->EchoAsync(input, std::move(cb));
    } else {
      client_->GemvAsync(matrix_, input, output_dtype_, std::move(cb));
    }
    return true;
  }

 private:
  Client* client_;
  bool echo_;
  std::string matrix_;
  v1::DType output_dtype_;
};

class GemvStreamTarget final : public Target {
 public:
  explicit GemvStreamTarget(std::unique_ptr<GemvSession> s) : session_(std::move(s)) {}
  bool Send(const TensorRef& input, Done done) override {
    return session_->Push(input, [done = std::move(done)](uint64_t, absl::StatusOr<GemvResult> r) {
      done(r.status(), r.ok() ? r->output.data.size() : 0);
    }) != 0;
  }
  absl::Status Close() override { return session_->Finish(); }

 private:
  std::unique_ptr<GemvSession> session_;
};

class EchoStreamTarget final : public Target {
 public:
  explicit EchoStreamTarget(std::unique_ptr<EchoSession> s) : session_(std::move(s)) {}
  bool Send(const TensorRef& input, Done done) override {
    return session_->Push(input, [done = std::move(done)](uint64_t, absl::StatusOr<HostTensor> r) {
      done(r.status(), r.ok() ? r->data.size() : 0);
    }) != 0;
  }
  absl::Status Close() override { return session_->Finish(); }

 private:
  std::unique_ptr<EchoSession> session_;
};

// ---------------------------------------------------------------- load

// One issuing thread with its target and its share of the load: `slots`
// requests in flight at most; closed loop (rate 0: send as soon as a slot is
// free, latency from the send) or open loop (send at fixed intervals of
// 1/rate, latency from the scheduled time, so a generator or server that
// falls behind shows up in the latency rather than hiding it).
struct Lane {
  Lane(int index, std::unique_ptr<Target> target, int64_t slots, double rate, double phase)
      : index(index), target(std::move(target)), slots(slots), rate(rate), phase(phase) {}
  int index;
  std::unique_ptr<Target> target;
  std::counting_semaphore<(1 << 30)> free_slots{0};
  int64_t slots;
  double rate;   // requests/s; 0: closed loop
  double phase;  // fraction of an interval this lane's schedule is shifted by
  std::thread thread;
};

class Load {
 public:
  Load(std::vector<std::unique_ptr<Lane>> lanes, const std::vector<TensorRef>* inputs,
       size_t expected_result_bytes, Recorder* recorder)
      : lanes_(std::move(lanes)),
        inputs_(inputs),
        expected_result_bytes_(expected_result_bytes),
        recorder_(recorder) {}

  void Start() {
    for (auto& lane : lanes_) {
      lane->free_slots.release(static_cast<std::ptrdiff_t>(lane->slots));
      lane->thread = std::thread([this, l = lane.get()] { Run(*l); });
    }
  }

  // Stops sending and waits until every request sent has finished (RPC and
  // stream deadlines bound the wait). Returns the first failed stream close.
  absl::Status Stop() {
    stop_.store(true);
    for (auto& lane : lanes_) lane->thread.join();
    absl::Status first;
    for (auto& lane : lanes_) {
      absl::Status s = lane->target->Close();
      if (first.ok() && !s.ok()) first = s;
    }
    while (outstanding_.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return first;
  }

 private:
  void Run(Lane& lane) {
    const auto start = Clock::now();
    const std::chrono::duration<double> interval(lane.rate > 0 ? 1.0 / lane.rate : 0.0);
    size_t k = static_cast<size_t>(lane.index);
    int64_t sent = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      if (!lane.free_slots.try_acquire_for(std::chrono::milliseconds(20))) continue;
      Clock::time_point t0 = Clock::now();
      if (lane.rate > 0) {
        t0 = start + std::chrono::duration_cast<Clock::duration>(interval * (lane.phase + static_cast<double>(sent)));
        // Sleep to just before the send time (the kernel wakes threads tens
        // of microseconds late), then yield until it.
        while (!stop_.load(std::memory_order_relaxed) && Clock::now() < t0) {
          const auto now = Clock::now();
          if (t0 - now > std::chrono::microseconds(200)) {
            std::this_thread::sleep_until(std::min(t0 - std::chrono::microseconds(100),
                                                   now + std::chrono::milliseconds(20)));
          } else {
            std::this_thread::yield();
          }
        }
        if (stop_.load()) {
          lane.free_slots.release();
          break;
        }
      }
      ++sent;
      const TensorRef& input = (*inputs_)[k++ % inputs_->size()];
      outstanding_.fetch_add(1);
      const bool alive = lane.target->Send(input, [this, &lane, t0](absl::Status s, size_t bytes) {
        if (s.ok() && bytes != expected_result_bytes_) {
          s = absl::InternalError(absl::StrCat("result of ", bytes, " bytes, expected ",
                                               expected_result_bytes_));
        }
        recorder_->Record(lane.index, t0, s);
        lane.free_slots.release();
        outstanding_.fetch_sub(1);
      });
      if (!alive) break;  // the stream has ended; its failure is recorded
    }
  }

  std::vector<std::unique_ptr<Lane>> lanes_;
  const std::vector<TensorRef>* inputs_;
  size_t expected_result_bytes_;
  Recorder* recorder_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> outstanding_{0};
};

// ---------------------------------------------------------------- /metrics

struct ServerSample {
  bool ok = false;
  std::map<std::string, double> values;
  double Get(const std::string& name) const {
    auto it = values.find(name);
    return it == values.end() ? 0.0 : it->second;
  }
};

class Scraper {
 public:
  static absl::StatusOr<Scraper> Make(const BenchFlags& f) {
    Scraper s;
    if (f.metrics_url.empty()) return s;
    auto url = ParseHttpUrl(f.metrics_url);
    if (!url.ok()) return url.status();
    s.url_ = *url;
    s.auth_ = url->userinfo;
    if (!f.metrics_user.empty()) {
      std::string password;
      if (!f.metrics_password_file.empty()) {
        if (auto st = io::ReadFileToString(f.metrics_password_file, &password); !st.ok()) return st;
      }
      s.auth_ = absl::StrCat(f.metrics_user, ":", absl::StripAsciiWhitespace(password));
    }
    s.enabled_ = true;
    for (const char* h : {kQueue, kKernel, kHost, kBatch}) {
      s.names_.insert(absl::StrCat(h, "_sum"));
      s.names_.insert(absl::StrCat(h, "_count"));
    }
    s.names_.insert(kDropped);
    return s;
  }

  bool enabled() const { return enabled_; }

  // One scrape; a failure is reported on stderr once and gives ok = false.
  ServerSample Sample() {
    ServerSample out;
    if (!enabled_) return out;
    auto body = HttpGet(url_, auth_, absl::Seconds(2));
    if (!body.ok()) {
      if (!warned_) absl::FPrintF(stderr, "warning: cannot read /metrics: %s\n", FormatStatus(body.status()));
      warned_ = true;
      return out;
    }
    out.values = ParsePrometheusText(*body, names_);
    out.ok = true;
    return out;
  }

 private:
  bool enabled_ = false;
  bool warned_ = false;
  HttpUrl url_;
  std::string auth_;
  std::set<std::string> names_;
};

// ---------------------------------------------------------------- steps

struct Window {
  WindowStats stats;
  ServerSample server;  // scraped at the window's end
};

// The numbers of one step, over its last (up to 3) measured windows.
struct StepResult {
  int64_t concurrency = 0;  // closed loop
  double rate = 0;          // open loop: requests/s asked for
  int lanes = 0;
  std::vector<Window> windows;  // [0] is the warm-up
  bool stable = false;
  size_t first_used = 0;  // windows[first_used..] are reported
  double seconds = 0;
  int64_t ok = 0;
  int64_t errors = 0;
  int64_t errors_all = 0;  // in every window of the step, warm-up included
  std::string first_error;
  double p50_ms = NAN, p90_ms = NAN, p99_ms = NAN, mean_ms = NAN, max_ms = NAN;
  // Server split (NAN: not available).
  double queue_ms = NAN, kernel_ms = NAN, host_us = NAN, batch = NAN, kernel_us_per_vector = NAN;
  double server_vectors = NAN, dropped = NAN;
  absl::Status close_status;
};

double VectorsPerSecond(const WindowStats& w, int64_t batch) {
  return w.seconds > 0 ? static_cast<double>(w.ok * batch) / w.seconds : 0.0;
}

// True when the last 3 measured windows' throughputs are within `tolerance`
// of each other: (fastest - slowest) <= tolerance * fastest.
bool Stable(const std::vector<Window>& w, int64_t batch, double tolerance) {
  if (w.size() < 4) return false;  // warm-up + 3
  double lo = INFINITY, hi = 0;
  for (size_t i = w.size() - 3; i < w.size(); ++i) {
    const double v = VectorsPerSecond(w[i].stats, batch);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  return hi > 0 && hi - lo <= tolerance * hi;
}

double Percentile(const std::vector<float>& sorted, double p) {
  if (sorted.empty()) return NAN;
  const size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

void Summarize(StepResult* r, int64_t batch) {
  r->first_used = r->windows.size() > 4 ? r->windows.size() - 3 : 1;
  std::vector<float> lat;
  for (size_t i = 0; i < r->windows.size(); ++i) {
    const WindowStats& w = r->windows[i].stats;
    r->errors_all += w.errors;
    if (r->first_error.empty()) r->first_error = w.first_error;
    if (i < r->first_used) continue;
    r->seconds += w.seconds;
    r->ok += w.ok;
    r->errors += w.errors;
    lat.insert(lat.end(), w.latency_us.begin(), w.latency_us.end());
  }
  std::sort(lat.begin(), lat.end());
  if (!lat.empty()) {
    double sum = 0;
    for (float v : lat) sum += v;
    r->mean_ms = sum / static_cast<double>(lat.size()) / 1e3;
    r->max_ms = lat.back() / 1e3;
    r->p50_ms = Percentile(lat, 0.50) / 1e3;
    r->p90_ms = Percentile(lat, 0.90) / 1e3;
    r->p99_ms = Percentile(lat, 0.99) / 1e3;
  }
  const ServerSample& a = r->windows[r->first_used - 1].server;
  const ServerSample& b = r->windows.back().server;
  if (a.ok && b.ok) {
    auto delta = [&](const std::string& n) { return b.Get(n) - a.Get(n); };
    auto mean = [&](const char* h) {
      const double c = delta(absl::StrCat(h, "_count"));
      return c > 0 ? delta(absl::StrCat(h, "_sum")) / c : NAN;
    };
    r->queue_ms = mean(kQueue) * 1e3;
    r->kernel_ms = mean(kKernel) * 1e3;
    r->host_us = mean(kHost) * 1e6;
    r->batch = mean(kBatch);
    r->server_vectors = delta(absl::StrCat(kBatch, "_sum"));
    const double kernel_s = delta(absl::StrCat(kKernel, "_sum"));
    r->kernel_us_per_vector = r->server_vectors > 0 ? kernel_s / r->server_vectors * 1e6 : NAN;
    r->dropped = delta(kDropped);
  }
}

// The live line: redrawn in place on a terminal, one line per window with
// --progress otherwise.
class ProgressLine {
 public:
  explicit ProgressLine(bool force) : tty_(isatty(fileno(stderr)) != 0), on_(tty_ || force) {}
  void Show(const std::string& s) {
    if (!on_) return;
    if (tty_) {
      absl::FPrintF(stderr, "\r%s\x1b[K", s);
    } else {
      absl::FPrintF(stderr, "%s\n", s);
    }
    std::fflush(stderr);
  }
  void Clear() {
    if (on_ && tty_) {
      absl::FPrintF(stderr, "\r\x1b[K");
      std::fflush(stderr);
    }
  }

 private:
  bool tty_;
  bool on_;
};

std::string Num(double v, int decimals) {
  return std::isfinite(v) ? absl::StrFormat("%.*f", decimals, v) : "n/a";
}

Json JsonNum(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

}  // namespace

int RunBench(const GlobalFlags& g, const BenchFlags& f) {
  // ---- flags
  if (f.mode != "stream" && f.mode != "unary") return UsageError("--mode must be stream or unary");
  auto dtype = ParseFloatDType(f.dtype);
  if (!dtype.ok()) return Fail(dtype.status(), kExitUsage);
  auto out_dtype = ParseFloatDType(f.output_dtype.empty() ? f.dtype : f.output_dtype);
  if (!out_dtype.ok()) return Fail(out_dtype.status(), kExitUsage);
  if (f.batch < 1 || f.batch > 65536) return UsageError("--batch must be in [1, 65536]");
  if (f.window_ms < 10 || f.window_ms > 600000) return UsageError("--window-ms must be in [10, 600000]");
  if (f.max_windows < 1) return UsageError("--max-windows must be at least 1");
  if (!(f.max_seconds > 0)) return UsageError("--max-seconds must be positive");
  if (!(f.stability > 0 && f.stability < 1)) return UsageError("--stability must be in (0, 1)");
  if (f.connections < 1 || f.connections > 256) return UsageError("--connections must be in [1, 256]");
  if (f.streams < 0 || f.streams > 1024) return UsageError("--streams must be in [0, 1024]");
  if (f.max_outstanding < 1) return UsageError("--max-outstanding must be at least 1");
  if (f.matrix.empty() && !(f.echo && f.cols > 0)) {
    return UsageError("name a MATRIX (or, with --echo, give --cols N)");
  }
  const bool open_loop = !f.rate.empty();
  std::vector<int64_t> concurrency;
  std::vector<double> rates;
  if (open_loop) {
    auto r = ParseList<double>(f.rate, "--rate");
    if (!r.ok()) return Fail(r.status(), kExitUsage);
    rates = *r;
  } else {
    auto c = ParseList<int64_t>(f.concurrency, "--concurrency");
    if (!c.ok()) return Fail(c.status(), kExitUsage);
    concurrency = *c;
    for (int64_t c1 : concurrency) {
      if (c1 > 65536) return UsageError("--concurrency values must be at most 65536");
    }
  }
  auto scraper = Scraper::Make(f);
  if (!scraper.ok()) return Fail(scraper.status(), kExitUsage);

  // ---- clients (one connection each) and the matrix
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < f.connections; ++i) {
    GlobalFlags gi = g;
    auto c = MakeClient(gi);
    if (!c.ok()) return Fail(c.status(), kExitUsage);
    // MakeClient builds the options; a bench client wants its own connection.
    ClientOptions o = (*c)->options();
    o.dedicated_connection = true;
    o.max_attempts = 1;  // a retried request would hide a failure and skew the latency
    auto c2 = Client::Connect(o);
    if (!c2.ok()) return Fail(c2.status(), kExitUsage);
    clients.push_back(std::move(*c2));
  }
  int64_t rows = 0, cols = f.cols;
  std::string format = "-";
  if (!f.matrix.empty()) {
    auto info = clients[0]->GetMatrix(f.matrix);
    if (!info.ok()) return RpcFail(g, *clients[0], info.status());
    rows = info->rows();
    cols = info->cols();
    format = DTypeShortName(info->format());
  }
  const std::vector<int64_t> shape =
      f.batch == 1 ? std::vector<int64_t>{cols} : std::vector<int64_t>{f.batch, cols};
  // A pool of distinct random inputs; lanes start at different ones.
  std::vector<std::string> input_bytes;
  std::vector<TensorRef> inputs;
  for (int i = 0; i < 16; ++i) input_bytes.push_back(RandomVectors(*dtype, f.batch * cols, f.seed * 7919u + i));
  for (const auto& b : input_bytes) inputs.push_back(TensorRef{*dtype, shape, b});
  const size_t request_bytes = input_bytes[0].size();
  const size_t result_bytes =
      f.echo ? request_bytes : static_cast<size_t>(f.batch * rows * DTypeBytes(*out_dtype));
  const std::string method = absl::StrCat(f.echo ? "Echo" : "Gemv", f.mode == "stream" ? "Stream" : "");

  absl::PrintF("# plume bench: %s%s, %s vectors of %d, batch %d: %d B per request, %d B per result; %s; %d connection(s)\n",
               method, f.matrix.empty() ? "" : absl::StrCat(" on ", f.matrix, " (", rows, " x ", cols, " ", format, ")"),
               DTypeShortName(*dtype), cols, f.batch, request_bytes, result_bytes,
               open_loop ? "open loop (--rate)" : "closed loop (--concurrency)", f.connections);
  std::fflush(stdout);

  // ---- steps
  ProgressLine progress(f.progress);
  const std::chrono::milliseconds stream_timeout(
      static_cast<int64_t>((f.max_seconds + g.timeout_s + 60.0) * 1000.0));
  std::vector<StepResult> results;
  const size_t nsteps = open_loop ? rates.size() : concurrency.size();
  bool any_failed = false;
  for (size_t step = 0; step < nsteps; ++step) {
    StepResult r;
    // Lanes: (target, slots, rate). Closed loop splits the concurrency over
    // the lanes; open loop splits the rate and --max_outstanding.
    int nlanes;
    int64_t total_slots;
    if (open_loop) {
      r.rate = rates[step];
      nlanes = f.mode == "stream" ? (f.streams > 0 ? f.streams : 16) : f.connections;
      total_slots = std::max<int64_t>(f.max_outstanding, nlanes);
    } else {
      r.concurrency = concurrency[step];
      // A stream session sends and receives on one thread each, about 30 µs a
      // message: eight requests in flight per stream keep it busy.
      const int64_t auto_streams = std::clamp<int64_t>((r.concurrency + 7) / 8, 1, 32);
      nlanes = static_cast<int>(std::min<int64_t>(
          r.concurrency, f.mode == "stream" ? (f.streams > 0 ? f.streams : std::max<int64_t>(auto_streams, 1))
                                            : f.connections));
      total_slots = r.concurrency;
    }
    r.lanes = nlanes;
    std::vector<std::unique_ptr<Lane>> lanes;
    absl::Status setup;
    for (int i = 0; i < nlanes && setup.ok(); ++i) {
      Client* client = clients[static_cast<size_t>(i) % clients.size()].get();
      const int64_t slots = total_slots / nlanes + (i < total_slots % nlanes ? 1 : 0);
      std::unique_ptr<Target> target;
      if (f.mode == "unary") {
        target = std::make_unique<UnaryTarget>(client, f.echo, f.matrix, *out_dtype);
      } else if (f.echo) {
        auto s = client->StartEchoSession({.max_in_flight = static_cast<int>(slots), .timeout = stream_timeout});
        if (!s.ok()) setup = s.status(); else target = std::make_unique<EchoStreamTarget>(std::move(*s));
      } else {
        auto s = client->StartGemvSession(
            f.matrix, {.max_in_flight = static_cast<int>(slots), .timeout = stream_timeout, .output_dtype = *out_dtype});
        if (!s.ok()) setup = s.status(); else target = std::make_unique<GemvStreamTarget>(std::move(*s));
      }
      if (setup.ok()) {
        lanes.push_back(std::make_unique<Lane>(i, std::move(target), slots, open_loop ? r.rate / nlanes : 0.0,
                                               static_cast<double>(i) / nlanes));
      }
    }
    if (!setup.ok()) return RpcFail(g, *clients[0], setup);

    Recorder recorder(nlanes);
    Load load(std::move(lanes), &inputs, result_bytes, &recorder);
    const std::string label = open_loop ? absl::StrFormat("rate %g/s", r.rate) : absl::StrCat("concurrency ", r.concurrency);
    const auto step_start = Clock::now();
    recorder.Take();
    load.Start();
    for (int w = 0;; ++w) {
      std::this_thread::sleep_until(step_start + std::chrono::milliseconds(int64_t{f.window_ms} * (w + 1)));
      Window win;
      win.stats = recorder.Take();
      win.server = scraper->Sample();
      const double vps = VectorsPerSecond(win.stats, f.batch);
      const bool dead = win.stats.ok == 0 && win.stats.errors > 0;
      r.windows.push_back(std::move(win));
      if (r.windows.size() > 4) {  // only the last 3 can be reported: free older latencies
        std::vector<float>().swap(r.windows[r.windows.size() - 4].stats.latency_us);
      }
      const int measured = w;  // windows after the warm-up
      std::vector<float> lat = r.windows.back().stats.latency_us;
      std::sort(lat.begin(), lat.end());
      progress.Show(absl::StrFormat("[%d/%d] %s  window %d%s  %.0f vec/s  p99 %.3f ms  errors %d", step + 1,
                                    nsteps, label, w, w == 0 ? " (warm-up)" : "", vps,
                                    Percentile(lat, 0.99) / 1e3, r.windows.back().stats.errors));
      if (measured >= 1 && dead) break;  // nothing succeeds: report it rather than wait for the cap
      if (measured < 1) continue;
      if (Stable(r.windows, f.batch, f.stability)) {
        r.stable = true;
        break;
      }
      if (measured >= f.max_windows) break;
      if (Seconds(Clock::now() - step_start) + f.window_ms / 1e3 > f.max_seconds) break;
    }
    r.close_status = load.Stop();
    progress.Clear();
    Summarize(&r, f.batch);
    if (r.ok == 0) any_failed = true;
    results.push_back(std::move(r));
  }

  // ---- table
  std::vector<std::vector<std::string>> table = {{open_loop ? "RATE" : "CONCURRENCY", "REQ/S", "VEC/S", "P50_MS",
                                                  "P90_MS", "P99_MS", "ERRORS", "QUEUE_MS", "KERNEL_MS",
                                                  "BATCH", "KERNEL_US/VEC", "WINDOWS", "STABLE"}};
  for (const StepResult& r : results) {
    table.push_back({open_loop ? absl::StrFormat("%g", r.rate) : absl::StrCat(r.concurrency),
                     Num(r.seconds > 0 ? r.ok / r.seconds : NAN, 1),
                     Num(r.seconds > 0 ? r.ok * f.batch / r.seconds : NAN, 1), Num(r.p50_ms, 3),
                     Num(r.p90_ms, 3), Num(r.p99_ms, 3), absl::StrCat(r.errors), Num(r.queue_ms, 3),
                     Num(r.kernel_ms, 3), Num(r.batch, 2), Num(r.kernel_us_per_vector, 2),
                     absl::StrCat(r.windows.size() - r.first_used, "/", r.windows.size() - 1),
                     r.stable ? "yes" : "no"});
  }
  PrintTable(table, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  for (const StepResult& r : results) {
    if (!r.first_error.empty()) {
      absl::FPrintF(stderr, "%s: %d error(s), first: %s\n",
                    open_loop ? absl::StrFormat("rate %g", r.rate) : absl::StrCat("concurrency ", r.concurrency),
                    r.errors_all, r.first_error);
    }
    if (!r.close_status.ok()) absl::FPrintF(stderr, "stream ended with %s\n", FormatStatus(r.close_status));
  }

  // ---- JSON
  if (!f.json.empty()) {
    Json j;
    j["tool"] = "plume bench";
    j["server"] = g.server;
    j["method"] = method;
    j["mode"] = f.mode;
    j["echo"] = f.echo;
    j["matrix"] = f.matrix;
    j["rows"] = rows;
    j["cols"] = cols;
    j["format"] = format;
    j["dtype"] = DTypeShortName(*dtype);
    j["output_dtype"] = f.echo ? DTypeShortName(*dtype) : DTypeShortName(*out_dtype);
    j["batch"] = f.batch;
    j["request_bytes"] = request_bytes;
    j["result_bytes"] = result_bytes;
    j["loop"] = open_loop ? "open" : "closed";
    j["connections"] = f.connections;
    j["window_ms"] = f.window_ms;
    j["max_windows"] = f.max_windows;
    j["max_seconds"] = f.max_seconds;
    j["stability"] = f.stability;
    j["seed"] = f.seed;
    j["metrics_url"] = f.metrics_url;
    j["steps"] = Json::array();
    for (const StepResult& r : results) {
      Json s;
      if (open_loop) {
        s["rate"] = r.rate;
      } else {
        s["concurrency"] = r.concurrency;
      }
      s["lanes"] = r.lanes;
      s["seconds"] = r.seconds;
      s["requests"] = r.ok;
      s["requests_per_s"] = JsonNum(r.seconds > 0 ? r.ok / r.seconds : NAN);
      s["vectors_per_s"] = JsonNum(r.seconds > 0 ? r.ok * f.batch / r.seconds : NAN);
      s["latency_ms"] = {{"p50", JsonNum(r.p50_ms)}, {"p90", JsonNum(r.p90_ms)}, {"p99", JsonNum(r.p99_ms)},
                         {"mean", JsonNum(r.mean_ms)}, {"max", JsonNum(r.max_ms)}};
      s["errors"] = r.errors;
      s["errors_in_step"] = r.errors_all;
      s["first_error"] = r.first_error;
      s["stable"] = r.stable;
      s["windows_used"] = r.windows.size() - r.first_used;
      s["windows_measured"] = r.windows.size() - 1;
      Json wv = Json::array();
      for (size_t i = 1; i < r.windows.size(); ++i) wv.push_back(VectorsPerSecond(r.windows[i].stats, f.batch));
      s["window_vectors_per_s"] = wv;
      const bool have = r.windows[r.first_used - 1].server.ok && r.windows.back().server.ok;
      s["server"] = have ? Json{{"queue_ms_mean", JsonNum(r.queue_ms)},
                                {"kernel_ms_mean", JsonNum(r.kernel_ms)},
                                {"host_us_mean", JsonNum(r.host_us)},
                                {"batch_mean", JsonNum(r.batch)},
                                {"kernel_us_per_vector", JsonNum(r.kernel_us_per_vector)},
                                {"vectors", JsonNum(r.server_vectors)},
                                {"requests_dropped", JsonNum(r.dropped)}}
                         : Json(nullptr);
      j["steps"].push_back(std::move(s));
    }
    std::ofstream out(f.json, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out.good()) return Fail(absl::UnavailableError(absl::StrCat("cannot write ", f.json)), kExitUsage);
  }
  return any_failed ? kExitRpc : kExitOk;
}

}  // namespace plume::cli

#include "server/backends/sharded/sharded_backend.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <cstring>
#include <new>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "plume/reference/api.h"

namespace plume::core {

struct ShardedBackend::Ledger {
  explicit Ledger(std::vector<int64_t> budgets)
      : budget(std::move(budgets)), used(budget.size(), 0) {}

  int64_t free_bytes(size_t i) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return std::max<int64_t>(0, budget[i] - used[i]);
  }
  void Release(int device, int64_t bytes) {
    absl::MutexLock lock(&mu);
    used[static_cast<size_t>(device)] -= bytes;
  }
  std::string Describe() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::string s;
    for (size_t i = 0; i < budget.size(); ++i) {
      absl::StrAppend(&s, i == 0 ? "" : ", ", free_bytes(i), " of ", budget[i]);
    }
    return s;
  }

  const std::vector<int64_t> budget;
  absl::Mutex mu;
  std::vector<int64_t> used ABSL_GUARDED_BY(mu);
};

namespace {

// Budget bytes charged to one device; given back on destruction.
class Charge {
 public:
  Charge() = default;
  Charge(std::shared_ptr<ShardedBackend::Ledger> ledger, int device, int64_t bytes)
      : ledger_(std::move(ledger)), device_(device), bytes_(bytes) {}
  Charge(Charge&& o) noexcept : ledger_(std::move(o.ledger_)), device_(o.device_), bytes_(o.bytes_) {
    o.bytes_ = 0;
  }
  Charge& operator=(Charge&& o) noexcept {
    if (this != &o) {
      reset();
      ledger_ = std::move(o.ledger_);
      device_ = o.device_;
      bytes_ = o.bytes_;
      o.bytes_ = 0;
    }
    return *this;
  }
  ~Charge() { reset(); }
  void reset() {
    if (ledger_ != nullptr && bytes_ != 0) ledger_->Release(device_, bytes_);
    bytes_ = 0;
  }
  void add(int64_t bytes) { bytes_ += bytes; }
  int device() const { return device_; }

 private:
  std::shared_ptr<ShardedBackend::Ledger> ledger_;
  int device_ = 0;
  int64_t bytes_ = 0;
};

MatrixShape ShardShape(const MatrixShape& s, int64_t rows) {
  MatrixShape sub = s;
  sub.rows = rows;
  sub.placement = Placement::kSingle;
  return sub;
}

}  // namespace

namespace {
// A short pause while spinning.
inline void CpuRelax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}
}  // namespace

// A few threads that run GEMV shards on one device for callers, so that the
// shards of one GEMV run at once rather than one after the other. Each job
// is a whole child Gemv (start, run, wait): a shard never holds its device's
// resources (a CUDA lane) while it waits for another device, so concurrent
// sharded GEMVs cannot wait on each other in a cycle. After each job a
// thread spins for kSpin before it sleeps: under load the next job comes
// sooner than a sleeping thread would wake.
// Launcher threads per device: as many shards of different GEMVs as a CUDA
// child runs at once (its default lanes).
constexpr int kLauncherThreads = 4;

class ShardedBackend::Launcher {
 public:
  struct Job {
    const BackendMatrix* m = nullptr;
    GemvArgs args;
    absl::Status status = absl::UnknownError("not run");
    std::atomic<bool> done{false};
  };

  Launcher(Backend* child, int threads) : child_(child) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~Launcher() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (auto& t : threads_) t.join();
  }

  void Post(Job* job) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(job);
    queued_.fetch_add(1, std::memory_order_release);
  }

  // Waits until `job` has run: spins for about as long as a shard takes,
  // then yields.
  static void AwaitDone(const Job& job) {
    const auto spin_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
    while (!job.done.load(std::memory_order_acquire)) {
      if (std::chrono::steady_clock::now() < spin_until) {
        CpuRelax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr std::chrono::microseconds kSpin{200};

  bool ReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || stop_; }

  void Run() {
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + kSpin;
      while (queued_.load(std::memory_order_acquire) == 0 && std::chrono::steady_clock::now() < until) {
        CpuRelax();
      }
      Job* job = nullptr;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &Launcher::ReadyLocked));
        if (queue_.empty()) return;  // stopped, nothing left
        job = queue_.front();
        queue_.pop_front();
        queued_.fetch_sub(1, std::memory_order_relaxed);
      }
      job->status = child_->Gemv(*job->m, job->args);
      job->done.store(true, std::memory_order_release);
    }
  }

  Backend* const child_;
  absl::Mutex mu_;
  std::deque<Job*> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int> queued_{0};
  std::vector<std::thread> threads_;  // last: start once the rest is built
};

struct ShardedBackend::Part {
  int device = 0;        // child index
  int64_t row0 = 0;      // first row (kSharded)
  int64_t rows = 0;
  std::unique_ptr<BackendMatrix> m;
  Charge charge;
};

namespace {

class ShardedMatrix final : public BackendMatrix {
 public:
  ShardedMatrix(const MatrixShape& shape, Placement kind, std::vector<ShardedBackend::Part> parts)
      : BackendMatrix(shape), kind_(kind), parts_(std::move(parts)) {}
  Placement kind() const { return kind_; }
  const std::vector<ShardedBackend::Part>& parts() const { return parts_; }

 private:
  Placement kind_;
  std::vector<ShardedBackend::Part> parts_;  // ascending device order
};

class ShardedKvCache final : public BackendKvCache {
 public:
  ShardedKvCache(std::unique_ptr<BackendKvCache> inner, Charge charge)
      : BackendKvCache(inner->shape()), inner_(std::move(inner)), charge_(std::move(charge)) {}
  int64_t seq() const override { return inner_->seq(); }
  BackendKvCache& inner() const { return *inner_; }
  int device() const { return charge_.device(); }
  Charge& charge() { return charge_; }

 private:
  std::unique_ptr<BackendKvCache> inner_;
  Charge charge_;
};

// Splits `rows` into contiguous ranges of whole 128-row blocks (the last
// shard takes the partial block), in device order, one per device with a
// nonzero share. Shares are even when every device has room for its even
// share; otherwise in proportion to `free` (as far as each device's room
// allows), the remaining blocks one at a time to the device left with the
// most room. Shards may not fit when the devices have too little room
// between them; the caller checks.
std::vector<ShardedBackend::Part> SplitRows(const MatrixShape& s, const std::vector<int64_t>& free) {
  const size_t n = free.size();
  const int64_t blocks = (s.rows + kBlockCols - 1) / kBlockCols;
  auto bytes_of = [&](int64_t rows) { return ShardShape(s, rows).resident_bytes(); };
  // Each device's shard rows for `share` blocks each.
  auto rows_of = [&](const std::vector<int64_t>& share) {
    std::vector<int64_t> rows(n, 0);
    int64_t start = 0;
    for (size_t i = 0; i < n; ++i) {
      rows[i] = std::min(s.rows, start + share[i] * kBlockCols) - std::min(s.rows, start);
      start += share[i] * kBlockCols;
    }
    return rows;
  };
  auto all_fit = [&](const std::vector<int64_t>& share) {
    const std::vector<int64_t> rows = rows_of(share);
    for (size_t i = 0; i < n; ++i) {
      if (rows[i] > 0 && bytes_of(rows[i]) > free[i]) return false;
    }
    return true;
  };
  std::vector<int64_t> share(n, 0);
  for (size_t i = 0; i < n; ++i) {
    share[i] = blocks / static_cast<int64_t>(n) + (static_cast<int64_t>(i) < blocks % static_cast<int64_t>(n) ? 1 : 0);
  }
  if (!all_fit(share)) {
    int64_t total = 0;
    for (int64_t f : free) total += f;
    const int64_t fixed = bytes_of(0);                      // TENSOR: its scale
    const int64_t block_bytes = (bytes_of(1) - fixed) * kBlockCols;
    int64_t given = 0;
    for (size_t i = 0; i < n; ++i) {
      const int64_t fit = free[i] < fixed ? 0 : (free[i] - fixed) / block_bytes;  // whole blocks
      const auto fair = total > 0 ? static_cast<int64_t>(static_cast<long double>(blocks) * free[i] / total) : 0;
      share[i] = std::min(fit, fair);
      given += share[i];
    }
    for (; given < blocks; ++given) {
      int best = -1;
      int64_t best_room = 0;
      for (size_t i = 0; i < n; ++i) {
        ++share[i];
        if (all_fit(share)) {
          const int64_t room = free[i] - bytes_of(rows_of(share)[i]);
          if (best < 0 || room > best_room) best = static_cast<int>(i), best_room = room;
        }
        --share[i];
      }
      if (best < 0) {
        share[n - 1] += blocks - given;  // cannot fit: the caller says so
        break;
      }
      ++share[static_cast<size_t>(best)];
    }
  }
  const std::vector<int64_t> rows = rows_of(share);
  std::vector<ShardedBackend::Part> parts;
  int64_t row0 = 0;
  for (size_t i = 0; i < n; ++i) {
    if (rows[i] == 0) continue;
    ShardedBackend::Part p;
    p.device = static_cast<int>(i);
    p.row0 = row0;
    p.rows = rows[i];
    row0 += rows[i];
    parts.push_back(std::move(p));
  }
  return parts;
}

}  // namespace

absl::StatusOr<std::vector<int>> ParseDeviceList(std::string_view flag, int visible) {
  if (visible <= 0) return absl::InvalidArgumentError("no device is visible");
  std::vector<int> ids;
  if (flag == "all") {
    for (int i = 0; i < visible; ++i) ids.push_back(i);
    return ids;
  }
  for (absl::string_view part : absl::StrSplit(absl::string_view(flag.data(), flag.size()), ',')) {
    int id = -1;
    if (!absl::SimpleAtoi(part, &id) || id < 0 || id >= visible) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", part, "\" is not a device: expected all or numbers 0..", visible - 1,
          " separated by commas"));
    }
    if (std::find(ids.begin(), ids.end(), id) != ids.end()) {
      return absl::InvalidArgumentError(absl::StrCat("device ", id, " is listed twice"));
    }
    ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<std::unique_ptr<ShardedBackend>> ShardedBackend::Create(
    std::vector<std::unique_ptr<Backend>> children, const ShardedBackendOptions& options) {
  if (children.empty()) return absl::InvalidArgumentError("sharded backend: no devices");
  for (const auto& c : children) {
    if (c == nullptr) return absl::InvalidArgumentError("sharded backend: a device is missing");
  }
  auto b = std::unique_ptr<ShardedBackend>(new ShardedBackend());
  b->device_ids_ = options.device_ids;
  if (b->device_ids_.empty()) {
    for (size_t i = 0; i < children.size(); ++i) b->device_ids_.push_back(static_cast<int>(i));
  }
  if (b->device_ids_.size() != children.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sharded backend: ", children.size(),
                                                   " devices but ", b->device_ids_.size(),
                                                   " device ids"));
  }
  std::vector<int64_t> budgets;
  for (const auto& c : children) {
    budgets.push_back(options.device_budget_bytes > 0 ? options.device_budget_bytes
                                                      : c->memory_capacity_bytes());
  }
  b->ledger_ = std::make_shared<Ledger>(std::move(budgets));
  b->in_flight_ = std::make_unique<std::atomic<int>[]>(children.size());
  for (size_t i = 0; i < children.size(); ++i) b->in_flight_[i].store(0);
  b->name_ = absl::StrCat(std::string(children[0]->name()), ":", absl::StrJoin(b->device_ids_, ","));
  b->children_ = std::move(children);
  if (b->children_.size() > 1) {
    for (auto& c : b->children_) b->launchers_.push_back(std::make_unique<Launcher>(c.get(), kLauncherThreads));
  }
  return b;
}

ShardedBackend::~ShardedBackend() = default;

int64_t ShardedBackend::device_used_bytes(int i) const {
  absl::MutexLock lock(&ledger_->mu);
  return ledger_->used[static_cast<size_t>(i)];
}

int64_t ShardedBackend::device_budget_bytes(int i) const {
  return ledger_->budget[static_cast<size_t>(i)];
}

std::vector<DeviceBudget> ShardedBackend::device_budgets() const {
  std::vector<DeviceBudget> out;
  for (int i = 0; i < num_devices(); ++i) out.push_back({device_used_bytes(i), device_budget_bytes(i)});
  return out;
}

absl::StatusOr<std::unique_ptr<HostBuffer>> ShardedBackend::AllocateHostBuffer(size_t bytes) {
  // The CUDA backend's pinned buffers are portable: fast to every device.
  return children_[0]->AllocateHostBuffer(bytes);
}

bool ShardedBackend::device_memory(DeviceMemory* out) const {
  DeviceMemory sum;
  bool any = false;
  for (const auto& c : children_) {
    DeviceMemory d;
    if (!c->device_memory(&d)) continue;
    sum.used += d.used;
    sum.total += d.total;
    any = true;
  }
  if (any) *out = sum;
  return any;
}

int64_t ShardedBackend::memory_capacity_bytes() const {
  int64_t sum = 0;
  for (int64_t b : ledger_->budget) sum += b;
  return sum;
}

int64_t ShardedBackend::ReservedBytes(const MatrixShape& shape) const {
  const int64_t n = num_devices();
  switch (shape.placement) {
    case Placement::kSingle: return shape.resident_bytes();
    case Placement::kReplicated: return n * shape.resident_bytes();
    default:  // a sharded TENSOR matrix keeps its scale on every shard
      return shape.resident_bytes() + (shape.scale_mode == ScaleMode::kTensor ? (n - 1) * 4 : 0);
  }
}

MatrixPlacement ShardedBackend::PlacementOf(const BackendMatrix& m) const {
  const auto& s = static_cast<const ShardedMatrix&>(m);
  MatrixPlacement p;
  p.kind = s.kind();
  for (const Part& part : s.parts()) {
    p.devices.push_back(device_ids_[static_cast<size_t>(part.device)]);
    if (s.kind() == Placement::kSharded) p.shard_rows.push_back(part.rows);
  }
  return p;
}

absl::StatusOr<std::vector<ShardedBackend::Part>> ShardedBackend::Place(const MatrixShape& shape,
                                                                        Placement* kind) {
  const size_t n = children_.size();
  const int64_t whole = shape.resident_bytes();
  absl::MutexLock lock(&ledger_->mu);
  std::vector<int64_t> free(n);
  size_t roomiest = 0;
  for (size_t i = 0; i < n; ++i) {
    free[i] = ledger_->free_bytes(i);
    if (free[i] > free[roomiest]) roomiest = i;
  }
  auto exhausted = [&](std::string_view why) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "device memory budget exceeded: a ", shape.rows, "x", shape.cols, " matrix (", whole,
        " bytes) ", std::string(why), "; free bytes per device: ", ledger_->Describe()));
  };
  std::vector<Part> parts;
  *kind = shape.placement;
  if (*kind == Placement::kAuto) {
    *kind = whole <= free[roomiest] || n == 1 ? Placement::kSingle : Placement::kSharded;
  }
  switch (*kind) {
    case Placement::kSingle: {
      if (whole > free[roomiest]) return exhausted("fits on no single device");
      Part p;
      p.device = static_cast<int>(roomiest);
      p.rows = shape.rows;
      parts.push_back(std::move(p));
      break;
    }
    case Placement::kReplicated:
      for (size_t i = 0; i < n; ++i) {
        if (whole > free[i]) return exhausted("cannot be replicated on every device");
        Part p;
        p.device = static_cast<int>(i);
        p.rows = shape.rows;
        parts.push_back(std::move(p));
      }
      break;
    default:
      parts = SplitRows(shape, free);
      for (const Part& p : parts) {
        if (ShardShape(shape, p.rows).resident_bytes() > free[static_cast<size_t>(p.device)]) {
          return exhausted("does not fit even when split across the devices");
        }
      }
      break;
  }
  for (Part& p : parts) {
    const int64_t bytes = ShardShape(shape, p.rows).resident_bytes();
    ledger_->used[static_cast<size_t>(p.device)] += bytes;
    p.charge = Charge(ledger_, p.device, bytes);
  }
  return parts;
}

absl::StatusOr<std::unique_ptr<BackendMatrix>> ShardedBackend::Quantize(const MatrixShape& shape,
                                                                        const void* src,
                                                                        DType src_dtype) {
  Placement kind;
  auto parts = Place(shape, &kind);
  if (!parts.ok()) return parts.status();
  if (kind == Placement::kSharded && shape.scale_mode == ScaleMode::kTensor && parts->size() > 1) {
    // One scale over the whole matrix: quantize it here, then hand each
    // device its rows.
    std::vector<uint32_t> words;
    float scale = 1.0f;
    try {
      words.resize(static_cast<size_t>(shape.layout().total_words()));
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(
          "sharded backend: cannot allocate host memory to quantize a TENSOR-scaled matrix");
    }
    ref::QuantizePack(src, src_dtype, shape.rows, shape.cols,
                      ref::QuantizeOptions{shape.format, shape.scale_mode, shape.saturate},
                      words.data(), &scale);
    for (Part& p : *parts) {
      auto m = children_[static_cast<size_t>(p.device)]->FromPacked(
          ShardShape(shape, p.rows), words.data() + p.row0 * shape.layout().words_per_row(), &scale);
      if (!m.ok()) return m.status();
      p.m = std::move(*m);
    }
  } else {
    const int64_t row_bytes = shape.cols * DTypeSize(src_dtype);
    for (Part& p : *parts) {
      auto m = children_[static_cast<size_t>(p.device)]->Quantize(
          ShardShape(shape, p.rows), static_cast<const char*>(src) + p.row0 * row_bytes, src_dtype);
      if (!m.ok()) return m.status();
      p.m = std::move(*m);
    }
  }
  return std::unique_ptr<BackendMatrix>(new ShardedMatrix(shape, kind, std::move(*parts)));
}

namespace {

// Rows routed to the quantizers of the devices that hold them.
class ShardedRowQuantizer final : public RowQuantizer {
 public:
  ShardedRowQuantizer(const MatrixShape& shape, Placement kind,
                      std::vector<ShardedBackend::Part> parts,
                      std::vector<std::unique_ptr<RowQuantizer>> children, int64_t row_bytes)
      : RowQuantizer(shape.rows),
        shape_(shape),
        kind_(kind),
        parts_(std::move(parts)),
        children_(std::move(children)),
        row_bytes_(row_bytes) {}

  int64_t host_staging_bytes() const override {
    int64_t n = 0;
    for (const auto& c : children_) n += c->host_staging_bytes();
    return n;
  }

 protected:
  absl::Status Quantize(const void* src, int64_t row0, int64_t rows) override {
    for (size_t i = 0; i < parts_.size(); ++i) {
      const ShardedBackend::Part& p = parts_[i];
      const int64_t lo = std::max(row0, p.row0);
      const int64_t hi = std::min(row0 + rows, p.row0 + p.rows);
      if (lo >= hi) continue;
      if (absl::Status s = children_[i]->AddRows(
              static_cast<const char*>(src) + (lo - row0) * row_bytes_, hi - lo);
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<BackendMatrix>> Take() override {
    for (size_t i = 0; i < parts_.size(); ++i) {
      auto m = children_[i]->Finish();
      if (!m.ok()) return m.status();
      parts_[i].m = std::move(*m);
    }
    return std::unique_ptr<BackendMatrix>(new ShardedMatrix(shape_, kind_, std::move(parts_)));
  }

 private:
  const MatrixShape shape_;
  const Placement kind_;
  std::vector<ShardedBackend::Part> parts_;
  std::vector<std::unique_ptr<RowQuantizer>> children_;
  const int64_t row_bytes_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RowQuantizer>> ShardedBackend::BeginRowQuantize(
    const MatrixShape& shape, DType src_dtype) {
  if (shape.scale_mode == ScaleMode::kTensor || shape.rows <= 0) {
    return std::unique_ptr<RowQuantizer>();
  }
  Placement kind;
  auto parts = Place(shape, &kind);
  if (!parts.ok()) return parts.status();
  std::vector<std::unique_ptr<RowQuantizer>> children;
  for (const Part& p : *parts) {
    auto q = children_[static_cast<size_t>(p.device)]->BeginRowQuantize(ShardShape(shape, p.rows),
                                                                        src_dtype);
    if (!q.ok()) return q.status();
    if (*q == nullptr) return std::unique_ptr<RowQuantizer>();  // stage it all instead
    children.push_back(std::move(*q));
  }
  return std::unique_ptr<RowQuantizer>(std::make_unique<ShardedRowQuantizer>(
      shape, kind, std::move(*parts), std::move(children), shape.cols * DTypeSize(src_dtype)));
}

namespace {
// The scales of rows [row0, row0 + rows) in a full scale array.
template <class Float>
Float* ScalesOfRows(const MatrixShape& s, Float* scales, int64_t row0) {
  switch (s.scale_mode) {
    case ScaleMode::kRow: return scales + row0;
    case ScaleMode::kBlock128: return scales + row0 * s.layout().blocks_per_row();
    default: return scales;  // NONE: unused; TENSOR: the one scale
  }
}
}  // namespace

absl::StatusOr<std::unique_ptr<BackendMatrix>> ShardedBackend::FromPacked(const MatrixShape& shape,
                                                                          const uint32_t* words,
                                                                          const float* scales) {
  Placement kind;
  auto parts = Place(shape, &kind);
  if (!parts.ok()) return parts.status();
  for (Part& p : *parts) {
    auto m = children_[static_cast<size_t>(p.device)]->FromPacked(
        ShardShape(shape, p.rows), words + p.row0 * shape.layout().words_per_row(),
        ScalesOfRows(shape, scales, p.row0));
    if (!m.ok()) return m.status();
    p.m = std::move(*m);
  }
  return std::unique_ptr<BackendMatrix>(new ShardedMatrix(shape, kind, std::move(*parts)));
}

absl::Status ShardedBackend::ReadPacked(const BackendMatrix& m, uint32_t* words, float* scales) {
  const auto& s = static_cast<const ShardedMatrix&>(m);
  const MatrixShape& shape = s.shape();
  for (const Part& p : s.parts()) {
    if (absl::Status st = children_[static_cast<size_t>(p.device)]->ReadPacked(
            *p.m, words + p.row0 * shape.layout().words_per_row(),
            ScalesOfRows(shape, scales, p.row0));
        !st.ok()) {
      return st;
    }
    if (s.kind() != Placement::kSharded) break;  // one copy says it all
  }
  return absl::OkStatus();
}

absl::Status ShardedBackend::ReadPackedRows(const BackendMatrix& m, int64_t row0, int64_t rows,
                                            uint32_t* words, float* scales) {
  const auto& s = static_cast<const ShardedMatrix&>(m);
  const MatrixShape& shape = s.shape();
  if (absl::Status st = CheckRowRange(shape.rows, row0, rows); !st.ok()) return st;
  if (s.kind() != Placement::kSharded) {  // one copy says it all
    const Part& p = s.parts().front();
    return children_[static_cast<size_t>(p.device)]->ReadPackedRows(*p.m, row0, rows, words, scales);
  }
  const int64_t wpr = shape.layout().words_per_row();
  const int64_t end = row0 + rows;
  for (const Part& p : s.parts()) {
    const int64_t from = std::max(row0, p.row0);
    const int64_t to = std::min(end, p.row0 + p.rows);
    if (from >= to) continue;
    // TENSOR: every shard holds the one scale, and each writes it.
    if (absl::Status st = children_[static_cast<size_t>(p.device)]->ReadPackedRows(
            *p.m, from - p.row0, to - from, words + (from - row0) * wpr,
            ScalesOfRows(shape, scales, from - row0));
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

int ShardedBackend::PickReplica() const {
  const int n = num_devices();
  const int start = static_cast<int>(turn_.fetch_add(1, std::memory_order_relaxed) % n);
  int best = start;
  for (int k = 1; k < n; ++k) {
    const int i = (start + k) % n;
    if (in_flight_[i].load(std::memory_order_relaxed) <
        in_flight_[best].load(std::memory_order_relaxed)) {
      best = i;
    }
  }
  return best;
}

absl::Status ShardedBackend::Gemv(const BackendMatrix& w, const GemvArgs& args) {
  const auto& s = static_cast<const ShardedMatrix&>(w);
  const auto& parts = s.parts();
  if (s.kind() != Placement::kSharded || parts.size() == 1) {
    const Part& p = parts[s.kind() == Placement::kReplicated ? PickReplica() : 0];
    std::atomic<int>& count = in_flight_[static_cast<size_t>(p.device)];
    count.fetch_add(1, std::memory_order_relaxed);
    absl::Status st = children_[static_cast<size_t>(p.device)]->Gemv(*p.m, args);
    count.fetch_sub(1, std::memory_order_relaxed);
    return st;
  }
  // Every shard runs at once: the first on this thread, the others on their
  // devices' launchers. Each is a whole child Gemv, so none holds a device's
  // stream while it waits for another device.
  const int64_t y_elem = DTypeSize(args.y_dtype);
  const int64_t stride = args.y_stride != 0 ? args.y_stride : s.shape().rows;
  auto shard_args = [&](const Part& p) {
    GemvArgs a = args;
    a.y = static_cast<char*>(args.y) + p.row0 * y_elem;
    a.y_stride = stride;
    return a;
  };
  std::vector<Launcher::Job> jobs(parts.size() - 1);
  for (size_t i = 1; i < parts.size(); ++i) {
    jobs[i - 1].m = parts[i].m.get();
    jobs[i - 1].args = shard_args(parts[i]);
    launchers_[static_cast<size_t>(parts[i].device)]->Post(&jobs[i - 1]);
  }
  absl::Status status =
      children_[static_cast<size_t>(parts[0].device)]->Gemv(*parts[0].m, shard_args(parts[0]));
  for (const auto& j : jobs) {
    Launcher::AwaitDone(j);
    status.Update(j.status);
  }
  return status;
}

// ---------------------------------------------------------------- K/V caches

absl::StatusOr<std::unique_ptr<BackendKvCache>> ShardedBackend::KvFromPacked(
    const KvShape& shape, int64_t seq, const uint8_t* pages, const float* k_scales,
    const float* v_scales) {
  const int64_t bytes = shape.resident_bytes(seq);
  Charge charge;
  {
    // The device with the least in use that has room.
    absl::MutexLock lock(&ledger_->mu);
    int best = -1;
    for (size_t i = 0; i < children_.size(); ++i) {
      if (ledger_->free_bytes(i) < bytes) continue;
      if (best < 0 || ledger_->used[i] < ledger_->used[static_cast<size_t>(best)]) {
        best = static_cast<int>(i);
      }
    }
    if (best < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("device memory budget exceeded: a K/V cache of ", bytes,
                       " bytes fits on no device; free bytes per device: ", ledger_->Describe()));
    }
    ledger_->used[static_cast<size_t>(best)] += bytes;
    charge = Charge(ledger_, best, bytes);
  }
  Backend& child = *children_[static_cast<size_t>(charge.device())];
  auto inner = seq == 0 && pages == nullptr ? child.CreateKv(shape)
                                            : child.KvFromPacked(shape, seq, pages, k_scales, v_scales);
  if (!inner.ok()) return inner.status();
  return std::unique_ptr<BackendKvCache>(new ShardedKvCache(std::move(*inner), std::move(charge)));
}

absl::StatusOr<std::unique_ptr<BackendKvCache>> ShardedBackend::CreateKv(const KvShape& shape) {
  return KvFromPacked(shape, 0, nullptr, nullptr, nullptr);
}

absl::Status ShardedBackend::AppendKv(BackendKvCache& cache, const KvAppendArgs& args) {
  auto& c = static_cast<ShardedKvCache&>(cache);
  const int device = c.device();
  const int64_t more =
      c.shape().resident_bytes(c.seq() + args.tokens) - c.shape().resident_bytes(c.seq());
  {
    absl::MutexLock lock(&ledger_->mu);
    if (more > ledger_->free_bytes(static_cast<size_t>(device))) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "device memory budget exceeded: appending ", args.tokens, " tokens needs ", more,
          " bytes on device ", device_ids_[static_cast<size_t>(device)],
          "; free bytes per device: ", ledger_->Describe()));
    }
    ledger_->used[static_cast<size_t>(device)] += more;
  }
  absl::Status st = children_[static_cast<size_t>(device)]->AppendKv(c.inner(), args);
  if (st.ok()) {
    c.charge().add(more);
  } else {
    ledger_->Release(device, more);
  }
  return st;
}

absl::Status ShardedBackend::Attention(const BackendKvCache& cache, const AttentionArgs& args) {
  const auto& c = static_cast<const ShardedKvCache&>(cache);
  return children_[static_cast<size_t>(c.device())]->Attention(c.inner(), args);
}

absl::Status ShardedBackend::ReadKv(const BackendKvCache& cache, int64_t first_page,
                                    int64_t num_pages, uint8_t* pages, float* k_scales,
                                    float* v_scales) {
  const auto& c = static_cast<const ShardedKvCache&>(cache);
  return children_[static_cast<size_t>(c.device())]->ReadKv(c.inner(), first_page,
                                                                     num_pages, pages, k_scales,
                                                                     v_scales);
}

}  // namespace plume::core

#include "server/core/sharded_backend.h"

#include <algorithm>
#include <cstring>
#include <new>
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
  Charge& charge() { return charge_; }

 private:
  std::unique_ptr<BackendKvCache> inner_;
  Charge charge_;
};

// Splits `rows` into contiguous ranges of whole 128-row blocks (the last may
// be partial), one per device with a nonzero share. Shares are even when
// every device has room for its even share, else proportional to `free`.
std::vector<ShardedBackend::Part> SplitRows(const MatrixShape& s, const std::vector<int64_t>& free) {
  const int64_t n = static_cast<int64_t>(free.size());
  const int64_t blocks = (s.rows + kBlockCols - 1) / kBlockCols;
  auto bytes_of = [&](int64_t b) {
    return b == 0 ? 0 : ShardShape(s, std::min(s.rows, b * kBlockCols)).resident_bytes();
  };
  std::vector<int64_t> share(static_cast<size_t>(n), 0);
  bool fits = true;
  for (int64_t i = 0; i < n; ++i) {
    share[i] = blocks / n + (i < blocks % n ? 1 : 0);
    fits = fits && bytes_of(share[i]) <= free[i];
  }
  if (!fits) {
    // Proportional to free budget, then the leftover blocks one by one to the
    // device with the most room left.
    int64_t total = 0;
    for (int64_t f : free) total += f;
    int64_t given = 0;
    for (int64_t i = 0; i < n; ++i) {
      share[i] = total > 0 ? static_cast<int64_t>(static_cast<long double>(blocks) * free[i] / total) : 0;
      given += share[i];
    }
    for (; given < blocks; ++given) {
      int64_t best = 0;
      for (int64_t i = 1; i < n; ++i) {
        if (free[i] - bytes_of(share[i] + 1) > free[best] - bytes_of(share[best] + 1)) best = i;
      }
      ++share[best];
    }
  }
  std::vector<ShardedBackend::Part> parts;
  int64_t block0 = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (share[i] == 0) continue;
    ShardedBackend::Part p;
    p.device = static_cast<int>(i);
    p.row0 = block0 * kBlockCols;
    p.rows = std::min(s.rows, (block0 + share[i]) * kBlockCols) - p.row0;
    block0 += share[i];
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
  // Every shard is started before any is waited for, in device order (the
  // order every caller takes the devices' streams in, so none waits on
  // another in a cycle).
  const int64_t y_elem = DTypeSize(args.y_dtype);
  const int64_t stride = args.y_stride != 0 ? args.y_stride : s.shape().rows;
  std::vector<std::unique_ptr<PendingGemv>> running;
  running.reserve(parts.size());
  absl::Status status;
  for (const Part& p : parts) {
    GemvArgs a = args;
    a.y = static_cast<char*>(args.y) + p.row0 * y_elem;
    a.y_stride = stride;
    auto started = children_[static_cast<size_t>(p.device)]->StartGemv(*p.m, a);
    if (!started.ok()) {
      status = started.status();
      break;
    }
    running.push_back(std::move(*started));
  }
  for (auto& r : running) status.Update(r->Wait());
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
  const int device = c.charge().device();
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
  auto& c = const_cast<ShardedKvCache&>(static_cast<const ShardedKvCache&>(cache));
  return children_[static_cast<size_t>(c.charge().device())]->Attention(c.inner(), args);
}

absl::Status ShardedBackend::ReadKv(const BackendKvCache& cache, int64_t first_page,
                                    int64_t num_pages, uint8_t* pages, float* k_scales,
                                    float* v_scales) {
  auto& c = const_cast<ShardedKvCache&>(static_cast<const ShardedKvCache&>(cache));
  return children_[static_cast<size_t>(c.charge().device())]->ReadKv(c.inner(), first_page,
                                                                     num_pages, pages, k_scales,
                                                                     v_scales);
}

}  // namespace plume::core

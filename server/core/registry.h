// Registry<T>: the names of one kind of resident object (matrices, K/V
// caches) and the byte budget they are charged to. MatrixStore and KvStore
// are thin users of it.
//
// - A name is reserved (Reserve) while its upload runs, with the bytes the
//   upload will need taken from the budget up front: a second reservation of
//   the name fails with ALREADY_EXISTS, one that does not fit with
//   RESOURCE_EXHAUSTED. Commit publishes the entry under the name; dropping
//   the reservation instead frees the name and the bytes.
// - Entries are handed out as shared_ptr: removing a name takes it off the
//   map at once; the entry (and the budget bytes it holds) goes when the
//   last user lets go of it.
// - Lookups (Get, List) take the lock as readers, so they never wait for
//   each other; writers hold it only to change the map. Nothing slow (no
//   file I/O, no backend call) ever runs under it.
// - Removing a name can keep it reserved (Remove(name, /*hold_name=*/true))
//   until the caller has finished removing what else belongs to it — the
//   durable store's file — outside the lock. No new upload of the name can
//   start meanwhile, so none can write its file before the old one is
//   unlinked and have it unlinked in its place.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace plume::core {

// Shared accounting of the byte budget. Outlives the registries if an
// entry does.
class Budget {
 public:
  explicit Budget(int64_t capacity) : capacity_(capacity) {}
  bool TryReserve(int64_t bytes) {
    int64_t used = used_.load(std::memory_order_acquire);
    do {
      if (bytes > capacity_ - used) return false;
    } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_acq_rel));
    return true;
  }
  void Release(int64_t bytes) { used_.fetch_sub(bytes, std::memory_order_acq_rel); }
  int64_t used() const { return used_.load(std::memory_order_acquire); }
  int64_t capacity() const { return capacity_; }

 private:
  const int64_t capacity_;
  std::atomic<int64_t> used_{0};
};

// Bytes held against the budget; released on destruction.
class Reservation {
 public:
  Reservation() = default;
  Reservation(std::shared_ptr<Budget> budget, int64_t bytes)
      : budget_(std::move(budget)), bytes_(bytes) {}
  Reservation(Reservation&& o) noexcept : budget_(std::move(o.budget_)), bytes_(o.bytes_) {
    o.bytes_ = 0;
  }
  Reservation& operator=(Reservation&& o) noexcept {
    if (this != &o) {
      reset();
      budget_ = std::move(o.budget_);
      bytes_ = o.bytes_;
      o.bytes_ = 0;
    }
    return *this;
  }
  ~Reservation() { reset(); }
  void reset() {
    if (budget_ && bytes_ > 0) budget_->Release(bytes_);
    budget_.reset();
    bytes_ = 0;
  }
  int64_t bytes() const { return bytes_; }

 private:
  std::shared_ptr<Budget> budget_;
  int64_t bytes_ = 0;
};

// How a registry names its entries in errors.
struct RegistryWords {
  std::string kind;        // "matrix": `matrix "w" not found`
  std::string taken_hint;  // after `already exists`: "delete it first"
  std::string needs;       // `needs 10 bytes` or, for "more", `needs 10 more bytes`
};

template <class T>
class Registry {
 public:
  // Called with the number of entries and their resident bytes after every
  // change, under the registry's lock (keep it quick: gauges).
  using GaugeFn = std::function<void(int64_t entries, int64_t resident_bytes)>;

  Registry(std::shared_ptr<Budget> budget, RegistryWords words, GaugeFn gauges = {})
      : budget_(std::move(budget)), words_(std::move(words)), gauges_(std::move(gauges)) {
    absl::MutexLock lock(&mu_);
    UpdateGaugesLocked();
  }
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // A reserved name with the budget bytes held for it. Dropped before
  // Commit, it frees both.
  class Pending {
   public:
    Pending(Pending&& o) noexcept
        : registry_(std::exchange(o.registry_, nullptr)),
          name_(std::move(o.name_)),
          reservation_(std::move(o.reservation_)) {}
    Pending& operator=(Pending&&) = delete;
    ~Pending() {
      if (registry_ != nullptr) registry_->Unreserve(name_);
    }
    const std::string& name() const { return name_; }
    // The budget bytes held for the upload, for the entry to hold: taken
    // before Commit, or Commit releases them.
    Reservation TakeReservation() { return std::move(reservation_); }

   private:
    friend class Registry;
    Pending(Registry* r, std::string name, Reservation reservation)
        : registry_(r), name_(std::move(name)), reservation_(std::move(reservation)) {}
    Registry* registry_;
    std::string name_;
    Reservation reservation_;
  };

  // Reserves `name` (ALREADY_EXISTS if an entry, an upload or an unfinished
  // removal has it) and `bytes` of the budget (RESOURCE_EXHAUSTED).
  absl::StatusOr<Pending> Reserve(const std::string& name, int64_t bytes) {
    absl::MutexLock lock(&mu_);
    if (entries_.count(name) != 0) {
      return absl::AlreadyExistsError(
          absl::StrCat(words_.kind, " \"", name, "\" already exists; ", words_.taken_hint));
    }
    if (auto it = reserved_.find(name); it != reserved_.end()) {
      if (it->second == Hold::kRemoval) {
        return absl::AlreadyExistsError(absl::StrCat(
            words_.kind, " \"", name, "\" is being deleted; upload it again once the delete is done"));
      }
      return absl::AlreadyExistsError(absl::StrCat(
          words_.kind, " \"", name, "\" already exists (upload in progress); ", words_.taken_hint));
    }
    if (!budget_->TryReserve(bytes)) return BudgetExceeded(name, bytes);
    reserved_.emplace(name, Hold::kUpload);
    return Pending(this, name, Reservation(budget_, bytes));
  }

  // Publishes `entry` under the pending name, counting `resident_bytes` in
  // the gauges. Returns the entry.
  std::shared_ptr<T> Commit(Pending pending, std::shared_ptr<T> entry, int64_t resident_bytes) {
    absl::MutexLock lock(&mu_);
    reserved_.erase(pending.name_);
    pending.registry_ = nullptr;
    entries_[pending.name_] = entry;
    resident_bytes_ += resident_bytes;
    UpdateGaugesLocked();
    return entry;
  }

  // NOT_FOUND if there is no such entry.
  absl::StatusOr<std::shared_ptr<T>> Get(std::string_view name) const {
    absl::ReaderMutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) return NotFound(name);
    return it->second;
  }

  // Every entry, sorted by name.
  std::vector<std::shared_ptr<T>> List() const {
    absl::ReaderMutexLock lock(&mu_);
    std::vector<std::shared_ptr<T>> out;
    out.reserve(entries_.size());
    for (const auto& [name, e] : entries_) out.push_back(e);
    return out;
  }

  // A name taken off the map by Remove. With its name held, no reservation
  // of it succeeds until Finish, Restore or destruction.
  class Removal {
   public:
    Removal(Removal&& o) noexcept
        : registry_(std::exchange(o.registry_, nullptr)),
          name_(std::move(o.name_)),
          entry_(std::move(o.entry_)) {}
    Removal& operator=(Removal&&) = delete;
    ~Removal() { Finish(); }
    const std::shared_ptr<T>& entry() const { return entry_; }
    // The removal is complete: the name is free again.
    void Finish() {
      if (registry_ != nullptr) std::exchange(registry_, nullptr)->Unreserve(name_);
    }
    // The removal failed: the entry is back under its name (its resident
    // bytes, `resident_bytes`, counted again).
    void Restore(int64_t resident_bytes) {
      if (registry_ != nullptr) std::exchange(registry_, nullptr)->PutBack(name_, entry_, resident_bytes);
    }

   private:
    friend class Registry;
    Removal(Registry* r, std::string name, std::shared_ptr<T> entry)
        : registry_(r), name_(std::move(name)), entry_(std::move(entry)) {}
    Registry* registry_;  // null: the name is not held
    std::string name_;
    std::shared_ptr<T> entry_;
  };

  // Takes `name` off the map (NOT_FOUND if it is not there; ABORTED while
  // another removal holds it, which may yet fail and put it back), its
  // resident bytes (`resident_bytes(entry)`) off the gauges; with
  // `hold_name`, keeps the name reserved for as long as the Removal lives.
  absl::StatusOr<Removal> Remove(const std::string& name, bool hold_name,
                                 const std::function<int64_t(const T&)>& resident_bytes) {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      if (auto r = reserved_.find(name); r != reserved_.end() && r->second == Hold::kRemoval) {
        return absl::AbortedError(
            absl::StrCat(words_.kind, " \"", name, "\" is being deleted by another call"));
      }
      return NotFound(name);
    }
    std::shared_ptr<T> entry = std::move(it->second);
    entries_.erase(it);
    if (resident_bytes) resident_bytes_ -= resident_bytes(*entry);
    if (hold_name) reserved_.emplace(name, Hold::kRemoval);
    UpdateGaugesLocked();
    return Removal(hold_name ? this : nullptr, name, std::move(entry));
  }

  // Takes `name` off the map if `entry` is still what it names (an entry
  // that has to stop being served). True if it did.
  bool RemoveIf(const std::string& name, const T* entry) {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end() || it->second.get() != entry) return false;
    entries_.erase(it);
    UpdateGaugesLocked();
    return true;
  }

  // Adds `delta` to the resident bytes the gauges report.
  void AddResident(int64_t delta) {
    absl::MutexLock lock(&mu_);
    resident_bytes_ += delta;
    UpdateGaugesLocked();
  }

  // RESOURCE_EXHAUSTED naming `name`, `bytes` and the budget left.
  absl::Status BudgetExceeded(const std::string& name, int64_t bytes) const {
    return absl::ResourceExhaustedError(absl::StrCat(
        "memory budget exceeded: ", words_.kind, " \"", name, "\" needs ", bytes, " ",
        words_.needs.empty() ? "" : absl::StrCat(words_.needs, " "), "bytes, ",
        budget_->capacity() - budget_->used(), " of ", budget_->capacity(), " bytes free"));
  }
  absl::Status NotFound(std::string_view name) const {
    return absl::NotFoundError(absl::StrCat(words_.kind, " \"", std::string(name), "\" not found"));
  }

  const std::shared_ptr<Budget>& budget() const { return budget_; }
  int64_t resident_bytes() const {
    absl::ReaderMutexLock lock(&mu_);
    return resident_bytes_;
  }
  // Whether `name` is reserved (an upload or an unfinished removal).
  bool reserved(const std::string& name) const {
    absl::ReaderMutexLock lock(&mu_);
    return reserved_.count(name) != 0;
  }

 private:
  enum class Hold { kUpload, kRemoval };

  void Unreserve(const std::string& name) {
    absl::MutexLock lock(&mu_);
    reserved_.erase(name);
  }
  void PutBack(const std::string& name, std::shared_ptr<T> entry, int64_t resident_bytes) {
    absl::MutexLock lock(&mu_);
    reserved_.erase(name);
    entries_[name] = std::move(entry);
    resident_bytes_ += resident_bytes;
    UpdateGaugesLocked();
  }
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (gauges_) gauges_(static_cast<int64_t>(entries_.size()), resident_bytes_);
  }

  const std::shared_ptr<Budget> budget_;
  const RegistryWords words_;
  const GaugeFn gauges_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<T>, std::less<>> entries_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Hold, std::less<>> reserved_ ABSL_GUARDED_BY(mu_);
  int64_t resident_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace plume::core

// ThreadSanitizer annotations for Debian's abseil (tsan preset only).
//
// Debian's libabsl_synchronization.so is built without -fsanitize=thread, so
// TSan sees neither its locks nor the atomics inside them: every access
// guarded by an absl::Mutex would be reported as a race (a two-thread counter
// under absl::MutexLock is enough). Rather than suppress those reports, which
// would hide our real races too, this file interposes the library's entry
// points: each one calls the real function (dlsym RTLD_NEXT) and tells TSan
// what it did, with __tsan_acquire after a lock is taken and __tsan_release
// before it is given up. Functions that give the lock up and take it back
// inside the library (Await, CondVar::Wait, the LockWhen family) get both.
// Reader locks are annotated like writer locks, which can only hide a race
// between two readers (not a race). absl::Notification gets the same
// treatment: Notify releases, the waits acquire.
//
// The definitions below replace the library's for every caller that goes
// through the PLT (our code, and gRPC's calls into abseil).
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/base/config.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);

namespace {

// The library's own definition of `mangled`, found once; '@' stands for
// abseil's inline namespace as it is mangled (Debian's: "7debian3").
template <class Fn>
Fn Real(const char* mangled) {
  const std::string ns = ABSL_INTERNAL_TOKEN_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  std::string name = mangled;
  name.replace(name.find('@'), 1, std::to_string(ns.size()) + ns);
  void* f = dlsym(RTLD_NEXT, name.c_str());
  if (f == nullptr) {
    std::fprintf(stderr, "absl_sync_annotations: %s not found\n", name.c_str());
    std::abort();
  }
  return reinterpret_cast<Fn>(f);
}

// A Condition is evaluated with the mutex held, but inside the library (and
// possibly by the thread that unlocks, on a waiter's behalf), so TSan is told
// around each evaluation too.
struct Annotated {
  const absl::Condition* inner;
  void* mu;
};
bool EvalAnnotated(Annotated* a) {
  __tsan_acquire(a->mu);
  const bool r = a->inner->Eval();
  __tsan_release(a->mu);
  return r;
}

// Calls the real member function and annotates around it.
#define PLUME_REAL(ret, mangled, ...)                                     \
  static const auto real = Real<ret (*)(__VA_ARGS__)>(mangled)

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  PLUME_REAL(void, "_ZN4absl@5Mutex4LockEv", Mutex*);
  real(this);
  __tsan_acquire(this);
}

void Mutex::Unlock() {
  PLUME_REAL(void, "_ZN4absl@5Mutex6UnlockEv", Mutex*);
  __tsan_release(this);
  real(this);
}

bool Mutex::TryLock() {
  PLUME_REAL(bool, "_ZN4absl@5Mutex7TryLockEv", Mutex*);
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::ReaderLock() {
  PLUME_REAL(void, "_ZN4absl@5Mutex10ReaderLockEv", Mutex*);
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderUnlock() {
  PLUME_REAL(void, "_ZN4absl@5Mutex12ReaderUnlockEv", Mutex*);
  __tsan_release(this);
  real(this);
}

bool Mutex::ReaderTryLock() {
  PLUME_REAL(bool, "_ZN4absl@5Mutex13ReaderTryLockEv", Mutex*);
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::LockWhen(const Condition& cond) {
  PLUME_REAL(void, "_ZN4absl@5Mutex8LockWhenERKNS0_9ConditionE", Mutex*, const Condition&);
  Annotated a{&cond, this};
  real(this, absl::Condition(EvalAnnotated, &a));
  __tsan_acquire(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  PLUME_REAL(void, "_ZN4absl@5Mutex14ReaderLockWhenERKNS0_9ConditionE", Mutex*,
             const Condition&);
  Annotated a{&cond, this};
  real(this, absl::Condition(EvalAnnotated, &a));
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  PLUME_REAL(bool, "_ZN4absl@5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE",
             Mutex*, const Condition&, absl::Duration);
  Annotated a{&cond, this};
  const bool r = real(this, absl::Condition(EvalAnnotated, &a), timeout);
  __tsan_acquire(this);
  return r;
}

void Mutex::Await(const Condition& cond) {
  PLUME_REAL(void, "_ZN4absl@5Mutex5AwaitERKNS0_9ConditionE", Mutex*, const Condition&);
  Annotated a{&cond, this};
  __tsan_release(this);
  real(this, absl::Condition(EvalAnnotated, &a));
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  PLUME_REAL(bool, "_ZN4absl@5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE",
             Mutex*, const Condition&, absl::Duration);
  Annotated a{&cond, this};
  __tsan_release(this);
  const bool r = real(this, absl::Condition(EvalAnnotated, &a), timeout);
  __tsan_acquire(this);
  return r;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  PLUME_REAL(bool, "_ZN4absl@5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE",
             Mutex*, const Condition&, absl::Time);
  Annotated a{&cond, this};
  __tsan_release(this);
  const bool r = real(this, absl::Condition(EvalAnnotated, &a), deadline);
  __tsan_acquire(this);
  return r;
}

void CondVar::Wait(Mutex* mu) {
  PLUME_REAL(void, "_ZN4absl@7CondVar4WaitEPNS0_5MutexE", CondVar*, Mutex*);
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  PLUME_REAL(bool, "_ZN4absl@7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE",
             CondVar*, Mutex*, absl::Duration);
  __tsan_release(mu);
  const bool r = real(this, mu, timeout);
  __tsan_acquire(mu);
  return r;
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  PLUME_REAL(bool, "_ZN4absl@7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE", CondVar*,
             Mutex*, absl::Time);
  __tsan_release(mu);
  const bool r = real(this, mu, deadline);
  __tsan_acquire(mu);
  return r;
}

void Notification::Notify() {
  PLUME_REAL(void, "_ZN4absl@12Notification6NotifyEv", Notification*);
  __tsan_release(this);
  real(this);
}

void Notification::WaitForNotification() const {
  PLUME_REAL(void, "_ZNK4absl@12Notification19WaitForNotificationEv", const Notification*);
  real(this);
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(absl::Duration timeout) const {
  PLUME_REAL(bool, "_ZNK4absl@12Notification30WaitForNotificationWithTimeoutENS0_8DurationE",
             const Notification*, absl::Duration);
  const bool r = real(this, timeout);
  if (r) __tsan_acquire(const_cast<Notification*>(this));
  return r;
}

ABSL_NAMESPACE_END
}  // namespace absl

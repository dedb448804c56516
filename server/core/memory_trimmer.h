// Gives the heap's free pages back to the operating system every interval
// (glibc's malloc_trim). glibc returns freed memory only from the top of the
// heap on its own; after a burst of requests, memory freed below a block
// still in use (a matrix, a stream's state) stays resident, so RSS would
// show the burst's high-water mark rather than what is live. A trim walks
// the free lists under each arena's lock: on a 60 MiB heap with half of it
// freed in 2-3.5 KiB holes it took 0.8-1.4 ms here, a stall for whatever
// allocates from that arena meanwhile (--memory_trim_interval=0 turns it off).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

namespace plume::core {

// Turns off glibc's own giving back of freed memory: trimming the heap's top
// on every large free, and mapping (then unmapping) every block above a
// moving threshold. With it on, the buffers of each message of a streamed
// upload went back to the OS when freed and page-faulted in again for the
// next (a GiB uploaded took 4-5 s of server CPU here, most of it page
// faults; 0.6-1 s without). Blocks under 32 MiB then come from the heap and
// are reused; the MemoryTrimmer gives free pages back on its interval
// instead. plume-server calls it before serving when it runs a trimmer.
// max_arenas > 0 also caps glibc's malloc arenas (M_ARENA_MAX): with freed
// blocks kept, each arena keeps its own high-water mark of a streamed
// upload's buffers, so fewer arenas keep less; 0 leaves glibc's default
// (up to 8 per core).
void KeepFreedHeapMemory(int max_arenas = 0);

class MemoryTrimmer {
 public:
  // `trim` runs on the trimmer's thread every `interval` (> 0); it defaults
  // to malloc_trim(0) (nothing where the C library is not glibc).
  explicit MemoryTrimmer(std::chrono::milliseconds interval,
                         std::function<void()> trim = nullptr);
  ~MemoryTrimmer();  // stops and joins the thread
  MemoryTrimmer(const MemoryTrimmer&) = delete;
  MemoryTrimmer& operator=(const MemoryTrimmer&) = delete;

  int64_t trims() const;  // how many have run

 private:
  void Run();

  const std::chrono::milliseconds interval_;
  const std::function<void()> trim_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  int64_t trims_ = 0;
  std::thread thread_;  // last: starts once the rest is set
};

}  // namespace plume::core

// plume-server as a real process (PLUME_SERVER_BIN), driven through the SDK:
//  - graceful drain on SIGTERM (health NOT_SERVING, new calls UNAVAILABLE,
//    in-flight calls finish, exit 0);
//  - kill -9 at random points during 50 uploads, restart, every listed
//    matrix complete and bit-identical to what was sent;
//  - kill -9 during K/V appends, restart, every acknowledged append there
//    and attention bit-identical to a replay;
//  - flipped and truncated store files: quarantined, the good ones served;
//  - /metrics basic auth, and the bearer token never in the logs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "plume/client/client.h"
#include "plume/reference/api.h"
#include "plume/reference/attention.h"
#include "plume/v1/plume.grpc.pb.h"
#include "server/core/durable_store.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/known_matrix.h"
#include "tests/common/metrics_http.h"
#include "tests/common/process.h"
#include "tests/common/server_process_test.h"
#include "tests/common/wait.h"

namespace plume {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::AsFloats;
using testing::Known;
using testing::SlurpFile;

int HttpGet(int port, const std::string& auth_header, std::string* body) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n" + auth_header + "\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  close(fd);
  *body = out;
  if (out.size() < 12) return -1;
  return std::atoi(out.substr(9, 3).c_str());
}

// Streams grpc.health.v1.Health/Watch and records each status it sends
// (1 SERVING, 2 NOT_SERVING).
class HealthWatcher {
 public:
  explicit HealthWatcher(std::shared_ptr<grpc::Channel> channel) {
    ctx_.set_deadline(std::chrono::system_clock::now() + 120s);
    grpc::GenericStub stub(std::move(channel));
    call_ = stub.PrepareCall(&ctx_, "/grpc.health.v1.Health/Watch", &cq_);
    thread_ = std::thread([this] { Run(); });
  }
  ~HealthWatcher() {
    ctx_.TryCancel();
    thread_.join();
  }
  std::vector<int> statuses() {
    std::lock_guard<std::mutex> l(mu_);
    return statuses_;
  }

 private:
  bool Step(void* tag) {
    void* got;
    bool ok;
    return cq_.Next(&got, &ok) && ok && got == tag;
  }
  void Run() {
    int t = 0;
    call_->StartCall(&t);
    grpc::Slice empty("", 0);
    grpc::ByteBuffer req(&empty, 1);
    if (Step(&t)) {
      call_->Write(req, &t);
      if (Step(&t)) {
        call_->WritesDone(&t);
        if (Step(&t)) {
          for (;;) {
            grpc::ByteBuffer resp;
            call_->Read(&resp, &t);
            if (!Step(&t)) break;
            std::vector<grpc::Slice> slices;
            (void)resp.Dump(&slices);
            std::string bytes;
            for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
            std::lock_guard<std::mutex> l(mu_);
            statuses_.push_back(bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0);
          }
        }
      }
    }
    grpc::Status st;
    call_->Finish(&st, &t);
    void* got;
    bool ok;
    while (cq_.Next(&got, &ok)) {
      if (got == &t) break;
    }
    cq_.Shutdown();
    while (cq_.Next(&got, &ok)) {
    }
  }

  grpc::CompletionQueue cq_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<int> statuses_;
};

class ProcessTest : public testing::ServerProcessTest {
 protected:
  std::string StoreDir() const { return File("store"); }

  // Starts plume-server with the extra flags (and the store in StoreDir()
  // unless they name one).
  void Start(std::vector<std::string> flags = {}) {
    bool has_store = false;
    for (const auto& f : flags) has_store = has_store || f.rfind("--store_dir", 0) == 0;
    if (!has_store) flags.insert(flags.begin(), "--store_dir=" + StoreDir());
    ASSERT_NO_FATAL_FAILURE(StartServer(flags));
  }
  // SIGTERM, then the exit code (SIGKILL after `timeout`).
  int Stop(std::chrono::milliseconds timeout = 30s) {
    kill(pid_, SIGTERM);
    const int code = testing::WaitFor(pid_, timeout);
    pid_ = -1;
    return code;
  }
  void Kill9() {
    kill(pid_, SIGKILL);
    testing::WaitFor(pid_, 10s);
    pid_ = -1;
  }

  std::unique_ptr<Client> Connect(const std::string& token = "") {
    ClientOptions o;
    o.target = "127.0.0.1:" + std::to_string(port_);
    o.upload_chunk_bytes = 4096;
    o.max_attempts = 1;
    o.default_timeout = 60s;
    o.bearer_token = token;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok());
    return std::move(*c);
  }

  absl::StatusOr<v1::MatrixInfo> Upload(Client& c, const Known& k) {
    return c.UploadMatrix({.name = k.name, .scale_mode = k.wire_mode()},
                          TensorRef::F32(k.w.data(), {k.rows, k.cols}));
  }

  // The server holds exactly `k`: shape, and GEMV results bit-identical to the
  // CPU reference on k's codes.
  void ExpectServes(Client& c, const Known& k, uint32_t seed) {
    auto info = c.GetMatrix(k.name);
    ASSERT_TRUE(info.ok()) << k.name << ": " << info.status();
    EXPECT_EQ(info->rows(), k.rows);
    EXPECT_EQ(info->cols(), k.cols);
    std::vector<float> x = testing::RandomNormal(k.cols, seed);
    auto y = c.Gemv(k.name, TensorRef::F32(x.data(), {k.cols}));
    ASSERT_TRUE(y.ok()) << k.name << ": " << y.status();
    EXPECT_EQ(AsFloats(*y), k.Gemv(x)) << k.name << " differs from what was uploaded";
  }

  int QuarantinedFiles() const {
    int n = 0;
    if (fs::exists(fs::path(StoreDir()) / "quarantine")) {
      for (const auto& e : fs::directory_iterator(fs::path(StoreDir()) / "quarantine")) {
        (void)e;
        ++n;
      }
    }
    return n;
  }

};

TEST_F(ProcessTest, SigtermDrainsInFlightCallsRefusesNewOnesAndExitsZero) {
  // --max_batch=1: each call its own batch, so results are bit-identical to
  // `expected` and four batches queue on the one worker.
  ASSERT_NO_FATAL_FAILURE(Start({"--store_dir=", "--worker_threads=1", "--drain_timeout=60s",
                                 "--max_batch=1"}));
  auto client = Connect();
  const Known k("w", 4096, 1024, ScaleMode::kRow, 31);
  {
    ClientOptions o = client->options();
    o.upload_chunk_bytes = 1 << 20;
    ASSERT_TRUE(Upload(**Client::Connect(o), k).ok());
  }

  // Size a batch so that one GEMV takes >= 150 ms on this build (ASan is
  // slow) while the inputs stay small enough to arrive at once.
  int64_t batch = 4;
  double seconds = 0;
  std::vector<float> x;
  for (;; batch *= 2) {
    x = testing::RandomNormal(batch * k.cols, 5);
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(client->Gemv("w", TensorRef::F32(x.data(), {batch, k.cols})).ok());
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (seconds >= 0.15 || batch >= 1024) break;
  }
  auto expected = client->Gemv("w", TensorRef::F32(x.data(), {batch, k.cols}));
  ASSERT_TRUE(expected.ok());

  HealthWatcher watcher(client->channel());
  // A stream admitted before SIGTERM and held open by its client: the drain
  // cannot end before it does, so the checks below run while the server
  // drains however fast the GEMVs finish on a loaded machine.
  auto stub = v1::MatrixService::NewStub(client->channel());
  grpc::ClientContext held_ctx;
  auto held = stub->GemvStream(&held_ctx);
  v1::GemvRequest item;
  item.set_matrix("w");
  item.mutable_input()->set_dtype(v1::DTYPE_F32);
  item.mutable_input()->add_shape(k.cols);
  item.mutable_input()->set_data(x.data(), static_cast<size_t>(k.cols) * sizeof(float));
  v1::GemvResponse item_resp;
  ASSERT_TRUE(held->Write(item) && held->Read(&item_resp));
  ASSERT_EQ(item_resp.status().code(), 0) << item_resp.status().message();
  const std::string item_expected = item_resp.output().data();
  // Four calls queue on the single worker: about 4 x `seconds` of work.
  // Requests in the batcher are queued (plume_queue_depth) or launched
  // (plume_queue_duration_seconds counts each launch once).
  const std::set<std::string> kQueue = {"plume_queue_depth", "plume_queue_duration_seconds_count"};
  auto queue0 = testing::ScrapeMetrics(metrics_port_, kQueue);
  ASSERT_TRUE(queue0.ok()) << queue0.status();
  ASSERT_EQ((*queue0)["plume_queue_depth"], 0);
  std::vector<std::future<absl::StatusOr<HostTensor>>> in_flight;
  for (int i = 0; i < 4; ++i) {
    in_flight.push_back(std::async(std::launch::async, [&] {
      return client->Gemv("w", TensorRef::F32(x.data(), {batch, k.cols}));
    }));
  }
  // All four have arrived (the first runs, three wait for the worker).
  double arrived = 0;
  ASSERT_TRUE(testing::WaitUntil(
      "the 4 GEMVs to reach the batcher",
      [&] {
        auto q = testing::ScrapeMetrics(metrics_port_, kQueue);
        if (!q.ok()) return false;
        arrived = (*q)["plume_queue_depth"] + (*q)["plume_queue_duration_seconds_count"] -
                  (*queue0)["plume_queue_duration_seconds_count"];
        return arrived >= 4;
      },
      testing::kWaitTimeout, 10ms))
      << arrived << " of 4 arrived";
  ASSERT_EQ(arrived, 4);
  const auto t_term = std::chrono::steady_clock::now();
  kill(pid_, SIGTERM);
  // The drain has begun once the Watch stream sees NOT_SERVING (the server
  // then starts refusing calls), and lasts while `held` is open.
  ASSERT_TRUE(testing::WaitUntil("health to go NOT_SERVING", [&] {
    const auto st = watcher.statuses();
    return !st.empty() && st.back() == 2;
  }));

  // New calls, on the open channel and on a new one, are refused; probes
  // see NOT_SERVING. (Health goes NOT_SERVING just before the gate closes:
  // a call in between is served, so the first refusal is waited for.)
  absl::Status refused;
  EXPECT_TRUE(testing::WaitUntil("a new call to be refused", [&] {
    refused = client->ListMatrices().status();
    EXPECT_TRUE(refused.ok() || refused.code() == absl::StatusCode::kUnavailable) << refused;
    return refused.code() == absl::StatusCode::kUnavailable;
  })) << refused;
  EXPECT_EQ(Connect()->ListMatrices().status().code(), absl::StatusCode::kUnavailable);
  const auto during = Connect()->CheckHealth();
  ASSERT_TRUE(during.ok()) << during.status();
  EXPECT_EQ(*during, HealthStatus::kNotServing);

  for (auto& f : in_flight) {
    auto y = f.get();
    ASSERT_TRUE(y.ok()) << "an in-flight call did not finish: " << y.status();
    EXPECT_EQ(y->data, expected->data);
  }
  // The held stream still answers during the drain, and ends it when it
  // half-closes.
  item.set_request_id(2);
  ASSERT_TRUE(held->Write(item) && held->Read(&item_resp));
  EXPECT_EQ(item_resp.status().code(), 0) << item_resp.status().message();
  EXPECT_EQ(item_resp.output().data(), item_expected);
  ASSERT_TRUE(held->WritesDone());
  const grpc::Status held_end = held->Finish();
  EXPECT_TRUE(held_end.ok()) << held_end.error_message();
  const int code = testing::WaitFor(pid_, 60s);
  pid_ = -1;
  EXPECT_EQ(code, 0);
  const double drain_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_term).count();
  EXPECT_LT(drain_s, 30.0);
  const auto statuses = watcher.statuses();
  ASSERT_FALSE(statuses.empty());
  EXPECT_EQ(statuses.front(), 1);  // SERVING
  EXPECT_EQ(statuses.back(), 2);   // NOT_SERVING once SIGTERM arrived
  std::cout << "drain: 4 in-flight GEMVs of " << seconds << " s each finished; exit " << code
            << " after " << drain_s << " s\n";
}

// kill -9 at random points during 50 uploads (10 per server life), restart,
// and check every listed matrix against what was sent.
TEST_F(ProcessTest, KillNineDuringUploadsLosesNothingAcknowledged) {
  std::mt19937 rng(2024);
  std::vector<Known> all;
  std::set<std::string> acked;  // acknowledged, or found whole after a restart
  int kills = 0, unacked_listed = 0, cut_off = 0;
  // After a restart: nothing acknowledged is missing, everything listed is
  // whole; re-upload what the kill cut off.
  auto verify_and_complete = [&](Client& client) {
    auto list = client.ListMatrices();
    ASSERT_TRUE(list.ok());
    std::set<std::string> listed;
    for (const auto& m : *list) listed.insert(m.name());
    for (const auto& name : acked) EXPECT_TRUE(listed.count(name)) << "acknowledged " << name << " lost";
    for (const auto& k : all) {
      if (listed.count(k.name)) {
        ASSERT_NO_FATAL_FAILURE(ExpectServes(client, k, 7));
        if (acked.insert(k.name).second) ++unacked_listed;  // written, reply lost: still whole
      } else {
        ++cut_off;
        ASSERT_TRUE(Upload(client, k).ok());
        acked.insert(k.name);
      }
    }
  };
  for (int life = 0; life < 5; ++life) {
    ASSERT_NO_FATAL_FAILURE(Start());
    auto client = Connect();
    ASSERT_NO_FATAL_FAILURE(verify_and_complete(*client));
    std::vector<size_t> batch;
    for (int i = 0; i < 10; ++i) {
      const int n = static_cast<int>(all.size());
      all.emplace_back("u" + std::to_string(n), 40 + static_cast<int64_t>(rng() % 200),
                       30 + static_cast<int64_t>(rng() % 500), static_cast<ScaleMode>(1 + rng() % 4),
                       1000 + n);
      batch.push_back(all.size() - 1);
    }
    std::mutex mu;
    std::set<std::string> acked_now;
    std::thread uploader([&] {
      for (size_t i : batch) {
        if (!Upload(*client, all[i]).ok()) break;  // the server is gone
        std::lock_guard<std::mutex> l(mu);
        acked_now.insert(all[i].name);
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + rng() % 60));
    Kill9();
    ++kills;
    uploader.join();
    acked.insert(acked_now.begin(), acked_now.end());
  }
  ASSERT_NO_FATAL_FAILURE(Start());
  auto client = Connect();
  ASSERT_NO_FATAL_FAILURE(verify_and_complete(*client));
  auto list = client->ListMatrices();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 50u);
  EXPECT_EQ(acked.size(), 50u);
  EXPECT_EQ(QuarantinedFiles(), 0);  // atomic writes never leave a torn file
  EXPECT_EQ(Stop(), 0);
  std::cout << "fault: " << kills << " kill -9 during 50 uploads; " << unacked_listed
            << " unacknowledged uploads survived whole, " << cut_off
            << " were cut off and absent; 0 acknowledged lost, 0 partial or corrupt served\n";
}

// kill -9 at random points while K/V appends stream in (4 server lives),
// restart, and check the cache holds every acknowledged append, whole: its
// seq is the acknowledged one (or one more append, written but not yet
// acknowledged when the kill came), and attention on it is bit-identical to
// a local replay of exactly those appends.
TEST_F(ProcessTest, KillNineDuringKvAppendsLosesNothingAcknowledged) {
  constexpr int64_t kHeads = 2, kDim = 64;
  std::mt19937 rng(77);
  struct Step {
    int64_t seq_after;
    std::vector<float> k, v;
  };
  std::vector<Step> steps;  // steps[0] is the upload
  auto add_step = [&](int64_t tokens) {
    const int64_t seq = steps.empty() ? tokens : steps.back().seq_after + tokens;
    const uint32_t seed = 3000 + static_cast<uint32_t>(steps.size());
    steps.push_back({seq, testing::RandomNormal(kHeads * tokens * kDim, seed),
                     testing::RandomNormal(kHeads * tokens * kDim, seed + 100000, 2.0f)});
    return &steps.back();
  };
  const std::vector<float> q = testing::RandomNormal(4 * 2 * kDim, 5);
  // The cache holds exactly steps[0..] up to `seq`: attention matches a replay.
  auto expect_holds = [&](Client& client, int64_t seq) {
    ref::HostKvCache mirror({kHeads, kDim, KvScaleMode::kTokenBlock}, Fp8Format::kE4M3);
    int64_t at = 0;
    for (const Step& s : steps) {
      if (s.seq_after > seq) break;
      ASSERT_TRUE(mirror.Append(s.k.data(), s.v.data(), s.seq_after - at));
      at = s.seq_after;
    }
    ASSERT_EQ(at, seq) << "seq " << seq << " is not the end of an append";
    std::vector<float> want(q.size());
    ref::Attention({mirror.view(), {q.data(), DType::kF32, 1, 4, 2, 0.125f, false, want.data(),
                                    DType::kF32}});
    auto got = client.Attention("kv", TensorRef::F32(q.data(), {1, 4, 2, kDim}),
                                {.softmax_scale = 0.125f});
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(AsFloats(*got), want) << "the cache differs from its acknowledged appends at seq " << seq;
  };
  int64_t acked = 0;
  int kills = 0, appends = 0, unacked_kept = 0, unacked_lost = 0;
  for (int life = 0; life <= 4; ++life) {
    ASSERT_NO_FATAL_FAILURE(Start());
    auto client = Connect();
    if (life == 0) {
      const Step* s = add_step(20);
      ASSERT_TRUE(client->UploadKV({.name = "kv"}, TensorRef::F32(s->k.data(), {kHeads, 20, kDim}),
                                   TensorRef::F32(s->v.data(), {kHeads, 20, kDim}))
                      .ok());
      acked = 20;
    } else {
      auto info = client->GetKV("kv");
      ASSERT_TRUE(info.ok()) << info.status();
      ASSERT_GE(info->seq(), acked) << "acknowledged appends lost";
      ASSERT_LE(info->seq(), steps.back().seq_after);
      if (info->seq() > acked) ++unacked_kept; else if (steps.back().seq_after > acked) ++unacked_lost;
      ASSERT_NO_FATAL_FAILURE(expect_holds(*client, info->seq()));
      while (steps.back().seq_after > info->seq()) steps.pop_back();  // sent, never acknowledged
      acked = info->seq();
    }
    if (life == 4) break;
    std::atomic<int64_t> acked_now{acked};
    std::atomic<int> n{0};
    std::thread appender([&] {
      for (int i = 0; i < 400; ++i) {
        const int64_t tokens = 1 + static_cast<int64_t>(rng() % 40);
        const Step* s = add_step(tokens);
        auto info = client->AppendKV("kv", TensorRef::F32(s->k.data(), {kHeads, tokens, kDim}),
                                     TensorRef::F32(s->v.data(), {kHeads, tokens, kDim}));
        if (!info.ok()) break;  // the server is gone
        acked_now = info->seq();
        ++n;
      }
    });
    // A few appends acknowledged first (however slow a loaded machine is),
    // then the kill, a little later each life.
    for (const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
         n < 6 && std::chrono::steady_clock::now() < end;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(life * 10));
    Kill9();
    ++kills;
    appender.join();
    acked = acked_now;
    appends += n;
  }
  EXPECT_EQ(Stop(), 0);
  EXPECT_GT(appends, 20);  // the kills came during appends, not before them
  std::cout << "kv fault: " << kills << " kill -9 during " << appends
            << " acknowledged K/V appends; 0 acknowledged tokens lost; " << unacked_kept
            << " unacknowledged appends found whole, " << unacked_lost
            << " cut off; attention bit-identical to a replay after every restart; "
            << QuarantinedFiles() << " torn tails kept in quarantine/\n";
}

TEST_F(ProcessTest, CorruptStoreFilesAreQuarantinedAndGoodOnesServed) {
  ASSERT_NO_FATAL_FAILURE(Start());
  std::vector<Known> ms;
  {
    auto client = Connect();
    for (int i = 0; i < 8; ++i) {
      ms.emplace_back("m" + std::to_string(i), 30 + 7 * i, 100 + 31 * i,
                      static_cast<ScaleMode>(1 + i % 4), 500 + i);
      ASSERT_TRUE(Upload(*client, ms.back()).ok());
    }
  }
  EXPECT_EQ(Stop(), 0);
  auto path = [&](int i) { return fs::path(StoreDir()) / ("m" + std::to_string(i) + ".pmx"); };
  auto rewrite = [&](int i, const std::function<void(std::string*)>& f) {
    std::string b = SlurpFile(path(i).string());
    f(&b);
    std::ofstream(path(i), std::ios::binary | std::ios::trunc) << b;
  };
  rewrite(1, [](std::string* b) { (*b)[20] ^= 0x01; });              // header byte
  rewrite(3, [](std::string* b) { (*b)[b->size() / 2] ^= 0x80; });  // payload byte
  rewrite(5, [](std::string* b) { b->resize(b->size() / 2); });     // torn write
  rewrite(6, [](std::string* b) { b->clear(); });                   // empty file
  std::ofstream(fs::path(StoreDir()) / "junk.pmx") << "not a store file";

  ASSERT_NO_FATAL_FAILURE(Start());
  auto client = Connect();
  auto list = client->ListMatrices();
  ASSERT_TRUE(list.ok());
  std::set<std::string> listed;
  for (const auto& m : *list) listed.insert(m.name());
  EXPECT_EQ(listed, (std::set<std::string>{"m0", "m2", "m4", "m7"}));
  for (int i : {0, 2, 4, 7}) ASSERT_NO_FATAL_FAILURE(ExpectServes(*client, ms[i], 9));
  for (int i : {1, 3, 5, 6}) {
    EXPECT_EQ(client->GetMatrix(ms[i].name).status().code(), absl::StatusCode::kNotFound);
    EXPECT_FALSE(fs::exists(path(i)));
  }
  EXPECT_EQ(QuarantinedFiles(), 5);
  const std::string log = SlurpFile(File("server.err")) + SlurpFile(File("server.out"));
  EXPECT_NE(log.find("quarantined 5"), std::string::npos) << log;
  // A quarantined name is free again.
  ASSERT_TRUE(Upload(*client, ms[3]).ok());
  ASSERT_NO_FATAL_FAILURE(ExpectServes(*client, ms[3], 10));
  EXPECT_EQ(Stop(), 0);
  std::cout << "corruption: 5 bad files quarantined, 4 good ones served bit-identically\n";
}

// K/V store files flipped, truncated, or ending in a torn append: the bad
// ones quarantined, the torn one cut back to its last whole append, the good
// ones served with the same attention results as before the restart.
TEST_F(ProcessTest, CorruptKvFilesAreQuarantinedAndGoodOnesServed) {
  constexpr int64_t kHeads = 2, kDim = 32;
  const std::vector<float> q = testing::RandomNormal(kHeads * kDim, 8);
  auto attend = [&](Client& c, const std::string& name) {
    auto out = c.Attention(name, TensorRef::F32(q.data(), {1, kHeads, 1, kDim}));
    EXPECT_TRUE(out.ok()) << name << ": " << out.status();
    return out.ok() ? AsFloats(*out) : std::vector<float>{};
  };
  std::map<std::string, std::vector<float>> before;
  ASSERT_NO_FATAL_FAILURE(Start());
  {
    auto client = Connect();
    for (int i = 0; i < 4; ++i) {
      const std::string name = "c" + std::to_string(i);
      std::vector<float> k = testing::RandomNormal(kHeads * 50 * kDim, 600 + i);
      std::vector<float> v = testing::RandomNormal(kHeads * 50 * kDim, 700 + i);
      ASSERT_TRUE(client->UploadKV({.name = name}, TensorRef::F32(k.data(), {kHeads, 50, kDim}),
                                   TensorRef::F32(v.data(), {kHeads, 50, kDim}))
                      .ok());
      before[name] = attend(*client, name);
    }
    std::vector<float> k = testing::RandomNormal(kHeads * 20 * kDim, 800);
    ASSERT_TRUE(client->AppendKV("c3", TensorRef::F32(k.data(), {kHeads, 20, kDim}),
                                 TensorRef::F32(k.data(), {kHeads, 20, kDim}))
                    .ok());
  }
  EXPECT_EQ(Stop(), 0);
  auto path = [&](int i) { return fs::path(StoreDir()) / ("c" + std::to_string(i) + ".pkv"); };
  auto rewrite = [&](int i, const std::function<void(std::string*)>& f) {
    std::string b = SlurpFile(path(i).string());
    f(&b);
    std::ofstream(path(i), std::ios::binary | std::ios::trunc) << b;
  };
  rewrite(1, [](std::string* b) { (*b)[40] ^= 0x04; });         // header byte (head_dim)
  rewrite(2, [](std::string* b) { b->resize(b->size() / 2); });  // its upload, cut in half
  rewrite(3, [](std::string* b) { b->resize(b->size() - 100); });  // its append, cut short

  ASSERT_NO_FATAL_FAILURE(Start());
  auto client = Connect();
  auto list = client->ListKV();
  ASSERT_TRUE(list.ok());
  std::map<std::string, int64_t> listed;
  for (const auto& c : *list) listed[c.name()] = c.seq();
  EXPECT_EQ(listed, (std::map<std::string, int64_t>{{"c0", 50}, {"c3", 50}}));
  EXPECT_EQ(attend(*client, "c0"), before["c0"]);
  EXPECT_EQ(attend(*client, "c3"), before["c3"]);
  for (int i : {1, 2}) EXPECT_FALSE(fs::exists(path(i)));
  EXPECT_EQ(QuarantinedFiles(), 3);  // c1, c2 and the whole of c3 as it was
  const std::string log = SlurpFile(File("server.err")) + SlurpFile(File("server.out"));
  EXPECT_NE(log.find("loaded 2 K/V caches, quarantined 3"), std::string::npos) << log;
  EXPECT_EQ(Stop(), 0);
  std::cout << "kv corruption: 2 bad K/V files quarantined, 1 torn append cut off (whole file "
               "kept in quarantine/), 2 caches served with attention bit-identical to before\n";
}

TEST_F(ProcessTest, MetricsBasicAuthAndTheTokenNeverLogged) {
  const std::string token = "tok-5a1d0c3e-never-log-me";
  std::ofstream(File("token")) << token << "\n";
  std::ofstream(File("metrics_pw")) << "m3tr1cs-pw\n";
  ASSERT_NO_FATAL_FAILURE(Start({"--auth_token_file=" + File("token"), "--metrics_user=prom",
                                 "--metrics_password_file=" + File("metrics_pw"),
                                 "--log_level=trace"}));
  auto good = Connect(token);
  auto bad = Connect("tok-5a1d0c3e-guess");
  const Known k("w", 16, 64, ScaleMode::kRow, 3);
  EXPECT_EQ(Upload(*bad, k).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Connect()->ListMatrices().status().code(), absl::StatusCode::kUnauthenticated);
  ASSERT_TRUE(Upload(*good, k).ok());
  ASSERT_NO_FATAL_FAILURE(ExpectServes(*good, k, 4));
  auto health = Connect()->CheckHealth();
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(*health, HealthStatus::kServing);

  std::string body;
  EXPECT_EQ(HttpGet(metrics_port_, "", &body), 401);
  EXPECT_EQ(HttpGet(metrics_port_,
                    "Authorization: Basic " + absl::Base64Escape("prom:wrong") + "\r\n", &body),
            401);
  EXPECT_EQ(HttpGet(metrics_port_,
                    "Authorization: Basic " + absl::Base64Escape("prom:m3tr1cs-pw") + "\r\n",
                    &body),
            200);
  EXPECT_NE(body.find("code=\"UNAUTHENTICATED\""), std::string::npos);
  EXPECT_EQ(Stop(), 0);
  const std::string log = SlurpFile(File("server.err")) + SlurpFile(File("server.out"));
  EXPECT_NE(log.find("bearer token required"), std::string::npos) << log;
  EXPECT_EQ(log.find("5a1d0c3e"), std::string::npos) << "a token reached the log:\n" << log;
  EXPECT_EQ(log.find("m3tr1cs"), std::string::npos) << "the metrics password reached the log";
}

}  // namespace
}  // namespace plume

namespace plume {
namespace {

// --cpu_shards: a multi-device server without GPUs. A matrix too
// big for one device's budget is row-sharded, one asked for is replicated;
// both serve results bit-identical to the CPU reference, keep their
// placement across a restart, and what fits nowhere is RESOURCE_EXHAUSTED.
TEST_F(ProcessTest, CpuShardsShardWhatFitsNoDeviceAndKeepPlacementsAcrossRestarts) {
  // 300 x 256 ROW is 78000 bytes; two devices of 72000 take it as shards of
  // 256 rows (66560 bytes) and 44 rows, leaving room for two 4000-byte copies.
  const std::vector<std::string> flags = {"--cpu_shards=2", "--device_budget_bytes=72000"};
  ASSERT_NO_FATAL_FAILURE(Start(flags));
  Known big("big", 300, 256, ScaleMode::kRow, 700);
  Known twin("twin", 40, 96, ScaleMode::kBlock128, 701);
  {
    auto client = Connect();
    auto info = Upload(*client, big);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->placement(), v1::PLACEMENT_SHARDED);
    EXPECT_EQ(info->backend(), "cpu:0,1");
    EXPECT_EQ(std::vector<int>(info->devices().begin(), info->devices().end()), (std::vector<int>{0, 1}));
    auto r = client->UploadMatrix({.name = twin.name, .scale_mode = twin.wire_mode(),
                                   .placement = v1::PLACEMENT_REPLICATED},
                                  TensorRef::F32(twin.w.data(), {twin.rows, twin.cols}));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->placement(), v1::PLACEMENT_REPLICATED);
    for (uint32_t seed : {1u, 2u, 3u}) {
      ASSERT_NO_FATAL_FAILURE(ExpectServes(*client, big, seed));
      ASSERT_NO_FATAL_FAILURE(ExpectServes(*client, twin, seed));
    }
    Known huge("huge", 600, 256, ScaleMode::kRow, 702);
    EXPECT_EQ(Upload(*client, huge).status().code(), absl::StatusCode::kResourceExhausted);
    // Each device's placement budget on /metrics (refreshed every second):
    // device 1 holds the 44-row shard (44 * 256 + 44 * 4 bytes) and a copy
    // of twin (4000 bytes).
    std::string body;
    bool seen = false;
    for (int i = 0; i < 50 && !seen; ++i) {
      ASSERT_EQ(HttpGet(metrics_port_, "", &body), 200);
      seen = body.find("plume_device_budget_used_bytes{device=\"1\"} 15440") != std::string::npos;
      if (!seen) std::this_thread::sleep_for(100ms);
    }
    EXPECT_TRUE(seen) << body;
    EXPECT_NE(body.find("plume_device_budget_bytes{device=\"0\"} 72000"), std::string::npos);
  }
  EXPECT_EQ(Stop(), 0);
  ASSERT_NO_FATAL_FAILURE(Start(flags));
  auto client = Connect();
  auto list = client->ListMatrices();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  for (const auto& m : *list) {
    EXPECT_EQ(m.placement(), m.name() == "big" ? v1::PLACEMENT_SHARDED : v1::PLACEMENT_REPLICATED)
        << m.name();
  }
  ASSERT_NO_FATAL_FAILURE(ExpectServes(*client, big, 4));
  ASSERT_NO_FATAL_FAILURE(ExpectServes(*client, twin, 4));
  EXPECT_EQ(Stop(), 0);
}

}  // namespace
}  // namespace plume

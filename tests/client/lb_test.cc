// Client-side load balancing, as used against a Kubernetes headless Service
// (deploy/k8s/): ClientOptions::load_balancing_policy = "round_robin" spreads
// one Client's calls over every address its target resolves to.
//
// A DNS name with several A records cannot be made on a CI machine without
// editing /etc/hosts, so the spreading is shown with the "ipv4:" resolver,
// which hands the LB policy an address list exactly as the DNS resolver does
// for a headless Service; the dns:/// scheme itself is exercised against one
// replica.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "plume/client/client.h"

namespace plume {
namespace {

using namespace std::chrono_literals;

class CountingService final : public v1::MatrixService::Service {
 public:
  std::atomic<int> calls{0};
  grpc::Status ListMatrices(grpc::ServerContext*, const v1::ListMatricesRequest*,
                            v1::ListMatricesResponse*) override {
    ++calls;
    return grpc::Status::OK;
  }
};

struct Replica {
  CountingService service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

class LoadBalancingTest : public ::testing::Test {
 protected:
  void StartReplicas(int n) {
    for (int i = 0; i < n; ++i) {
      auto r = std::make_unique<Replica>();
      grpc::ServerBuilder b;
      b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &r->port);
      b.RegisterService(&r->service);
      r->server = b.BuildAndStart();
      ASSERT_NE(r->server, nullptr);
      ASSERT_GT(r->port, 0);
      replicas_.push_back(std::move(r));
    }
  }
  void TearDown() override {
    for (auto& r : replicas_) r->server->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  // "ipv4:127.0.0.1:P1,127.0.0.1:P2,...": one target, every replica's address.
  std::string AddressListTarget() const {
    std::string t = "ipv4:";
    for (size_t i = 0; i < replicas_.size(); ++i) {
      t += (i ? ",127.0.0.1:" : "127.0.0.1:") + std::to_string(replicas_[i]->port);
    }
    return t;
  }

  std::unique_ptr<Client> Connect(const std::string& target, const std::string& policy) {
    ClientOptions o;
    o.target = target;
    o.load_balancing_policy = policy;
    o.default_timeout = 10s;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  std::vector<int> Counts() const {
    std::vector<int> v;
    for (const auto& r : replicas_) v.push_back(r->service.calls.load());
    return v;
  }
  void ResetCounts() {
    for (auto& r : replicas_) r->service.calls = 0;
  }

  std::vector<std::unique_ptr<Replica>> replicas_;
};

TEST_F(LoadBalancingTest, RoundRobinSpreadsCallsOverEveryAddress) {
  StartReplicas(3);
  auto c = Connect(AddressListTarget(), "round_robin");
  ASSERT_NE(c, nullptr);
  // round_robin picks among connected subchannels: call until every replica
  // has answered once (bounded), then count a fresh round of calls.
  const auto end = std::chrono::steady_clock::now() + 10s;
  auto all_reached = [&] {
    for (int n : Counts()) {
      if (n == 0) return false;
    }
    return true;
  };
  while (!all_reached() && std::chrono::steady_clock::now() < end) {
    ASSERT_TRUE(c->ListMatrices().ok());
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_TRUE(all_reached()) << "some replica never got a call";
  ResetCounts();
  constexpr int kCalls = 90;
  for (int i = 0; i < kCalls; ++i) ASSERT_TRUE(c->ListMatrices().ok());
  const std::vector<int> counts = Counts();
  EXPECT_EQ(counts[0] + counts[1] + counts[2], kCalls);
  // With every subchannel ready, round_robin takes them in turn: 30 each.
  for (int n : counts) EXPECT_EQ(n, kCalls / 3) << counts[0] << " " << counts[1] << " " << counts[2];
}

TEST_F(LoadBalancingTest, PickFirstSendsEveryCallToOneAddress) {
  StartReplicas(3);
  auto c = Connect(AddressListTarget(), "");  // gRPC's default: pick_first
  ASSERT_NE(c, nullptr);
  constexpr int kCalls = 30;
  for (int i = 0; i < kCalls; ++i) ASSERT_TRUE(c->ListMatrices().ok());
  const std::vector<int> counts = Counts();
  EXPECT_EQ(counts[0], kCalls) << "pick_first uses the first address that connects";
  EXPECT_EQ(counts[1] + counts[2], 0);
}

TEST_F(LoadBalancingTest, DnsTargetWithRoundRobin) {
  StartReplicas(1);
  auto c = Connect("dns:///localhost:" + std::to_string(replicas_[0]->port), "round_robin");
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < 5; ++i) {
    const auto list = c->ListMatrices();
    ASSERT_TRUE(list.ok()) << list.status();
  }
  EXPECT_EQ(Counts()[0], 5);
}

}  // namespace
}  // namespace plume

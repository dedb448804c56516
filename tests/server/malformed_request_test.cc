// Requests whose bytes do not parse as their protobuf message, sent raw to
// every method of a real server (in process): each unary method answers
// INVALID_ARGUMENT naming itself (gRPC's own handler would answer
// UNIMPLEMENTED with no message), each stream writes the results of the
// messages before the bad one and then ends with INVALID_ARGUMENT, and the
// server goes on serving.
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "plume/v1/diagnostics.grpc.pb.h"
#include "plume/v1/plume.grpc.pb.h"
#include "tests/common/test_server.h"

namespace plume {
namespace {

// Bytes no plume message parses: a field tag past the largest field number,
// and a length-delimited field 1 that claims more bytes than follow.
const std::vector<std::string>& BadPayloads() {
  static const std::vector<std::string> kBad = {std::string("\xff\xff\xff\xff\x0f\x12", 6),
                                                std::string("\x0a\x05" "ab", 4)};
  return kBad;
}

grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

std::string Serialized(const google::protobuf::Message& m) {
  std::string s;
  EXPECT_TRUE(m.SerializeToString(&s));
  return s;
}

std::string ToString(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(b.Dump(&slices).ok());
  std::string s;
  for (const auto& slice : slices) s.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return s;
}

class MalformedRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = testing::StartTestServer();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    channel_ = grpc::CreateChannel(server_.address(), grpc::InsecureChannelCredentials());
  }

  grpc::Status Unary(const std::string& method, const std::string& request, std::string* response) {
    grpc::GenericStub stub(channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    grpc::ByteBuffer in = Bytes(request), out;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    stub.UnaryCall(&ctx, method, grpc::StubOptions(), &in, &out, [&](grpc::Status s) {
      std::lock_guard<std::mutex> lock(mu);
      status = std::move(s);
      done = true;
      cv.notify_one();
    });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    if (response != nullptr && status.ok()) *response = ToString(out);
    return status;
  }

  // Writes `messages` on a bidirectional stream, half-closes and reads every
  // response; returns the final status.
  grpc::Status Stream(const std::string& method, const std::vector<std::string>& messages,
                      std::vector<std::string>* responses) {
    grpc::GenericStub stub(channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    grpc::CompletionQueue cq;
    auto call = stub.PrepareCall(&ctx, method, &cq);
    void* tag;
    bool ok;
    call->StartCall(reinterpret_cast<void*>(1));
    EXPECT_TRUE(cq.Next(&tag, &ok) && ok);
    for (const std::string& m : messages) {
      call->Write(Bytes(m), reinterpret_cast<void*>(2));
      if (!cq.Next(&tag, &ok) || !ok) break;
    }
    call->WritesDone(reinterpret_cast<void*>(3));
    cq.Next(&tag, &ok);
    for (;;) {
      grpc::ByteBuffer in;
      call->Read(&in, reinterpret_cast<void*>(4));
      if (!cq.Next(&tag, &ok) || !ok) break;
      responses->push_back(ToString(in));
    }
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(5));
    cq.Next(&tag, &ok);
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    return status;
  }

  testing::TestServer server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(MalformedRequestTest, EveryUnaryMethodAnswersInvalidArgumentNamingItself) {
  const std::vector<std::pair<std::string, std::string>> methods = {
      {"/plume.v1.MatrixService/GetMatrix", "GetMatrix"},
      {"/plume.v1.MatrixService/ListMatrices", "ListMatrices"},
      {"/plume.v1.MatrixService/DeleteMatrix", "DeleteMatrix"},
      {"/plume.v1.MatrixService/Gemv", "Gemv"},
      {"/plume.v1.AttentionService/AppendKV", "AppendKV"},
      {"/plume.v1.AttentionService/GetKV", "GetKV"},
      {"/plume.v1.AttentionService/ListKV", "ListKV"},
      {"/plume.v1.AttentionService/DeleteKV", "DeleteKV"},
      {"/plume.v1.AttentionService/Attention", "Attention"},
      {"/plume.v1.DiagnosticsService/Echo", "Echo"},
  };
  for (const auto& [path, name] : methods) {
    for (const std::string& bad : BadPayloads()) {
      const grpc::Status s = Unary(path, bad, nullptr);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << path << ": " << s.error_message();
      EXPECT_NE(s.error_message().find(name), std::string::npos) << s.error_message();
      EXPECT_NE(s.error_message().find("does not parse"), std::string::npos) << s.error_message();
      // ... and its message type, e.g. plume.v1.GemvRequest.
      EXPECT_NE(s.error_message().find("plume.v1." + name + "Request"), std::string::npos)
          << s.error_message();
    }
  }
}

TEST_F(MalformedRequestTest, RawUnaryMethodsStillServeWellFormedRequests) {
  // The same raw path with bytes that parse: Echo returns its payload and
  // request id, ListMatrices an empty list, GetMatrix NOT_FOUND.
  v1::EchoRequest echo;
  echo.set_request_id(77);
  echo.mutable_input()->set_data(std::string("\x01\x02\x03\x04", 4));
  std::string out;
  grpc::Status s = Unary("/plume.v1.DiagnosticsService/Echo", Serialized(echo), &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  v1::EchoResponse got;
  ASSERT_TRUE(got.ParseFromString(out));
  EXPECT_EQ(got.request_id(), 77u);
  EXPECT_EQ(got.output().data(), echo.input().data());

  s = Unary("/plume.v1.MatrixService/ListMatrices", Serialized(v1::ListMatricesRequest()), &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  v1::ListMatricesResponse list;
  EXPECT_TRUE(list.ParseFromString(out));
  EXPECT_EQ(list.matrices_size(), 0);

  v1::GetMatrixRequest get;
  get.set_name("absent");
  s = Unary("/plume.v1.MatrixService/GetMatrix", Serialized(get), nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
}

TEST_F(MalformedRequestTest, StreamsEndWithInvalidArgumentAfterTheGoodResults) {
  v1::EchoRequest echo;
  echo.set_request_id(5);
  echo.mutable_input()->set_data("abcd");
  for (const std::string& bad : BadPayloads()) {
    std::vector<std::string> responses;
    const grpc::Status s = Stream("/plume.v1.DiagnosticsService/EchoStream",
                                  {Serialized(echo), bad, Serialized(echo)}, &responses);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("EchoStream"), std::string::npos) << s.error_message();
    // The message before the bad one was answered; nothing after it was read.
    ASSERT_EQ(responses.size(), 1u);
    v1::EchoResponse r;
    ASSERT_TRUE(r.ParseFromString(responses[0]));
    EXPECT_EQ(r.request_id(), 5u);
    EXPECT_EQ(r.output().data(), "abcd");
  }
  for (const std::string& path :
       {"/plume.v1.MatrixService/GemvStream", "/plume.v1.AttentionService/AttentionStream"}) {
    std::vector<std::string> responses;
    const grpc::Status s = Stream(path, {BadPayloads()[0]}, &responses);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << path << ": " << s.error_message();
    EXPECT_TRUE(responses.empty());
  }
  // A stream that only half-closes still ends OK.
  std::vector<std::string> responses;
  EXPECT_TRUE(Stream("/plume.v1.DiagnosticsService/EchoStream", {Serialized(echo)}, &responses).ok());
  EXPECT_EQ(responses.size(), 1u);
}

TEST_F(MalformedRequestTest, UploadsThatDoNotParseStoreNothing) {
  for (const std::string& path :
       {"/plume.v1.MatrixService/UploadMatrix", "/plume.v1.AttentionService/UploadKV"}) {
    std::vector<std::string> responses;
    const grpc::Status s = Stream(path, {BadPayloads()[1]}, &responses);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << path << ": " << s.error_message();
  }
  std::string out;
  ASSERT_TRUE(Unary("/plume.v1.MatrixService/ListMatrices", Serialized(v1::ListMatricesRequest()), &out).ok());
  v1::ListMatricesResponse list;
  ASSERT_TRUE(list.ParseFromString(out));
  EXPECT_EQ(list.matrices_size(), 0);
}

}  // namespace
}  // namespace plume

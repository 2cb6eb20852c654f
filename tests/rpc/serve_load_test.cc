// A bounded load test of `dsv4 serve` on 127.0.0.1 (one rank, or under mpirun with DSV4_SERVE_NP
// and DSV4_SERVE_ARGS): 500 requests from 64 concurrent clients, over gRPC and the OpenAI HTTP
// API (streamed and not), with mixed prompt and output lengths, stop strings and stop token ids,
// and some ended early (the client cancels, Abort by id, a deadline that passes, an SSE client
// that hangs up). Every request must end exactly once as its client sees it, the server's
// counters must account for every request it received, no cache block may stay used, and the
// leader's memory must be flat: its resident size after the run within 32 MiB + 10% of what it
// was after a warm-up run of the same mix (the warm-up grows the caches and arenas to their
// working size; a leak of even 100 KB per request would add 50 MB).
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "rpc/client.h"
#include "tests/rpc/serve_harness.h"

namespace dsv4 {
namespace {

using Json = nlohmann::json;
using testing::ServeProcess;

constexpr int kRequests = 500, kClients = 64;

// What a request is, from its index alone.
enum class End { kNormal, kCancel, kAbort, kDeadline, kHangUp };
struct Plan {
  bool http;        // the OpenAI API (else gRPC)
  bool stream;      // HTTP: server-sent events
  End end;
  int prompt_len, max_tokens;
  bool stop_string, stop_token;
};

Plan PlanOf(int i) {
  Plan p;
  p.http = i % 4 == 1;
  p.stream = p.http && i % 8 == 1;
  p.end = i % 17 == 3 ? End::kCancel : i % 19 == 5 ? End::kAbort : i % 23 == 7 ? End::kDeadline : End::kNormal;
  if (p.http) p.end = p.stream && i % 3 == 0 ? End::kHangUp : End::kNormal;
  p.prompt_len = 1 + (i * 37) % 120;
  p.max_tokens = 1 + (i * 13) % 32;
  p.stop_string = i % 5 == 2;
  p.stop_token = i % 7 == 4;
  return p;
}

std::vector<int32_t> Prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(100 + (i * 7919 + salt * 104729) % 100000);
  return p;
}

// One request's end as its client saw it.
struct Outcome {
  int ends = 0;         // must be exactly 1
  absl::Status status;  // gRPC's status, or the HTTP code mapped to one
  int tokens = 0;
  std::string finish;   // "stop", "length", "abort" or ""
};

absl::StatusCode CodeOfHttp(int http) {
  switch (http) {
    case 200:
      return absl::StatusCode::kOk;
    case 429:
      return absl::StatusCode::kResourceExhausted;
    case 503:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

int64_t RssBytes(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

class Load {
 public:
  explicit Load(ServeProcess& server) : server_(server) {}

  // Runs requests [first, first + n) on kClients threads.
  std::vector<Outcome> Run(int first, int n) {
    std::vector<Outcome> out(n);
    std::atomic<int> next{0};
    std::vector<std::thread> threads;
    for (int c = 0; c < kClients; ++c)
      threads.emplace_back([&] {
        auto client = InferenceClient::Connect(server_.address(), {});
        httplib::Client http("127.0.0.1", server_.http_port());
        http.set_read_timeout(300, 0);
        for (int k = next.fetch_add(1); k < n; k = next.fetch_add(1)) {
          const int i = first + k;
          if (PlanOf(i).http) {
            OneHttp(http, i, out[k]);
          } else {
            OneGrpc(**client, i, out[k]);
          }
        }
      });
    for (auto& t : threads) t.join();
    return out;
  }

 private:
  void OneGrpc(InferenceClient& client, int i, Outcome& o) {
    const Plan p = PlanOf(i);
    v1::GenerateRequest r;
    const std::vector<int32_t> ids = Prompt(p.prompt_len, i);
    r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
    r.set_request_id(absl::StrCat("load-", i));
    v1::SamplingParams* s = r.mutable_sampling();
    s->set_max_tokens(p.max_tokens);
    s->set_seed(i);
    s->set_temperature(i % 3 == 0 ? 0.0 : 0.9);
    if (p.stop_string) s->add_stop("e");
    if (p.stop_token) s->add_stop_token_ids(100 + i % 1000);
    absl::Mutex mu;
    grpc::ClientContext* live = nullptr;
    bool acted = false;  // the early end was set off (once, at the first message)
    o.status = client.Generate(
        r,
        [&](const v1::GenerateResponse& m) {
          o.tokens += m.token_ids_size();
          if (m.finished()) o.finish = m.finish_reason() == v1::FINISH_REASON_STOP     ? "stop"
                                       : m.finish_reason() == v1::FINISH_REASON_LENGTH ? "length"
                                                                                       : "abort";
          absl::MutexLock l(&mu);
          if (acted || m.finished()) return;
          acted = true;
          if (p.end == End::kCancel && live != nullptr) live->TryCancel();
          if (p.end == End::kAbort) (void)client.Abort(r.request_id());
        },
        p.end == End::kDeadline ? absl::Milliseconds(300) : absl::Seconds(300),
        [&](grpc::ClientContext* c) {
          absl::MutexLock l(&mu);
          live = c;
        });
    ++o.ends;
  }

  void OneHttp(httplib::Client& http, int i, Outcome& o) {
    const Plan p = PlanOf(i);
    Json body = {{"prompt", Prompt(p.prompt_len, i)}, {"max_tokens", p.max_tokens}, {"seed", i},
                 {"temperature", i % 3 == 0 ? 0.0 : 0.9}};
    if (p.stop_string) body["stop"] = "e";
    if (p.stop_token) body["stop_token_ids"] = {100 + i % 1000};
    if (!p.stream) {
      auto res = http.Post("/v1/completions", body.dump(), "application/json");
      if (!res) {
        o.status = absl::UnavailableError(absl::StrCat("HTTP error ", static_cast<int>(res.error())));
      } else {
        o.status = absl::Status(CodeOfHttp(res->status), res->body);
        if (res->status == 200) {
          const Json j = Json::parse(res->body);
          o.tokens = j["usage"]["completion_tokens"];
          o.finish = j["choices"][0]["finish_reason"];
        }
      }
      ++o.ends;
      return;
    }
    body["stream"] = true;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    std::string events;
    bool hung_up = false;
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
      events.append(data, len);
      if (p.end == End::kHangUp && events.find("data: {") != std::string::npos) return !(hung_up = true);
      return true;
    };
    httplib::Response res;
    httplib::Error err;
    const bool ok = http.send(req, res, err);
    if (hung_up) {
      o.status = absl::CancelledError("the client hung up");
    } else if (!ok) {
      o.status = absl::UnavailableError(absl::StrCat("HTTP error ", static_cast<int>(err)));
    } else {
      o.status = absl::Status(CodeOfHttp(res.status), res.body);
      if (res.status == 200) {
        // The last chunk before [DONE] carries the finish reason; no usage chunk was asked for.
        const size_t done = events.rfind("data: [DONE]");
        const size_t last = events.rfind("data: {", done);
        if (done == std::string::npos || last == std::string::npos) {
          o.status = absl::InternalError("no [DONE] or no chunk: " + events);
        } else {
          const Json j = Json::parse(events.substr(last + 6, events.find("\n\n", last) - last - 6));
          o.finish = j["choices"][0]["finish_reason"].is_string() ? j["choices"][0]["finish_reason"] : "";
        }
      }
    }
    if (p.end == End::kHangUp && !hung_up && o.status.ok()) o.status = absl::OkStatus();  // it ended first
    ++o.ends;
  }

  ServeProcess& server_;
};

TEST(ServeLoad, FiveHundredRequestsEndOnceAndLeaveNothingBehind) {
  auto server = ServeProcess::Start({"--model", "builtin:v4-tiny", "--threads", "1", "--http-port", "0",
                                     "--max-model-len", "512", "--max-running", "32", "--max-queued", "256",
                                     "--max-batch-tokens", "192", "--prefill-chunk", "64", "--http-threads", "128"},
                                    testing::ServeRanks());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = InferenceClient::Connect((*server)->address(), {});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->WaitForServing(absl::Seconds(240)).ok()) << (*server)->Log();
  ASSERT_GT((*server)->http_port(), 0);
  Load load(**server);

  // Warm-up: the same mix, so caches and arenas reach their working size.
  const std::vector<Outcome> warm = load.Run(kRequests, 150);
  for (const Outcome& o : warm) ASSERT_EQ(o.ends, 1);
  auto before = (*client)->ServerInfo();
  ASSERT_TRUE(before.ok());
  const int64_t rss_before = RssBytes((*server)->leader_pid());
  ASSERT_GT(rss_before, 0);

  const std::vector<Outcome> out = load.Run(0, kRequests);
  std::map<std::string, int> by_kind;
  int ok = 0, early = 0, refused = 0;
  for (int i = 0; i < kRequests; ++i) {
    const Plan p = PlanOf(i);
    const Outcome& o = out[i];
    SCOPED_TRACE(absl::StrCat("request ", i, ": ", o.status.ToString()));
    ASSERT_EQ(o.ends, 1);
    const absl::StatusCode c = o.status.code();
    ++by_kind[absl::StrCat(p.http ? (p.stream ? "sse " : "http ") : "grpc ", absl::StatusCodeToString(c))];
    if (c == absl::StatusCode::kResourceExhausted) {  // admission control (the queue is full)
      ++refused;
      continue;
    }
    if (c == absl::StatusCode::kOk) {
      ++ok;
      if (o.finish == "abort") {  // aborted in time: an Abort, or a cancel that lost the race
        ++early;
        EXPECT_NE(p.end, End::kNormal);
        continue;
      }
      EXPECT_TRUE(o.finish == "stop" || o.finish == "length") << o.finish;
      if (!p.stream) {
        if (o.finish == "length") {
          EXPECT_EQ(o.tokens, p.max_tokens);
        }
        if (o.finish == "stop") {
          EXPECT_LE(o.tokens, p.max_tokens);  // a stop string, token id or EOS
        }
      }
      continue;
    }
    ++early;
    switch (p.end) {
      case End::kCancel:
        EXPECT_EQ(c, absl::StatusCode::kCancelled);
        break;
      case End::kAbort:
        EXPECT_EQ(c, absl::StatusCode::kAborted);
        break;
      case End::kDeadline:
        EXPECT_EQ(c, absl::StatusCode::kDeadlineExceeded);
        break;
      case End::kHangUp:
        EXPECT_EQ(c, absl::StatusCode::kCancelled);
        break;
      case End::kNormal:
        ADD_FAILURE() << "a request without an early end failed";
    }
  }
  for (const auto& [kind, n] : by_kind) std::printf("  %-32s %d\n", kind.c_str(), n);
  EXPECT_GT(ok, kRequests / 2);

  // Quiescence, bounded: nothing running, queued or holding cache on any rank.
  v1::ServerInfo info;
  bool idle = false;
  for (int i = 0; i < 600 && !idle; ++i) {
    auto s = (*client)->ServerInfo();
    ASSERT_TRUE(s.ok());
    info = *s;
    idle = info.active_requests() == 0 && info.queued_requests() == 0 && info.cache().blocks_used() == 0 &&
           info.cache().bytes_used() == 0 && info.cache().sequences() == 0;
    if (!idle) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(idle) << info.DebugString();
  // The ranks report through heartbeats (every 500 ms): a few beats for the last frees to arrive.
  auto control = ControlClient::Connect((*server)->control(), {});
  ASSERT_TRUE(control.ok());
  absl::StatusOr<v1::ClusterStatus> cluster;
  for (int i = 0; i < 30; ++i) {
    cluster = (*control)->Status();
    ASSERT_TRUE(cluster.ok());
    bool held = false;
    for (const auto& r : cluster->ranks()) held = held || r.cache_bytes() != 0;
    if (!held) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  for (const auto& r : cluster->ranks()) EXPECT_EQ(r.cache_bytes(), 0) << "rank " << r.rank();
  // Every request the server received ended exactly once, as one of these.
  const int64_t received = info.requests_received() - before->requests_received();
  const int64_t completed = info.requests_completed() - before->requests_completed();
  const int64_t aborted = info.requests_aborted() - before->requests_aborted();
  const int64_t failed = info.requests_failed() - before->requests_failed();
  const int64_t rejected = info.requests_rejected() - before->requests_rejected();
  EXPECT_EQ(received, completed + aborted + failed + rejected);
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(rejected, refused);
  // What the clients saw: each OK was a completion; an early end may have raced the request's
  // own end (then it completed) or come before the request reached the server (then it was never
  // received).
  EXPECT_GE(completed, ok);
  EXPECT_LE(completed, ok + early);
  EXPECT_GE(received, ok + refused);
  EXPECT_LE(received, kRequests);
  const int64_t rss_after = RssBytes((*server)->leader_pid());
  std::printf("  leader RSS %.1f MiB after the warm-up, %.1f MiB after %d requests\n", rss_before / 1048576.0,
              rss_after / 1048576.0, kRequests);
  EXPECT_LE(rss_after, rss_before + (32 << 20) + rss_before / 10);
  (*server)->SignalLeader(SIGTERM);
  EXPECT_EQ((*server)->Wait(absl::Seconds(120)), 0) << (*server)->Log();
}

}  // namespace
}  // namespace dsv4

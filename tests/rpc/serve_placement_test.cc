// Expert rebalancing in a running job (`dsv4 serve` under mpirun -np 4, EP 4 with 4 redundant
// slots), on a model whose router is skewed: expert 0 is among the top-2 of every token in every
// layer (the score layers' selection bias favours it, the hash layers' tables name it), so it takes
// half of all (token, expert) pairs.
//
//  1. The same six greedy requests run three times: before any rebalance (the reference), with
//     `Rebalance` called while all six stream (every rank switches at one step between two of
//     their steps), and after it. The token streams must equal the reference, and their logprobs
//     stay within 1e-3 (another placement sums the experts' rows in another order: the golden
//     README's float32 spread is 3e-5; a misrouted or lost row moves logits by far more).
//  2. The routed pairs each rank served (the control plane's per-rank expert loads, between
//     snapshots): max / mean above 1.3 before (half the pairs land on the two ranks holding expert
//     0), below 1.2 after (EPLB copies expert 0 onto every rank).
//  3. Rebalance's own figures agree, `GetPlacement` returns a placement file with a map per layer,
//     a second Rebalance with no new load is FAILED_PRECONDITION.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "parallel/placement.h"
#include "rpc/client.h"
#include "runtime/safetensors.h"
#include "tests/rpc/serve_harness.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

using testing::ServeProcess;

constexpr int kRanks = 4, kRequests = 6, kMaxTokens = 40;

// TinyConfig with top-2 routing; expert 0 in every token's top-2 (see above).
std::string WriteSkewedModel() {
  nlohmann::json config = testing::TinyConfig();
  config["num_experts_per_tok"] = 2;
  const std::string dir = testing::TempDir() + "/skewed";
  const absl::Status st = testing::WriteRandomModelDir(dir, config, 5, [](TensorToWrite& t) {
    if (t.name.ends_with(".ffn.gate.bias")) {  // F32 [E]: selection only, the weights stay unbiased
      float big = 100.f;
      std::memcpy(t.bytes.data(), &big, sizeof(float));
    } else if (t.name.ends_with(".ffn.gate.tid2eid")) {  // I64 [vocab, 2]
      int64_t* ids = reinterpret_cast<int64_t*>(t.bytes.data());
      const int64_t vocab = t.shape[0];
      for (int64_t v = 0; v < vocab; ++v) {
        const int64_t other = ids[2 * v] != 0 ? ids[2 * v] : ids[2 * v + 1];
        ids[2 * v] = 0, ids[2 * v + 1] = other != 0 ? other : 1 + v % 15;
      }
    }
  });
  EXPECT_TRUE(st.ok()) << st;
  return dir;
}

struct Stream {
  std::vector<int32_t> tokens;
  std::vector<double> logprobs;
  absl::Status status;
};

v1::GenerateRequest Request(int i) {
  v1::GenerateRequest r;
  for (int k = 0; k < 5 + 3 * i; ++k) r.mutable_tokens()->add_ids(3 + (37 * i + 11 * k) % 500);
  r.mutable_sampling()->set_max_tokens(kMaxTokens);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_sampling()->set_ignore_eos(true);
  r.mutable_sampling()->set_logprobs(1);
  return r;
}

// Runs the six requests at once. `during`, when set, runs on this thread once every stream has
// produced at least 3 tokens; `progress_at_call` gets each stream's token count at that moment and
// `progress_after` when `during` returned.
std::vector<Stream> RunAll(InferenceClient& client, const std::function<void()>& during = nullptr,
                           std::vector<int>* progress_at_call = nullptr, std::vector<int>* progress_after = nullptr) {
  std::vector<Stream> out(kRequests);
  absl::Mutex mu;
  std::vector<int> seen(kRequests, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i)
    threads.emplace_back([&, i] {
      out[i].status = client.Generate(
          Request(i),
          [&](const v1::GenerateResponse& m) {
            absl::MutexLock l(&mu);
            out[i].tokens.insert(out[i].tokens.end(), m.token_ids().begin(), m.token_ids().end());
            for (const auto& lp : m.logprobs()) out[i].logprobs.push_back(lp.logprob());
            seen[i] = static_cast<int>(out[i].tokens.size());
          },
          absl::Seconds(600));
    });
  if (during) {
    {
      absl::MutexLock l(&mu);
      auto started = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
        return std::all_of(seen.begin(), seen.end(), [](int n) { return n >= 3; });
      };
      mu.AwaitWithTimeout(absl::Condition(&started), absl::Seconds(300));
      if (progress_at_call) *progress_at_call = seen;
    }
    during();
    absl::MutexLock l(&mu);
    if (progress_after) *progress_after = seen;
  }
  for (auto& t : threads) t.join();
  return out;
}

// Routed pairs each rank served since `before` (per-rank expert loads of the control plane).
std::vector<double> RankPairs(const v1::ClusterStatus& before, const v1::ClusterStatus& after) {
  std::vector<double> pairs(after.ranks_size(), 0.0);
  for (int r = 0; r < after.ranks_size(); ++r)
    for (int e = 0; e < after.ranks(r).expert_load_size(); ++e)
      pairs[r] += static_cast<double>(after.ranks(r).expert_load(e) -
                                      (e < before.ranks(r).expert_load_size() ? before.ranks(r).expert_load(e) : 0));
  return pairs;
}

// Heartbeats carry the workers' loads every 500 ms: wait for the last ones before reading.
v1::ClusterStatus Settled(ControlClient& control) {
  absl::SleepFor(absl::Milliseconds(1500));
  auto s = control.Status();
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : v1::ClusterStatus();
}

void ExpectSameStreams(const std::vector<Stream>& got, const std::vector<Stream>& want, const char* what) {
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(got[i].status.ok()) << what << " request " << i << ": " << got[i].status;
    EXPECT_EQ(got[i].tokens, want[i].tokens) << what << " request " << i;
    ASSERT_EQ(got[i].logprobs.size(), want[i].logprobs.size()) << what;
    for (size_t k = 0; k < got[i].logprobs.size(); ++k)
      EXPECT_NEAR(got[i].logprobs[k], want[i].logprobs[k], 1e-3) << what << " request " << i << " token " << k;
  }
}

TEST(ServePlacement, RebalanceWhileStreaming) {
  const std::string model = WriteSkewedModel();
  auto server = ServeProcess::Start({"--model", model, "--threads", "1", "--max-model-len", "256", "--cache-mb", "64",
                                     "--comm-timeout-s", "60", "--redundant-experts", "4", "--max-running", "8"},
                                    kRanks);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = InferenceClient::Connect((*server)->address(), {});
  ASSERT_TRUE(client.ok());
  const absl::Status serving = (*client)->WaitForServing(absl::Seconds(400));
  ASSERT_TRUE(serving.ok()) << serving << "\n" << (*server)->Log();
  auto control = ControlClient::Connect((*server)->control(), {});
  ASSERT_TRUE(control.ok());

  // 1. The reference, under the start placement.
  const v1::ClusterStatus s0 = Settled(**control);
  const std::vector<Stream> reference = RunAll(**client);
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(reference[i].status.ok()) << reference[i].status << "\n" << (*server)->Log();
    ASSERT_EQ(reference[i].tokens.size(), static_cast<size_t>(kMaxTokens));
  }
  const v1::ClusterStatus s1 = Settled(**control);
  const double before = Imbalance(RankPairs(s0, s1));
  EXPECT_GT(before, 1.3) << "the router is not skewed enough for the test to mean anything";

  // 2. The same requests, rebalanced while they stream.
  absl::StatusOr<v1::RebalanceResponse> rebalanced;
  std::vector<int> at_call, after_call;
  const std::vector<Stream> switched =
      RunAll(**client, [&] { rebalanced = (*control)->Rebalance(false, 120); }, &at_call, &after_call);
  ASSERT_TRUE(rebalanced.ok()) << rebalanced.status() << "\n" << (*server)->Log();
  EXPECT_GT(rebalanced->step(), 0);
  EXPECT_GT(rebalanced->routed(), 0);
  EXPECT_GT(rebalanced->imbalance_before(), 1.3);
  EXPECT_LT(rebalanced->imbalance_after(), 1.2);
  // Every stream had started before the call and had not finished when the switching step had run.
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_GE(at_call[i], 3) << "request " << i;
    EXPECT_LT(after_call[i], kMaxTokens) << "request " << i << " had finished before the switch";
  }
  ExpectSameStreams(switched, reference, "during the switch");

  // 3. After: balanced, and still the same streams.
  const v1::ClusterStatus s2 = Settled(**control);
  const std::vector<Stream> after = RunAll(**client);
  const v1::ClusterStatus s3 = Settled(**control);
  ExpectSameStreams(after, reference, "after the switch");
  const std::vector<double> pairs = RankPairs(s2, s3);
  const double balanced = Imbalance(pairs);
  EXPECT_LT(balanced, 1.2) << "per-rank pairs " << ::testing::PrintToString(pairs);
  RecordProperty("imbalance_before", std::to_string(before));
  RecordProperty("imbalance_after", std::to_string(balanced));
  std::printf("routed pairs per rank, max/mean: %.3f before, %.3f after the rebalance\n", before, balanced);

  auto placement = (*control)->GetPlacement();
  ASSERT_TRUE(placement.ok()) << placement.status();
  EXPECT_EQ(placement->switches(), 1);
  auto parsed = ModelPlacement::FromJson(placement->placement(), "GetPlacement");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->num_maps(), 5);
  EXPECT_EQ(parsed->redundant(), 4);
  for (int64_t l = 0; l < 5; ++l) EXPECT_EQ(parsed->layer(l).replicas(0).size(), static_cast<size_t>(kRanks)) << l;
  auto dry = (*control)->Rebalance(true, 10);  // the load since the switch exists: a dry run plans it
  EXPECT_TRUE(dry.ok()) << dry.status();
  EXPECT_EQ(dry->step(), -1);
  ASSERT_TRUE((*control)->Rebalance(false, 60).ok());  // applies it
  EXPECT_EQ((*control)->Rebalance(false, 60).status().code(), absl::StatusCode::kFailedPrecondition);  // no new load

  ASSERT_TRUE((*control)->Shutdown().ok());
  EXPECT_EQ((*server)->Wait(absl::Seconds(120)), 0) << (*server)->Log();
}

}  // namespace
}  // namespace dsv4

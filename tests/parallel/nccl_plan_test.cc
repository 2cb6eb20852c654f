// The host-side plans behind NCCL expert parallelism (parallel/nccl_plan.h), on CPU (label `unit`):
// P ranks are simulated in one process and every transfer of a plan is replayed with memcpy.
//  - Grouped all-to-all-v / all-gather-v: every send meets exactly one receive of the same size,
//    zero-byte messages are dropped, and the replay equals the MPI semantics.
//  - MoE: dispatch, expert grouping, per-token sums and the ordered combine, end to end over a
//    placement with a replicated expert, against a direct computation; the data encodes its
//    provenance (expert e maps x to (e + 1) x + e), so a misrouted row shows as a wrong value.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "parallel/nccl_plan.h"
#include "parallel/placement.h"

namespace dsv4 {
namespace {

struct RankBuffers {
  std::vector<int64_t> send_bytes, send_displs, recv_bytes, recv_displs;
  std::vector<uint8_t> send, recv;
};

// Replays every rank's grouped ops: each (send r->p) must pair with one (recv p<-r) of equal size.
void Replay(std::vector<RankBuffers>& ranks, const std::vector<GroupedExchange>& plans) {
  const int P = static_cast<int>(ranks.size());
  std::map<std::pair<int, int>, std::vector<P2pOp>> sends, recvs;  // (from, to)
  for (int r = 0; r < P; ++r) {
    std::set<std::pair<int, int>> seen;
    for (const P2pOp& o : plans[r].ops) {
      ASSERT_NE(o.peer, r) << "self traffic must be a local copy";
      ASSERT_GT(o.bytes, 0) << "zero-byte messages are dropped";
      ASSERT_TRUE(seen.insert({o.kind, o.peer}).second) << "one op per peer and direction";
      (o.kind == P2pOp::kSend ? sends[{r, o.peer}] : recvs[{o.peer, r}]).push_back(o);
    }
    if (plans[r].self_bytes > 0)
      std::memcpy(&ranks[r].recv[plans[r].self_recv_offset], &ranks[r].send[plans[r].self_send_offset],
                  plans[r].self_bytes);
  }
  ASSERT_EQ(sends.size(), recvs.size());
  for (const auto& [key, s] : sends) {
    ASSERT_TRUE(recvs.count(key)) << key.first << "->" << key.second << " has no receive";
    const P2pOp &so = s[0], &ro = recvs[key][0];
    ASSERT_EQ(so.bytes, ro.bytes);
    std::memcpy(&ranks[key.second].recv[ro.offset], &ranks[key.first].send[so.offset], so.bytes);
  }
}

TEST(NcclPlan, AllToAllVMatchesMpiSemantics) {
  std::mt19937 rng(1);
  for (int P : {1, 2, 3, 5}) {
    std::uniform_int_distribution<int64_t> count(0, 3);
    std::vector<std::vector<int64_t>> bytes(P, std::vector<int64_t>(P));  // bytes[from][to]
    for (auto& row : bytes)
      for (auto& b : row) b = count(rng) * 4;
    std::vector<RankBuffers> ranks(P);
    std::vector<GroupedExchange> plans;
    for (int r = 0; r < P; ++r) {
      RankBuffers& b = ranks[r];
      int64_t so = 0, ro = 0;
      for (int p = 0; p < P; ++p) {
        b.send_bytes.push_back(bytes[r][p]), b.send_displs.push_back(so), so += bytes[r][p];
        b.recv_bytes.push_back(bytes[p][r]), b.recv_displs.push_back(ro), ro += bytes[p][r];
      }
      b.send.resize(so), b.recv.assign(ro, 0xee);
      for (int64_t i = 0; i < so; ++i) b.send[i] = static_cast<uint8_t>(r * 50 + i);  // provenance
      auto g = PlanAllToAllV(r, P, b.send_bytes.data(), b.send_displs.data(), b.recv_bytes.data(),
                             b.recv_displs.data());
      ASSERT_TRUE(g.ok()) << g.status();
      plans.push_back(*g);
    }
    Replay(ranks, plans);
    for (int r = 0; r < P; ++r)
      for (int p = 0; p < P; ++p)
        for (int64_t i = 0; i < bytes[p][r]; ++i)
          ASSERT_EQ(ranks[r].recv[ranks[r].recv_displs[p] + i], ranks[p].send[ranks[p].send_displs[r] + i])
              << "P " << P << " rank " << r << " from " << p;
  }
  const int64_t sb[2] = {4, 0}, sd[2] = {0, 4}, rb[2] = {8, 0}, rd[2] = {0, 8};
  EXPECT_FALSE(PlanAllToAllV(0, 2, sb, sd, rb, rd).ok());  // self sizes disagree
  const int64_t neg[2] = {-4, 0};
  EXPECT_FALSE(PlanAllToAllV(1, 2, neg, sd, neg, rd).ok());
}

TEST(NcclPlan, AllGatherV) {
  const int P = 4;
  const std::vector<int64_t> counts = {3, 0, 1, 2};
  std::vector<RankBuffers> ranks(P);
  std::vector<GroupedExchange> plans;
  for (int r = 0; r < P; ++r) {
    ranks[r].send.resize(counts[r] * 4);
    for (size_t i = 0; i < ranks[r].send.size(); ++i) ranks[r].send[i] = static_cast<uint8_t>(r * 16 + i);
    ranks[r].recv.assign(6 * 4, 0);
    plans.push_back(PlanAllGatherV(r, P, counts.data(), 4));
  }
  Replay(ranks, plans);
  for (int r = 0; r < P; ++r) {
    int64_t off = 0;
    for (int p = 0; p < P; ++p)
      for (int64_t i = 0; i < counts[p] * 4; ++i, ++off) ASSERT_EQ(ranks[r].recv[off], ranks[p].send[i]) << r << " " << p;
  }
}

TEST(NcclPlan, MicroBatches) {
  EXPECT_EQ(MicroBatches(0, 64).size(), 1u);
  EXPECT_EQ(MicroBatches(63, 64).size(), 1u);
  const auto two = MicroBatches(65, 64);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].begin, 0);
  EXPECT_EQ(two[0].end, 33);
  EXPECT_EQ(two[1].begin, 33);
  EXPECT_EQ(two[1].end, 65);
  EXPECT_EQ(MicroBatches(1, 0).size(), 1u);  // a single token never splits
}

float ExpertFn(int64_t e, float x) { return static_cast<float>(e + 1) * x + static_cast<float>(e); }

// Simulates an exchange that runs the received rows grouped by expert (PlanExpertGroups) step by
// step on host buffers.
void RunMoe(int P, int64_t E, int K, bool replica, bool with_gaps) {
  const int64_t D = 5;
  ExpertPlacement placement = ExpertPlacement::Contiguous(E, P);
  if (replica && P > 1) placement.AddReplica(0, P - 1);
  std::mt19937 rng(P * 100 + K);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(E - 1));
  std::uniform_real_distribution<float> wd(0.1f, 1.f);
  std::vector<int64_t> n(P);
  std::vector<std::vector<float>> x(P), w(P), out(P);
  std::vector<std::vector<int32_t>> experts(P);
  std::vector<MoeSendPlan> send(P);
  std::map<std::pair<int, int64_t>, std::vector<float>> returned_rows;  // (sender, packed row) -> summed row
  for (int r = 0; r < P; ++r) {
    n[r] = 3 + 4 * r;
    x[r].resize(n[r] * D), w[r].resize(n[r] * K), experts[r].resize(n[r] * K), out[r].assign(n[r] * D, 0.f);
    for (int64_t t = 0; t < n[r]; ++t) {
      for (int64_t d = 0; d < D; ++d) x[r][t * D + d] = static_cast<float>(r * 100 + t) + 0.01f * d;
      for (int j = 0; j < K; ++j) {
        int32_t e;
        do e = pick(rng);
        while (std::find(&experts[r][t * K], &experts[r][t * K + j], e) != &experts[r][t * K + j]);
        experts[r][t * K + j] = (with_gaps && j == K - 1 && t % 3 == 0) ? -1 : e;
        w[r][t * K + j] = wd(rng);
      }
    }
    auto p = PlanMoeSend(placement, experts[r].data(), w[r].data(), n[r], K, /*sender=*/r);
    ASSERT_TRUE(p.ok()) << p.status();
    send[r] = *p;
    ASSERT_EQ(send[r].send_offset[P], send[r].total());
    for (int64_t t = 0; t < n[r]; ++t)  // each token at most once per peer
      ASSERT_LE(send[r].combine_offset[t + 1] - send[r].combine_offset[t], P);
  }
  // Receive side: rank q gets, from each r in rank order, r's rows for q (the exchange's layout).
  for (int q = 0; q < P; ++q) {
    std::vector<float> recv_x;
    std::vector<int32_t> recv_meta;
    std::vector<std::pair<int, int64_t>> origin;  // (rank, packed row)
    for (int r = 0; r < P; ++r)
      for (int64_t i = send[r].send_offset[q]; i < send[r].send_offset[q + 1]; ++i) {
        const int64_t t = send[r].token[i];
        recv_x.insert(recv_x.end(), &x[r][t * D], &x[r][t * D] + D);
        recv_meta.insert(recv_meta.end(), &send[r].meta[i * 2 * K], &send[r].meta[(i + 1) * 2 * K]);
        origin.push_back({r, i});
      }
    const int64_t received = static_cast<int64_t>(origin.size());
    auto g = PlanExpertGroups(placement, q, recv_meta.data(), received, K);
    ASSERT_TRUE(g.ok()) << g.status();
    // Grouped GEMM stand-in: row i of expert group s computes weight * ExpertFn(expert, x).
    std::vector<float> y(g->rows() * D);
    for (size_t s = 0; s < g->local_experts.size(); ++s) {
      ASSERT_TRUE(placement.Holds(q, g->local_experts[s]));
      for (int32_t i = g->offsets[s]; i < g->offsets[s + 1]; ++i)
        for (int64_t d = 0; d < D; ++d)
          y[i * D + d] = g->row_weight[i] * ExpertFn(g->local_experts[s], recv_x[g->row_token[i] * D + d]);
    }
    // Sum per received token, return to the sender's packed row.
    for (int64_t rr = 0; rr < received; ++rr) {
      auto [r, i] = origin[rr];
      std::vector<float> sum(D, 0.f);
      for (int32_t e = g->sum_offset[rr]; e < g->sum_offset[rr + 1]; ++e)
        for (int64_t d = 0; d < D; ++d) sum[d] += y[g->sum_rows[e] * D + d];
      returned_rows[{r, i}] = sum;  // lands in the sender's packed row i
    }
  }
  for (int r = 0; r < P; ++r) {
    for (int64_t t = 0; t < n[r]; ++t) {
      int prev_peer = -1;
      for (int32_t c = send[r].combine_offset[t]; c < send[r].combine_offset[t + 1]; ++c) {
        const int32_t row = send[r].combine_rows[c];
        int peer = 0;
        while (send[r].send_offset[peer + 1] <= row) ++peer;
        ASSERT_GT(peer, prev_peer) << "combine must add in EP-rank order";
        prev_peer = peer;
        const auto& ret = returned_rows.at({r, row});
        for (int64_t d = 0; d < D; ++d) out[r][t * D + d] += ret[d];
      }
      for (int64_t d = 0; d < D; ++d) {
        double want = 0;
        for (int j = 0; j < K; ++j) {
          const int32_t e = experts[r][t * K + j];
          if (e >= 0) want += w[r][t * K + j] * ExpertFn(e, x[r][t * D + d]);
        }
        ASSERT_NEAR(out[r][t * D + d], want, 1e-3 * (1 + std::fabs(want)))
            << "P " << P << " rank " << r << " token " << t << " dim " << d;
      }
    }
  }
}

TEST(NcclPlan, MoeEndToEnd) {
  for (int64_t E : {12, 13})  // 13: the experts do not divide over 2, 3 or 4 ranks
    for (int P : {1, 2, 3, 4})
      for (int K : {1, 2, 6})
        for (bool replica : {false, true}) RunMoe(P, E, K, replica, /*with_gaps=*/K > 1);
}

TEST(NcclPlan, MoeRejectsBadExperts) {
  const ExpertPlacement placement = ExpertPlacement::Contiguous(4, 2);
  const int32_t experts[2] = {1, 4};
  const float w[2] = {1, 1};
  EXPECT_FALSE(PlanMoeSend(placement, experts, w, 1, 2, 0).ok());
  const int32_t held_elsewhere[2] = {3, 0};  // expert 3 lives on rank 1 (routing words: id, weight)
  EXPECT_FALSE(PlanExpertGroups(placement, 0, held_elsewhere, 1, 1).ok());
}

// The replica rule (moe_plan.h): sender s sends the i-th pair of expert e to replica (i + s) mod R.
// So every sender splits a hot expert evenly, and senders with one pair each start on different
// replicas; the packing sends a token once per rank however many of its experts live there.
TEST(NcclPlan, ReplicasSplitTheirExpertEvenly) {
  ExpertPlacement placement = ExpertPlacement::Contiguous(8, 4);  // ranks hold {0,1} {2,3} {4,5} {6,7}
  placement.AddReplica(0, 2);
  placement.AddReplica(0, 3);  // expert 0 on ranks 0, 2, 3
  ASSERT_EQ(placement.replicas(0), (std::vector<int>{0, 2, 3}));
  // 7 tokens, top-2: expert 0 and expert 1 + t % 7 (1..7).
  const int K = 2;
  std::vector<int32_t> e;
  std::vector<float> w;
  for (int t = 0; t < 7; ++t) e.push_back(0), e.push_back(1 + t % 7), w.push_back(0.75f), w.push_back(0.25f);
  for (int sender = 0; sender < 4; ++sender) {
    auto p = PlanMoeSend(placement, e.data(), w.data(), 7, K, sender);
    ASSERT_TRUE(p.ok()) << p.status();
    // Pairs of expert 0 per rank: 7 over 3 replicas, starting at replica `sender % 3`: 3, 2, 2 in turn.
    std::vector<int64_t> zero(4, 0);
    for (int64_t row = 0; row < p->total(); ++row) {
      int dest = 0;
      while (p->send_offset[dest + 1] <= row) ++dest;
      for (int j = 0; j < K; ++j)
        if (p->expert(row, j) == 0) {
          ++zero[dest];
          EXPECT_EQ(p->weight(row, j), 0.75f);
        }
    }
    std::vector<int64_t> want(4, 0);
    for (int i = 0; i < 7; ++i) ++want[placement.replicas(0)[(i + sender) % 3]];
    EXPECT_EQ(zero, want) << "sender " << sender;
    int64_t pairs = 0;
    for (int64_t v : p->pairs_per_rank) pairs += v;
    EXPECT_EQ(pairs, 14);
    // Token 0 routes to experts 0 and 1, both on rank 0 when sender 0 picks replica 0 for it: one row.
    if (sender == 0) {
      EXPECT_EQ(p->combine_offset[1] - p->combine_offset[0], 1);
    }
  }
}

// The plan against a plain restatement of moe_plan.h's rules, field by field. One plan object is
// planned into again and again, with shapes that grow and shrink, so memory it keeps from an
// earlier, larger plan cannot leak into a later one.
TEST(NcclPlan, SendPlanEqualsPlainLoopsAndReusesItsMemory) {
  std::mt19937 rng(7);
  MoeSendPlan reused;
  for (int trial = 0; trial < 60; ++trial) {
    const int P = std::vector<int>{1, 2, 3, 4, 6}[trial % 5];
    const int K = std::vector<int>{1, 2, 6, 16}[(trial / 5) % 4];
    const int64_t E = 16 + trial % 7, n = std::uniform_int_distribution<int64_t>(0, 40)(rng);
    ExpertPlacement placement = ExpertPlacement::Contiguous(E, P);
    if (trial % 3 == 0 && P > 1) placement.AddReplica(trial % E, P - 1), placement.AddReplica(trial % E, 0);
    const int sender = trial % P;
    std::vector<int32_t> experts(n * K);
    std::vector<float> weights(n * K);
    for (int64_t t = 0; t < n; ++t) {
      std::vector<int32_t> ids(E);
      for (int64_t e = 0; e < E; ++e) ids[e] = static_cast<int32_t>(e);
      std::shuffle(ids.begin(), ids.end(), rng);
      for (int j = 0; j < K; ++j) {
        experts[t * K + j] = (trial % 2 == 1 && (t + j) % 5 == 0) ? -1 : ids[j];
        weights[t * K + j] = 0.5f + 0.01f * static_cast<float>(t * K + j);
      }
    }
    // The rules, directly: replicas in token then slot order; one row per (token, rank), rows
    // rank-major and in token order within a rank; each token's rows ascending.
    std::vector<int64_t> seen(E, 0), pairs(P, 0);
    std::vector<int32_t> dest(n * K, -1);
    for (int64_t t = 0; t < n; ++t)
      for (int j = 0; j < K; ++j)
        if (const int32_t e = experts[t * K + j]; e >= 0) {
          const std::vector<int>& reps = placement.replicas(e);
          dest[t * K + j] = reps[(seen[e]++ + sender) % reps.size()];
          ++pairs[dest[t * K + j]];
        }
    std::vector<int64_t> token, count(P, 0);
    std::vector<int32_t> meta;
    std::vector<std::vector<int32_t>> rows_of(n);
    for (int r = 0; r < P; ++r)
      for (int64_t t = 0; t < n; ++t) {
        if (std::find(&dest[t * K], &dest[t * K] + K, r) == &dest[t * K] + K) continue;
        rows_of[t].push_back(static_cast<int32_t>(token.size()));
        token.push_back(t), ++count[r];
        for (int j = 0; j < K; ++j) meta.push_back(dest[t * K + j] == r ? experts[t * K + j] : -1);
        for (int j = 0; j < K; ++j) {
          int32_t bits = 0;
          if (dest[t * K + j] == r) std::memcpy(&bits, &weights[t * K + j], sizeof(bits));
          meta.push_back(bits);
        }
      }
    std::vector<int32_t> combine_offset{0}, combine_rows;
    for (int64_t t = 0; t < n; ++t) {
      combine_rows.insert(combine_rows.end(), rows_of[t].begin(), rows_of[t].end());
      combine_offset.push_back(static_cast<int32_t>(combine_rows.size()));
    }
    std::vector<int64_t> offset{0};
    for (int r = 0; r < P; ++r) offset.push_back(offset.back() + count[r]);

    ASSERT_TRUE(PlanMoeSend(placement, experts.data(), weights.data(), n, K, sender, reused).ok());
    auto fresh = PlanMoeSend(placement, experts.data(), weights.data(), n, K, sender);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    for (const MoeSendPlan* p : {&reused, &*fresh}) {
      SCOPED_TRACE(::testing::Message() << "trial " << trial << " P " << P << " K " << K << " n " << n
                                        << (p == &reused ? " reused" : " fresh"));
      EXPECT_EQ(p->send_count, count);
      EXPECT_EQ(p->send_offset, offset);
      EXPECT_EQ(p->token, token);
      EXPECT_EQ(p->meta, meta);
      EXPECT_EQ(p->combine_offset, combine_offset);
      EXPECT_EQ(p->combine_rows, combine_rows);
      EXPECT_EQ(p->pairs_per_rank, pairs);
      EXPECT_EQ(p->dest, dest);
    }
  }
}

}  // namespace
}  // namespace dsv4

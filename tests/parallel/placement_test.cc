// Expert placement (parallel/placement.h), on CPU: slot maps and their checks, the placement file
// and the step-plan encoding, and EPLB. EPLB is checked for what any placement must be (every
// expert somewhere, no expert twice on a rank, slot counts within one of each other, replicas of a
// group within one node when planned by node) over a sweep of shapes with odd sizes, and for what
// it is for: skewed loads come out balanced, against a bound computed independently.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "parallel/placement.h"

namespace dsv4 {
namespace {

std::string Message(const absl::Status& st) { return std::string(st.message()); }

TEST(Placement, ContiguousBlocksAnyEpSize) {
  const ExpertPlacement p3 = ExpertPlacement::Contiguous(16, 3);
  EXPECT_EQ(p3.slots(0), (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(p3.slots(1), (std::vector<int32_t>{6, 7, 8, 9, 10}));
  EXPECT_EQ(p3.slots(2), (std::vector<int32_t>{11, 12, 13, 14, 15}));
  const ExpertPlacement p6 = ExpertPlacement::Contiguous(16, 6);
  std::vector<size_t> sizes;
  for (int r = 0; r < 6; ++r) sizes.push_back(p6.slots(r).size());
  EXPECT_EQ(sizes, (std::vector<size_t>{3, 3, 3, 3, 2, 2}));
  EXPECT_EQ(p6.num_slots(), 16);
  EXPECT_EQ(p6.replicas(15), (std::vector<int>{5}));
  EXPECT_TRUE(p6.Holds(5, 15));
  EXPECT_FALSE(p6.Holds(4, 15));
}

TEST(Placement, FromSlotsNamesTheProblem) {
  EXPECT_NE(Message(ExpertPlacement::FromSlots(4, {{0, 1}, {}}).status()).find("EP rank 1 holds no expert slot"),
            std::string::npos);
  EXPECT_NE(Message(ExpertPlacement::FromSlots(4, {{0, 1}, {2, 4}}).status()).find("expert 4, outside [0, 4)"),
            std::string::npos);
  EXPECT_NE(Message(ExpertPlacement::FromSlots(4, {{0, 1, 0}, {2, 3}}).status()).find("holds expert 0 twice"),
            std::string::npos);
  EXPECT_NE(Message(ExpertPlacement::FromSlots(4, {{0, 1}, {2}}).status()).find("expert 3 has no slot"),
            std::string::npos);
  auto ok = ExpertPlacement::FromSlots(4, {{0, 1, 3}, {2, 3, 0}});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->replicas(3), (std::vector<int>{0, 1}));
  EXPECT_EQ(ok->num_slots(), 6);
  // Replicas split their expert's load evenly.
  const std::vector<double> load = {4, 2, 6, 8};
  EXPECT_EQ(ok->RankLoad(load), (std::vector<double>{2 + 2 + 4, 6 + 4 + 2}));
}

TEST(Placement, DefaultChecksTheSlots) {
  auto p = ModelPlacement::Default(5, 16, 6);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_maps(), 1);
  EXPECT_EQ(p->layer(4), ExpertPlacement::Contiguous(16, 6));
  EXPECT_EQ(p->redundant(), 0);
  EXPECT_NE(Message(ModelPlacement::Default(5, 16, 20).status())
                .find("--ep 20 exceeds the 16 expert slots (16 routed experts + 0 redundant)"),
            std::string::npos);
  EXPECT_TRUE(ModelPlacement::Default(5, 16, 20, 4).ok());  // one slot per rank
  EXPECT_NE(Message(ModelPlacement::Default(5, 4, 2, 5).status()).find("more than one copy"), std::string::npos);
  auto r = ModelPlacement::Default(5, 16, 4, 4);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->redundant(), 4);
  EXPECT_EQ(r->max_slots_per_rank(), 5);
  for (int rank = 0; rank < 4; ++rank) EXPECT_EQ(r->layer(0).slots(rank).size(), 5u);
}

TEST(Placement, FileRoundTripAndErrors) {
  std::vector<ExpertPlacement> maps = {ExpertPlacement::Contiguous(6, 2), ExpertPlacement::Contiguous(6, 2)};
  maps[1].AddReplica(0, 1);
  auto p = ModelPlacement::Make(2, maps, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  const std::string json = p->ToJson("unit test");
  auto back = ModelPlacement::FromJson(json, "x.json");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
  EXPECT_EQ(*back, *p);
  EXPECT_TRUE(back->CheckFits(2, 6, 2, "x.json").ok());
  EXPECT_NE(Message(back->CheckFits(3, 6, 2, "x.json")).find("2 layer maps but the model has 3 layers"),
            std::string::npos);
  EXPECT_NE(Message(back->CheckFits(2, 8, 2, "x.json")).find("6 routed experts but the model has 8"),
            std::string::npos);
  EXPECT_NE(Message(back->CheckFits(2, 6, 3, "x.json")).find("2 EP ranks but the layout has --ep 3"),
            std::string::npos);

  const std::string head = R"({"format": "dsv4-placement/1", "num_experts": 4, "ep": 2, )";
  auto err = [&](const std::string& text) { return Message(ModelPlacement::FromJson(text, "f.json").status()); };
  EXPECT_NE(err("{").find("f.json: not valid JSON"), std::string::npos);
  EXPECT_NE(err(head + R"("layers": [[[0, 1], [2, 3]]], "colour": 1})").find("unknown key 'colour'"),
            std::string::npos);
  EXPECT_NE(err(R"({"format": "x", "num_experts": 4, "ep": 2, "layers": []})").find("dsv4-placement/1"),
            std::string::npos);
  EXPECT_NE(err(head + R"("layers": []})").find("non-empty array"), std::string::npos);
  EXPECT_NE(err(head + R"("layers": [[[0, 1, 2, 3]]]})").find("layers[0] must be an array of 2 ranks"),
            std::string::npos);
  EXPECT_NE(err(head + R"("layers": [[[0, 1], [2, 7]]]})").find("layers[0][1] holds 7"), std::string::npos);
  EXPECT_NE(err(head + R"("layers": [[[0, 1], [2, 2, 3]]]})").find("holds expert 2 twice"), std::string::npos);
  EXPECT_NE(err(head + R"("layers": [[[0, 1], [2]]]})").find("expert 3 has no slot"), std::string::npos);
  EXPECT_NE(err(R"({"format": "dsv4-placement/1", "ep": 2, "layers": [[[0], [1]]]})").find("\"num_experts\" is missing"),
            std::string::npos);
  auto one = ModelPlacement::FromJson(head + R"("layers": [[[0, 1, 3], [2, 3]]]})", "f.json");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_TRUE(one->CheckFits(61, 4, 2, "f.json").ok());  // one map serves every layer
  EXPECT_EQ(one->layer(60).replicas(3), (std::vector<int>{0, 1}));
}

TEST(Placement, EncodingRoundTrip) {
  auto p = ModelPlacement::Default(7, 10, 3, 2);
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<int32_t> w = p->Encode();
  auto back = ModelPlacement::Decode(w);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, *p);
  for (size_t cut : {size_t{0}, size_t{3}, w.size() - 1}) {
    std::vector<int32_t> bad(w.begin(), w.begin() + cut);
    EXPECT_FALSE(ModelPlacement::Decode(bad).ok()) << cut;
  }
  std::vector<int32_t> extra = w;
  extra.push_back(0);
  EXPECT_FALSE(ModelPlacement::Decode(extra).ok());
  std::vector<int32_t> wrong = w;
  wrong[7] = 99;  // an expert id out of range
  EXPECT_FALSE(ModelPlacement::Decode(wrong).ok());
}

// What every EPLB placement must be, for loads `load`.
void CheckInvariants(const ExpertPlacement& p, const std::vector<double>& load, int ep, const EplbOptions& o,
                     const std::string& what) {
  ASSERT_EQ(p.ep(), ep) << what;
  ASSERT_EQ(p.num_experts(), static_cast<int64_t>(load.size())) << what;
  EXPECT_EQ(p.num_slots(), o.num_slots) << what;
  size_t lo = SIZE_MAX, hi = 0;
  for (int r = 0; r < ep; ++r) lo = std::min(lo, p.slots(r).size()), hi = std::max(hi, p.slots(r).size());
  EXPECT_LE(hi - lo, 1u) << what << ": slot counts per rank differ by more than one";
  for (int64_t e = 0; e < p.num_experts(); ++e) {
    ASSERT_FALSE(p.replicas(e).empty()) << what;  // FromSlots guarantees it; keep the property visible
    std::set<int> distinct(p.replicas(e).begin(), p.replicas(e).end());
    EXPECT_EQ(distinct.size(), p.replicas(e).size()) << what << ": expert " << e << " twice on a rank";
  }
  // Grouped by node: every replica of a group on the group's one node, when the shape allows it
  // (the hierarchical conditions of placement.cc).
  const int rpn = o.ranks_per_node;
  const int64_t E = p.num_experts(), gs = std::max<int64_t>(1, o.group_size);
  if (rpn > 0 && rpn < ep && ep % rpn == 0 && E % gs == 0 && (E / gs) % (ep / rpn) == 0) {
    const int nodes = ep / rpn;
    bool slots_fit = true;
    for (int k = 0; k < nodes; ++k) {
      int64_t s = 0;
      for (int r = k * rpn; r < (k + 1) * rpn; ++r) s += o.num_slots / ep + (r < o.num_slots % ep ? 1 : 0);
      slots_fit &= s >= E / nodes && s <= E / nodes * rpn;
    }
    if (slots_fit)
      for (int64_t g = 0; g < E / gs; ++g) {
        std::set<int> node;
        for (int64_t e = g * gs; e < (g + 1) * gs; ++e)
          for (int r : p.replicas(e)) node.insert(r / rpn);
        EXPECT_EQ(node.size(), 1u) << what << ": group " << g << " spans nodes";
      }
  }
}

TEST(Eplb, InvariantsOverShapes) {
  std::mt19937_64 rng(7);
  std::exponential_distribution<double> skew(1.0);
  for (int64_t E : {16, 17, 64, 256})
    for (int ep : {1, 2, 3, 4, 6, 8, 24})
      for (int64_t extra : {int64_t{0}, int64_t{ep / 2}, int64_t{ep}, int64_t{3 * ep + 1}})
        for (int rpn : {0, ep / 2, ep / 3})
          for (int64_t gs : {int64_t{1}, int64_t{4}}) {
            const int64_t slots = E + extra;
            if (slots < ep || slots > E * ep) continue;
            std::vector<double> load(E);
            for (double& v : load) v = std::floor(1000 * skew(rng));
            const EplbOptions o{slots, rpn, gs};
            const std::string what = "E " + std::to_string(E) + " ep " + std::to_string(ep) + " slots " +
                                     std::to_string(slots) + " rpn " + std::to_string(rpn) + " group " +
                                     std::to_string(gs);
            auto p = PlanEplbLayer(load, ep, o);
            ASSERT_TRUE(p.ok()) << what << ": " << p.status();
            CheckInvariants(*p, load, ep, o, what);
            auto again = PlanEplbLayer(load, ep, o);
            ASSERT_TRUE(again.ok());
            EXPECT_EQ(*again, *p) << what << ": not deterministic";
          }
}

TEST(Eplb, RejectsBadInput) {
  const std::vector<double> load(8, 1.0);
  EXPECT_FALSE(PlanEplbLayer(load, 3, {7, 0, 1}).ok());   // fewer slots than experts
  EXPECT_FALSE(PlanEplbLayer(load, 2, {17, 0, 1}).ok());  // more than a copy per rank
  EXPECT_FALSE(PlanEplbLayer(load, 10, {8, 0, 1}).ok());  // a rank without a slot
  std::vector<double> bad = load;
  bad[3] = -1;
  EXPECT_NE(Message(PlanEplbLayer(bad, 2, {8, 0, 1}).status()).find("load of expert 3"), std::string::npos);
  bad[3] = std::nan("");
  EXPECT_FALSE(PlanEplbLayer(bad, 2, {8, 0, 1}).ok());
}

// One expert takes half of all (token, expert) pairs; the rest spread evenly. Contiguous blocks put
// it on one rank; EPLB with a few redundant slots copies it onto several ranks and evens the load.
TEST(Eplb, BalancesAHotExpert) {
  struct Shape {
    int64_t E;
    int ep;
    int64_t redundant;
  };
  for (const Shape s : {Shape{16, 4, 4}, Shape{256, 4, 4}, Shape{256, 24, 24}, Shape{16, 3, 3}, Shape{32, 6, 6}}) {
    std::vector<double> load(s.E, 1.0);
    load[0] = static_cast<double>(s.E - 1);  // half of everything
    const double before = Imbalance(ExpertPlacement::Contiguous(s.E, s.ep).RankLoad(load));
    auto p = PlanEplbLayer(load, s.ep, {s.E + s.redundant, 0, 1});
    ASSERT_TRUE(p.ok()) << p.status();
    const double after = Imbalance(p->RankLoad(load));
    EXPECT_GT(before, 1.5) << s.E << " over " << s.ep;
    EXPECT_LT(after, 1.2) << s.E << " over " << s.ep << " (before " << before << ")";
    EXPECT_LE(p->replicas(0).size(), static_cast<size_t>(s.ep));
    EXPECT_GE(p->replicas(0).size(), std::min<size_t>(s.ep, static_cast<size_t>(s.redundant)));
  }
}

// The greedy packing's classic bound, from the loads alone: no rank carries more than the mean
// plus the heaviest single copy (here checked on random skewed loads without redundant slots,
// where no duplicate constraint can bind).
TEST(Eplb, WithinGreedyBound) {
  std::mt19937_64 rng(11);
  std::lognormal_distribution<double> skew(0.0, 1.0);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t E = 64;
    const int ep = 8;
    std::vector<double> load(E);
    for (double& v : load) v = skew(rng);
    auto p = PlanEplbLayer(load, ep, {E, 0, 1});
    ASSERT_TRUE(p.ok());
    const std::vector<double> rank = p->RankLoad(load);
    const double mean = std::accumulate(load.begin(), load.end(), 0.0) / ep;
    const double heaviest = *std::max_element(load.begin(), load.end());
    EXPECT_LE(*std::max_element(rank.begin(), rank.end()), mean + heaviest + 1e-9) << trial;
  }
}

TEST(Eplb, PerLayer) {
  std::vector<std::vector<double>> load(3, std::vector<double>(8, 1.0));
  load[0][0] = 20, load[1][5] = 20, load[2][7] = 20;
  auto p = PlanEplb(load, 4, {12, 0, 1});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_maps(), 3);
  // Each layer's hot expert gets a copy on every rank (3 of the 4 spare slots); the last spare slot
  // goes to the lowest id among the rest (ties), never to another layer's hot expert.
  EXPECT_EQ(p->layer(0).replicas(0).size(), 4u);
  EXPECT_EQ(p->layer(1).replicas(5).size(), 4u);
  EXPECT_EQ(p->layer(2).replicas(7).size(), 4u);
  EXPECT_EQ(p->layer(0).replicas(5).size(), 1u);
  EXPECT_EQ(p->layer(1).replicas(7).size(), 1u);
  EXPECT_EQ(p->layer(2).replicas(0).size(), 2u);
  auto bad = load;
  bad[2].pop_back();
  EXPECT_FALSE(PlanEplb(bad, 4, {12, 0, 1}).ok());
}

}  // namespace
}  // namespace dsv4

// Expert placement: which routed experts each rank of an EP group serves.
//
// An EP group has `ep` ranks; each rank holds a number of physical expert *slots*, each slot a copy
// of one logical expert. Every logical expert has at least one slot; a hot expert may have several
// (redundant experts, as DeepSeek's EPLB deploys them), never two on the same rank. Slot counts per
// rank may differ (256 experts over 24 ranks: 11 or 10 each), so any EP size works.
//
//   ExpertPlacement  one layer's map (what the dispatcher routes with);
//   ModelPlacement   a map per layer, or one shared by every layer; the placement file and the
//                    compact form carried in a step plan;
//   PlanEplb         DeepSeek's EPLB: replicate the hottest experts, pack slots so every rank gets
//                    the same load, keep expert groups within a node when the layout has nodes.
//
// Replicas split their expert's tokens evenly and deterministically: the i-th (token, expert) pair
// a sender routes to expert e goes to replica (i + sender) mod (replicas of e), in the order
// ExpertPlacement::replicas lists them (see PlanMoeSend in parallel/moe_plan.h).
//
// The placement file (docs/parallelism.md, "Placement file"): JSON,
//   {"format": "dsv4-placement/1", "num_experts": E, "ep": P,
//    "layers": [ [[slots of rank 0], ..., [slots of rank P-1]], ... ]}
// with one entry in "layers" (every layer) or one per layer; optional "ranks_per_node" and
// "source". `dsv4 plan --placement-out`, `dsv4 ctl placement|rebalance --out` write it and
// `--placement FILE` reads it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

// One layer's placement. Immutable after construction (AddReplica aside); cheap to copy.
class ExpertPlacement {
 public:
  ExpertPlacement() = default;
  // slots[r]: the logical experts of EP rank r's slots, in slot order. InvalidArgument naming the
  // problem: no ranks, a rank without slots, an expert outside [0, num_experts), an expert no rank
  // holds, a rank holding one expert twice.
  static absl::StatusOr<ExpertPlacement> FromSlots(int64_t num_experts, std::vector<std::vector<int32_t>> slots);
  // Contiguous blocks without replicas; when ep does not divide the experts, the first
  // num_experts % ep ranks hold one more. Requires 1 <= ep <= num_experts.
  static ExpertPlacement Contiguous(int64_t num_experts, int ep);
  // Adds a slot with a copy of `expert` on `rank` (no-op when the rank holds it already).
  void AddReplica(int64_t expert, int rank);

  int ep() const { return static_cast<int>(slots_.size()); }
  int64_t num_experts() const { return static_cast<int64_t>(replicas_.size()); }
  int64_t num_slots() const;
  // The logical expert of each of `rank`'s slots.
  const std::vector<int32_t>& slots(int rank) const { return slots_[rank]; }
  // The EP ranks holding `expert`, ascending.
  const std::vector<int>& replicas(int64_t expert) const { return replicas_[expert]; }
  bool Holds(int rank, int64_t expert) const;
  // Tokens each rank serves when logical expert e receives load[e] tokens, split evenly over its
  // replicas: [ep].
  std::vector<double> RankLoad(std::span<const double> load) const;

  bool operator==(const ExpertPlacement& o) const { return slots_ == o.slots_ && replicas_ == o.replicas_; }

 private:
  std::vector<std::vector<int32_t>> slots_;  // EP rank -> logical expert per slot
  std::vector<std::vector<int>> replicas_;   // logical expert -> EP ranks, ascending
};

// max / mean of per-rank loads (1 = perfectly balanced; 1 when every rank is idle).
double Imbalance(std::span<const double> rank_load);

// A placement for every MoE layer of a model.
class ModelPlacement {
 public:
  ModelPlacement() = default;
  // `maps` holds one placement (shared by every layer) or one per layer; they must agree on the
  // number of experts and ranks. InvalidArgument otherwise.
  static absl::StatusOr<ModelPlacement> Make(int64_t num_layers, std::vector<ExpertPlacement> maps,
                                             int ranks_per_node = 0);
  // The default of a job: contiguous blocks when redundant = 0, else PlanEplb with uniform load
  // (the redundant slots copy the lowest expert ids until a rebalance knows better). Shared by
  // every layer. InvalidArgument when the slots cannot cover the ranks or the experts.
  static absl::StatusOr<ModelPlacement> Default(int64_t num_layers, int64_t num_experts, int ep,
                                                int64_t redundant = 0, int ranks_per_node = 0);

  const ExpertPlacement& layer(int64_t l) const { return maps_[maps_.size() == 1 ? 0 : l]; }
  int64_t num_layers() const { return num_layers_; }
  int64_t num_maps() const { return static_cast<int64_t>(maps_.size()); }
  int ep() const { return maps_.empty() ? 0 : maps_[0].ep(); }
  int64_t num_experts() const { return maps_.empty() ? 0 : maps_[0].num_experts(); }
  int ranks_per_node() const { return ranks_per_node_; }
  // The most slots any layer's map has beyond one per expert.
  int64_t redundant() const;
  // The most slots any rank holds in any layer (the weights a rank must hold room for).
  int64_t max_slots_per_rank() const;

  // OK when it fits a model of `num_layers` layers and `num_experts` experts over `ep` ranks, else
  // InvalidArgument naming the mismatch (`what` names the source, e.g. the file).
  absl::Status CheckFits(int64_t num_layers, int64_t num_experts, int ep, std::string_view what) const;

  // The placement file. `source` names the file in errors.
  static absl::StatusOr<ModelPlacement> FromJson(std::string_view text, std::string_view source);
  std::string ToJson(std::string_view source = "") const;

  // Compact form for the step plan (all int32): {1, layers, experts, ep, maps, ranks_per_node, then
  // per map and rank: slot count, experts}. Decode validates everything Make and FromSlots do.
  std::vector<int32_t> Encode() const;
  static absl::StatusOr<ModelPlacement> Decode(std::span<const int32_t> words);

  bool operator==(const ModelPlacement& o) const {
    return num_layers_ == o.num_layers_ && maps_ == o.maps_ && ranks_per_node_ == o.ranks_per_node_;
  }

 private:
  int64_t num_layers_ = 0;
  std::vector<ExpertPlacement> maps_;
  int ranks_per_node_ = 0;  // 0: unknown / one node
};

// ---- EPLB ------------------------------------------------------------------------------------------

struct EplbOptions {
  int64_t num_slots = 0;    // physical slots per layer: num_experts + redundant experts
  int ranks_per_node = 0;   // consecutive EP ranks per node; 0 or ep: one node
  int64_t group_size = 1;   // consecutive experts kept within one node (V3's routing groups: 32)
};

// One layer: replicas go to the experts with the highest load per replica (at most one replica per
// rank), then slots are packed heaviest first onto the least loaded rank that has room and does not
// hold that expert, each rank taking floor or ceil(num_slots / ep) slots. With several nodes (and
// groups and slots that divide over them) it runs DeepSeek's hierarchical variant: groups packed
// onto nodes by load, replication and packing within each node. Deterministic (ties go to the
// lowest id). InvalidArgument when the slot count does not fit (< experts, < ep, > experts * ep)
// or a load is negative or not finite.
absl::StatusOr<ExpertPlacement> PlanEplbLayer(std::span<const double> load, int ep, const EplbOptions& options);
// Every layer: load [layers][experts].
absl::StatusOr<ModelPlacement> PlanEplb(const std::vector<std::vector<double>>& load, int ep,
                                        const EplbOptions& options);

// A rebalance: EPLB for load [layers][experts], keeping `current`'s ranks and each layer's slot
// count (the memory a rank reserved for experts does not change).
absl::StatusOr<ModelPlacement> Rebalance(const ModelPlacement& current, const std::vector<std::vector<double>>& load,
                                         int ranks_per_node);

// How evenly `p` spreads load [layers][experts] (replicas splitting their expert's share): max /
// mean of the per-rank load, averaged over layers and in the worst layer.
struct PlacementBalance {
  double mean = 1, worst = 1;
};
PlacementBalance Balance(const ModelPlacement& p, const std::vector<std::vector<double>>& load);

}  // namespace dsv4

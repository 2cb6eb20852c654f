// Rank layout of a job: the world is dp x tp for attention (tp consecutive ranks form one
// tensor-parallel group; the dp groups take different requests) and is cut into EP groups of ep
// consecutive ranks for the MoE, each holding every routed expert once (plus optional replicas).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace dsv4 {

// The model sizes a layout must divide.
struct ShardedDims {
  int64_t num_heads = 1;     // attention query heads (split by tp)
  int64_t o_groups = 1;      // output projection groups (split by tp)
  int64_t num_experts = 1;   // routed experts (split by ep)
};

struct ParallelLayout {
  int world = 1, rank = 0;
  int tp = 1, dp = 1, ep = 1;
  int tp_rank = 0, dp_rank = 0;  // position inside the TP group, and which TP group
  int ep_rank = 0, ep_group = 0;

  // Validates every divisibility the runtime relies on; errors name the numbers. ep = 0 means the
  // whole world.
  static absl::StatusOr<ParallelLayout> Make(int world, int rank, int tp, int ep, const ShardedDims& dims);
  std::string ToString() const;
};

// The GPU of this rank: its node-local rank, one GPU per rank. Two ranks on one GPU (more local
// ranks than devices) is an error naming the numbers. Local rank and size come from the launcher's
// environment (OpenMPI: OMPI_COMM_WORLD_LOCAL_RANK / _LOCAL_SIZE) via LocalRankFromEnv.
absl::StatusOr<int> DeviceForLocalRank(int local_rank, int local_size, int device_count);
struct LocalRank {
  int rank = 0, size = 1;
};
LocalRank LocalRankFromEnv();

// Which EP ranks hold which routed experts. Logical expert e is served by one or more physical
// copies; the model only sees logical ids, so replicas of hot experts can be added freely.
class ExpertPlacement {
 public:
  // Contiguous blocks: EP rank r holds experts [r*E/ep, (r+1)*E/ep).
  static ExpertPlacement Contiguous(int64_t num_experts, int ep);
  // Adds a copy of expert e on EP rank r (no-op if it is there already).
  void AddReplica(int64_t expert, int rank);

  int ep() const { return static_cast<int>(held_.size()); }
  int64_t num_experts() const { return static_cast<int64_t>(replicas_.size()); }
  const std::vector<int>& replicas(int64_t expert) const { return replicas_[expert]; }
  bool Holds(int rank, int64_t expert) const;
  // The EP rank that serves (token, expert): copies are used round-robin by token index.
  int Route(int64_t expert, int64_t token) const {
    const auto& r = replicas_[expert];
    return r[static_cast<size_t>(token) % r.size()];
  }

 private:
  std::vector<std::vector<int>> replicas_;  // expert -> EP ranks
  std::vector<std::vector<int64_t>> held_;  // EP rank -> experts
};

// Everything a rank needs to run its share of a step. Communicators are owned by the caller.
struct ParallelContext {
  ParallelLayout layout;
  Communicator* world = nullptr;
  Communicator* tp = nullptr;  // this rank's TP group
  Communicator* ep = nullptr;  // this rank's EP group
  ExpertPlacement placement = ExpertPlacement::Contiguous(1, 1);
};

// Owns the communicators of a ParallelContext.
struct ParallelGroups {
  std::unique_ptr<Communicator> world, tp, ep;
  ParallelContext ctx;
};

// Builds the TP and EP sub-communicators of `world` for a validated layout.
absl::StatusOr<std::unique_ptr<ParallelGroups>> MakeParallelGroups(std::unique_ptr<Communicator> world, int tp, int ep,
                                                                   const ShardedDims& dims);

}  // namespace dsv4

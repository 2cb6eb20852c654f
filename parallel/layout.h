// Rank layout of a job: the world is dp x tp for attention (tp consecutive ranks form one
// tensor-parallel group; the dp groups take different requests) and is cut into EP groups of ep
// consecutive ranks for the MoE, each holding every routed expert at least once (any EP size:
// uneven slot counts when ep does not divide the experts, plus redundant copies; placement.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "parallel/placement.h"

namespace dsv4 {

// The model sizes a layout must fit.
struct ShardedDims {
  int64_t num_heads = 1;     // attention query heads (split by tp)
  int64_t o_groups = 1;      // output projection groups (split by tp)
  int64_t num_experts = 1;   // routed experts (placed over ep ranks)
  int64_t num_layers = 1;    // MoE layers (each has its own expert placement)
};

struct ParallelLayout {
  int world = 1, rank = 0;
  int tp = 1, dp = 1, ep = 1;
  int tp_rank = 0, dp_rank = 0;  // position inside the TP group, and which TP group
  int ep_rank = 0, ep_group = 0;

  // Validates every divisibility the runtime relies on; errors name the numbers. ep = 0 means the
  // whole world. The experts need not divide over ep (ModelPlacement checks the slots cover it).
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

// Everything a rank needs to run its share of a step. Communicators are owned by the caller.
struct ParallelContext {
  ParallelLayout layout;
  Communicator* world = nullptr;
  Communicator* tp = nullptr;  // this rank's TP group
  Communicator* ep = nullptr;  // this rank's EP group
  // The same groups over device memory (NCCL), for a model whose backend is a GPU; null: the model
  // reaches tp / ep through host copies (runtime/backend/device_communicator.h) where it must.
  Communicator* tp_device = nullptr;
  Communicator* ep_device = nullptr;
  ModelPlacement placement;    // routed experts over the EP group at start (the model may switch it)
  int ep_ranks_per_node = 0;   // EP ranks sharing a node (EPLB's node grouping); 0: one node or unknown
};

// Owns the communicators of a ParallelContext.
struct ParallelGroups {
  std::unique_ptr<Communicator> world, tp, ep, tp_device, ep_device;
  ParallelContext ctx;
};

// How routed experts are placed at start: a placement file's contents, or the default for
// `redundant` extra slots (ModelPlacement::Default).
struct PlacementSpec {
  const ModelPlacement* given = nullptr;  // from --placement (checked against the model and layout)
  std::string given_source;               // its file name, for errors
  int64_t redundant = 0;                  // --redundant-experts
};

// Builds the TP and EP sub-communicators of `world` for a validated layout, and the start
// placement. Collective over `world`: the ranks agree on how many EP ranks share a node (for EPLB's
// node grouping: the launcher's local size when every node has the same, else unknown).
absl::StatusOr<std::unique_ptr<ParallelGroups>> MakeParallelGroups(std::unique_ptr<Communicator> world, int tp, int ep,
                                                                   const ShardedDims& dims,
                                                                   const PlacementSpec& placement = {});

}  // namespace dsv4

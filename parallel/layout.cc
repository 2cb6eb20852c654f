#include "parallel/layout.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {

absl::StatusOr<ParallelLayout> ParallelLayout::Make(int world, int rank, int tp, int ep, const ShardedDims& dims) {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError(msg); };
  if (world < 1 || rank < 0 || rank >= world) return bad(absl::StrCat("rank ", rank, " outside a world of ", world));
  if (ep == 0) ep = world;
  if (tp < 1) return bad(absl::StrCat("--tp ", tp, " must be >= 1"));
  if (ep < 1) return bad(absl::StrCat("--ep ", ep, " must be >= 0 (0 = the whole world)"));
  if (world % tp != 0) return bad(absl::StrCat("--tp ", tp, " does not divide the world size ", world));
  if (world % ep != 0) return bad(absl::StrCat("--ep ", ep, " does not divide the world size ", world));
  if (dims.num_heads % tp != 0)
    return bad(absl::StrCat("--tp ", tp, " does not divide the model's ", dims.num_heads, " attention heads"));
  if (dims.o_groups % tp != 0)
    return bad(absl::StrCat("--tp ", tp, " does not divide the model's ", dims.o_groups, " output groups (o_groups)"));
  ParallelLayout l;
  l.world = world, l.rank = rank, l.tp = tp, l.dp = world / tp, l.ep = ep;
  l.tp_rank = rank % tp, l.dp_rank = rank / tp;
  l.ep_rank = rank % ep, l.ep_group = rank / ep;
  return l;
}

std::string ParallelLayout::ToString() const {
  return absl::StrCat("rank ", rank, "/", world, ": tp ", tp_rank, "/", tp, ", dp ", dp_rank, "/", dp, ", ep ",
                      ep_rank, "/", ep, " (group ", ep_group, ")");
}

absl::StatusOr<int> DeviceForLocalRank(int local_rank, int local_size, int device_count) {
  if (device_count < 1) return absl::FailedPreconditionError("no GPU is visible to this rank");
  if (local_rank < 0 || local_rank >= local_size)
    return absl::InvalidArgumentError(absl::StrCat("local rank ", local_rank, " outside [0, ", local_size, ")"));
  if (local_size > device_count)
    return absl::InvalidArgumentError(absl::StrCat(local_size, " ranks on this node but ", device_count,
                                                   " visible GPU(s): two ranks would share a GPU; start at most ",
                                                   device_count, " ranks per node"));
  return local_rank;
}

LocalRank LocalRankFromEnv() {
  LocalRank l;
  if (const char* r = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) l.rank = std::atoi(r);
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) l.size = std::max(1, std::atoi(s));
  return l;
}

absl::StatusOr<std::unique_ptr<ParallelGroups>> MakeParallelGroups(std::unique_ptr<Communicator> world, int tp, int ep,
                                                                   const ShardedDims& dims, const PlacementSpec& spec) {
  DSV4_ASSIGN_OR_RETURN(auto layout, ParallelLayout::Make(world->size(), world->rank(), tp, ep, dims));
  // EP ranks per node, when every node runs the same number of ranks and an EP group spans whole
  // nodes (EP groups are consecutive ranks; launchers place consecutive ranks on a node).
  int ranks_per_node = 0;
  {
    const float mine = static_cast<float>(LocalRankFromEnv().size);
    std::vector<float> all(world->size());
    std::vector<int64_t> ones(world->size(), 1);
    DSV4_RETURN_IF_ERROR(world->AllGatherV(&mine, ones.data(), all.data()), "agreeing on ranks per node");
    const bool same = std::all_of(all.begin(), all.end(), [&](float v) { return v == all[0]; });
    const int local = static_cast<int>(all[0]);
    if (same && local > 0 && local < layout.ep && layout.ep % local == 0) ranks_per_node = local;
  }
  ModelPlacement placement;
  if (spec.given != nullptr) {
    DSV4_RETURN_IF_ERROR(spec.given->CheckFits(dims.num_layers, dims.num_experts, layout.ep, spec.given_source));
    if (spec.redundant != 0 && spec.redundant != spec.given->redundant())
      return absl::InvalidArgumentError(absl::StrCat("--redundant-experts ", spec.redundant, " but ",
                                                     spec.given_source, " has ", spec.given->redundant(),
                                                     " redundant slots"));
    placement = *spec.given;
  } else {
    DSV4_ASSIGN_OR_RETURN(placement, ModelPlacement::Default(dims.num_layers, dims.num_experts, layout.ep,
                                                             spec.redundant, ranks_per_node));
  }
  auto g = std::make_unique<ParallelGroups>();
  DSV4_ASSIGN_OR_RETURN(g->tp, world->Split(layout.dp_rank, layout.tp_rank, "tp"));
  DSV4_ASSIGN_OR_RETURN(g->ep, world->Split(layout.ep_group, layout.ep_rank, "ep"));
  g->world = std::move(world);
  g->ctx.layout = layout;
  g->ctx.world = g->world.get();
  g->ctx.tp = g->tp.get();
  g->ctx.ep = g->ep.get();
  g->ctx.placement = std::move(placement);
  g->ctx.ep_ranks_per_node = ranks_per_node;
  return g;
}

}  // namespace dsv4

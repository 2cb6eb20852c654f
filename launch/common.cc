#include "launch/common.h"

#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/engram/sharded_source.h"

namespace dsv4 {

void AddModelFlags(Flags& flags) {
  flags.Add("model", "builtin:v4-tiny", "checkpoint directory or built-in model name")
      .Add("qdq", "on", "reproduce the reference's quantization simulation (on|off)")
      .Add("threads", "0", "CPU threads per rank (0 = one per core available to the rank)")
      .Add("tp", "1", "tensor-parallel ranks for attention (divides the world)")
      .Add("ep", "0", "expert-parallel ranks (0 = the whole world)")
      .Add("comm-timeout-s", "60", "seconds a collective may wait for a peer before the job fails")
      .Add("engram-placement", "local",
           "Engram tables: local (every rank holds them whole), node (sharded over the node's ranks) or world "
           "(sharded over all ranks, read with one-sided MPI gets)");
}

// Shards the Engram tables over the node's or the world's ranks when asked (collective).
absl::Status PlaceEngramTables(const Flags& flags, Runtime& rt) {
  auto placement = ParseEngramPlacement(flags.Str("engram-placement"));
  if (!placement.ok()) return placement.status();
  if (!rt.model->has_engram() || *placement == EngramPlacement::kLocal) return absl::OkStatus();
  Communicator* comm = rt.groups->world.get();
  if (*placement == EngramPlacement::kNode) {
    auto node = rt.groups->world->SplitNode("engram-node");
    if (!node.ok()) return node.status();
    rt.engram_comm = std::move(*node);
    comm = rt.engram_comm.get();
  }
  auto source = ShardedEngramRowSource::Create(*comm, rt.model->EngramTables(), rt.model->config().engram_head_dim);
  if (!source.ok()) return source.status();
  rt.model->SetEngramRowSource(std::move(*source));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Runtime>> OpenRuntime(const Flags& flags) {
  auto qdq = flags.OnOff("qdq");
  if (!qdq.ok()) return qdq.status();
  auto threads = flags.Int("threads");
  if (!threads.ok()) return threads.status();
  if (*threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  auto tp = flags.Int("tp");
  if (!tp.ok()) return tp.status();
  auto ep = flags.Int("ep");
  if (!ep.ok()) return ep.status();
  auto timeout = flags.Double("comm-timeout-s");
  if (!timeout.ok()) return timeout.status();
  if (*timeout <= 0) return absl::InvalidArgumentError("--comm-timeout-s must be positive");
  if (*threads > 0) kernels::SetNumThreads(static_cast<int>(*threads));

  std::unique_ptr<Communicator> world;
  if (LaunchedByMpirun()) {
    auto w = MakeMpiWorldCommunicator();
    if (!w.ok()) return w.status();
    world = std::move(*w);
  } else {
    world = MakeLocalCommunicator();
  }
  world->set_timeout(std::chrono::milliseconds(static_cast<int64_t>(*timeout * 1000)));

  auto rt = std::make_unique<Runtime>();
  auto weights = LoadModel(flags.Str("model"), [&](const ModelConfig& c) -> absl::StatusOr<LoadOptions> {
    ShardedDims dims{c.num_attention_heads, c.o_groups, c.n_routed_experts};
    auto groups = MakeParallelGroups(std::move(world), static_cast<int>(*tp), static_cast<int>(*ep), dims);
    if (!groups.ok()) return groups.status();
    rt->groups = std::move(*groups);
    const ParallelContext& ctx = rt->groups->ctx;
    LoadOptions opt;
    opt.tp_rank = ctx.layout.tp_rank, opt.tp_size = ctx.layout.tp;
    opt.owns_expert = [&ctx](int64_t, int64_t e) { return ctx.placement.Holds(ctx.layout.ep_rank, e); };
    return opt;
  });
  if (!weights.ok()) return weights.status();
  ForwardOptions opt;
  opt.qdq = *qdq;
  rt->model = std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*weights)), opt, &rt->groups->ctx);
  DSV4_RETURN_IF_ERROR(PlaceEngramTables(flags, *rt));
  return rt;
}

absl::Status CheckTokenIds(std::span<const int32_t> ids, const Model& model, const std::string& flag) {
  if (auto st = model.CheckTokens(ids); !st.ok()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", st.message()));
  return absl::OkStatus();
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return true;
  return false;
}

int PrintHelp(const std::string& command, const Flags& flags) {
  std::printf("usage: dsv4 %s [flags]\n%s", command.c_str(), flags.Help().c_str());
  return 0;
}

int Fail(const absl::Status& status) {
  const int code = status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  if (LaunchedByMpirun()) {
    const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
    std::fprintf(stderr, "dsv4 (rank %s): %s\n", rank ? rank : "?", std::string(status.message()).c_str());
    MpiSession::AbortJob(code);
  }
  std::fprintf(stderr, "dsv4: %s\n", std::string(status.message()).c_str());
  return code;
}

}  // namespace dsv4

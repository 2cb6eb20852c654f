#include "runtime/runtime.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/env.h"
#include "base/file.h"
#include "base/fnv.h"
#include "base/log.h"
#include "base/status.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/backend/device_communicator.h"

namespace dsv4 {

void AddRuntimeFlags(Flags& flags) {
  const RuntimeOptions d;
  flags.String("model", d.model, "checkpoint directory or built-in model name")
      .String("device", "auto",
              "where the model runs: cpu, cuda (each rank the GPU of its node-local rank) or auto (the CPU in "
              "this version)")
      .Bool("qdq", d.qdq, "reproduce the reference's quantization simulation")
      .Int("threads", d.threads, "CPU threads per rank (0 = one per core available to the rank)", 0, kMaxCpuThreads)
      .Int("tp", d.tp, "tensor-parallel ranks for attention (divides the world)", 1, 1 << 16)
      .Int("ep", d.ep, "expert-parallel ranks (0 = the whole world); need not divide the routed experts", 0, 1 << 16)
      .Int("redundant-experts", d.redundant_experts,
           "extra expert slots per layer over the EP group, holding copies of the most loaded experts", 0, 1 << 20)
      .String("placement", "", "expert placement file (JSON: each EP rank's slots, per layer; docs/parallelism.md)")
      .Double("comm-timeout-s", d.comm_timeout_s, "seconds a collective may wait for a peer before the job fails",
              0.001, 86400)
      .String("engram-placement", "local",
              "Engram tables: local (every rank holds them whole), node (sharded over the node's ranks) or world "
              "(sharded over all ranks, read with one-sided MPI gets)")
      .Bool("check-weights", d.check_weights,
            "read every floating-point weight once when loading and refuse NaN or Inf (the ranks share the pass)");
}

absl::StatusOr<RuntimeOptions> RuntimeOptionsFromFlags(const Flags& flags) {
  RuntimeOptions o;
  o.model = flags.GetString("model");
  DSV4_ASSIGN_OR_RETURN(o.device, ParseDeviceChoice(flags.GetString("device")));
  o.qdq = flags.GetBool("qdq");
  o.threads = static_cast<int>(flags.GetInt("threads"));
  o.tp = static_cast<int>(flags.GetInt("tp"));
  o.ep = static_cast<int>(flags.GetInt("ep"));
  o.redundant_experts = flags.GetInt("redundant-experts");
  o.placement_file = flags.GetString("placement");
  o.comm_timeout_s = flags.GetDouble("comm-timeout-s");
  o.check_weights = flags.GetBool("check-weights");
  DSV4_ASSIGN_OR_RETURN(o.engram_placement, ParseEngramPlacement(flags.GetString("engram-placement")));
  return o;
}

std::string RuntimeSettings(const RuntimeOptions& o) {
  const char* engram = o.engram_placement == EngramPlacement::kLocal  ? "local"
                       : o.engram_placement == EngramPlacement::kNode ? "node"
                                                                      : "world";
  return absl::StrCat("qdq=", o.qdq ? "on" : "off", " tp=", o.tp, " ep=", o.ep, " redundant-experts=",
                      o.redundant_experts, " engram=", engram);
}

absl::StatusOr<std::string> ConfigDigest(const std::string& model, const std::string& settings) {
  DSV4_ASSIGN_OR_RETURN(const std::string text, ModelConfigText(model));
  Fnv64 f;
  f.Add(text);
  f.Add("\n");
  f.Add(settings);
  return f.Hex();
}

namespace {

// What one rank opened, as it sends it to every other rank (fixed size, NUL-terminated fields).
struct OpenedModel {
  char digest[24];
  char settings[104];
  char model[384];
};

void CopyField(char* dst, size_t size, const std::string& s) {
  std::memset(dst, 0, size);
  std::memcpy(dst, s.data(), std::min(s.size(), size - 1));
}

// Every rank's (model, settings, digest) against rank 0's; `what` names the digest ("config",
// "weights"). Collective; every rank returns the same error.
absl::Status CheckRanksAgree(Communicator& world, const std::string& model, const std::string& settings,
                             const std::string& digest, const char* what) {
  if (world.size() == 1) return absl::OkStatus();
  OpenedModel mine;
  CopyField(mine.digest, sizeof(mine.digest), digest);
  CopyField(mine.settings, sizeof(mine.settings), settings);
  CopyField(mine.model, sizeof(mine.model), model);
  std::vector<OpenedModel> all(world.size());
  DSV4_RETURN_IF_ERROR(AllGatherBytes(world, &mine, sizeof(mine), all.data()),
                       "comparing the ranks' models (", what, ")");
  for (int r = 1; r < world.size(); ++r) {
    const OpenedModel &a = all[0], &b = all[r];
    if (std::strcmp(a.digest, b.digest) == 0 && std::strcmp(a.settings, b.settings) == 0) continue;
    const bool settings_differ = std::strcmp(a.settings, b.settings) != 0;
    return absl::FailedPreconditionError(absl::StrCat(
        "rank ", r, " and rank 0 opened different ", settings_differ ? "settings" : what, ": rank 0 '", a.model, "' (",
        a.settings, ", ", what, " ", a.digest, "), rank ", r, " '", b.model, "' (", b.settings, ", ", what, " ",
        b.digest, "); every rank must open the same checkpoint with the same --qdq, --tp, --ep and --engram-placement"));
  }
  return absl::OkStatus();
}

// The bytes of `path` as world rank 0 reads them, on every rank (collective): the ranks agree on
// what they load even where their file systems differ, and rank 0's error is every rank's.
absl::StatusOr<std::string> ReadOnLeader(Communicator& world, const std::string& path) {
  absl::StatusOr<std::string> text = std::string();
  if (world.rank() == 0) text = ReadFile(path, int64_t{1} << 28);
  int64_t size = text.ok() ? static_cast<int64_t>(text->size()) : -1;
  DSV4_RETURN_IF_ERROR(world.Broadcast(&size, sizeof(size), 0));
  if (size < 0) {
    if (world.rank() == 0) return text.status();
    return absl::InvalidArgumentError(absl::StrCat(path, ": world rank 0 could not read it"));
  }
  if (world.rank() != 0) text = std::string(size, '\0');
  if (size > 0) DSV4_RETURN_IF_ERROR(world.Broadcast(text->data(), size, 0));
  return text;
}

// Every rank learns the first (by rank) non-OK status among the ranks' `local` ones. Collective.
absl::Status ShareFirstError(Communicator& world, const absl::Status& local) {
  if (world.size() == 1) return local;
  char mine[512] = {};
  if (!local.ok()) {
    const std::string text = absl::StrCat(static_cast<int>(local.code()), ":", local.message());
    std::memcpy(mine, text.data(), std::min(text.size(), sizeof(mine) - 1));
  }
  std::vector<char> all(sizeof(mine) * world.size());
  DSV4_RETURN_IF_ERROR(AllGatherBytes(world, mine, sizeof(mine), all.data()));
  for (int r = 0; r < world.size(); ++r) {
    const std::string text(all.data() + r * sizeof(mine), strnlen(all.data() + r * sizeof(mine), sizeof(mine)));
    if (text.empty()) continue;
    const size_t colon = text.find(':');
    int code = static_cast<int>(absl::StatusCode::kUnknown);
    (void)absl::SimpleAtoi(text.substr(0, colon), &code);
    return absl::Status(static_cast<absl::StatusCode>(code), absl::StrCat("rank ", r, ": ", text.substr(colon + 1)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Open(const RuntimeOptions& options) {
  if (options.threads < 0 || options.threads > kMaxCpuThreads)
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be in [0, ", kMaxCpuThreads, "], got ", options.threads));
  if (!(options.comm_timeout_s > 0)) return absl::InvalidArgumentError("the communication timeout must be positive");
  DSV4_RETURN_IF_ERROR(kernels::SetNumThreads(options.threads));
  if (kernels::NumThreads() > kernels::AvailableCores())
    DSV4_LOG(kWarn, kernels::NumThreads(), " CPU threads on ", kernels::AvailableCores(),
             " available cores: the threads take turns, and steps run slower than with one per core");

  // The device, before anything is loaded: each rank takes the GPU of its node-local rank. The
  // forward keeps to the backend's memory (runtime/model/model.h), and so do the expert- and
  // tensor-parallel exchanges (MakeDeviceGroups). Until the GPU path has been checked on a GPU
  // (README.md), auto means the CPU.
  BackendOptions device;
  device.device = options.device == DeviceChoice::kAuto ? DeviceChoice::kCpu : options.device;
  const LauncherPlace place = LauncherWorld();
  device.local_rank = place.local_rank, device.local_size = place.local_size;
  std::shared_ptr<Backend> backend;
  if (options.backend_for_test) {
    backend = options.backend_for_test();
  } else {
    DSV4_ASSIGN_OR_RETURN(backend, MakeBackend(device));
  }
  if (backend->device() == Device::kCuda)
    DSV4_LOG(kWarn, "--device cuda on ", backend->Describe(),
             ": this version's GPU path is tested on CPU stand-ins only; compare `dsv4 logits` against --device cpu "
             "before relying on it");

  std::unique_ptr<Communicator> world;
  if (LaunchedByMpirun()) {
    DSV4_ASSIGN_OR_RETURN(world, MakeMpiWorldCommunicator());
  } else {
    world = MakeLocalCommunicator();
  }
  world->set_timeout(std::chrono::milliseconds(static_cast<int64_t>(options.comm_timeout_s * 1000)));
  log::SetRank(world->rank());
  const std::string settings = RuntimeSettings(options);
  DSV4_ASSIGN_OR_RETURN(const std::string config_digest, ConfigDigest(options.model, settings));
  DSV4_RETURN_IF_ERROR(CheckRanksAgree(*world, options.model, settings, config_digest, "config"));

  std::unique_ptr<Runtime> rt(new Runtime(options));
  PlacementSpec placement;
  placement.redundant = options.redundant_experts;
  ModelPlacement given;
  if (!options.placement_file.empty()) {
    DSV4_ASSIGN_OR_RETURN(const std::string text, ReadOnLeader(*world, options.placement_file), "--placement");
    DSV4_ASSIGN_OR_RETURN(given, ModelPlacement::FromJson(text, options.placement_file));
    placement.given = &given;
    placement.given_source = options.placement_file;
  }
  // The layout is validated against the model's sizes once its config is read; the weights are
  // then loaded for this rank's slice only.
  DSV4_ASSIGN_OR_RETURN(
      std::unique_ptr<ModelWeights> weights,
      LoadModel(options.model, [&](const ModelConfig& c) -> absl::StatusOr<LoadOptions> {
        const ShardedDims dims{c.num_attention_heads, c.o_groups, c.n_routed_experts, c.num_hidden_layers};
        DSV4_ASSIGN_OR_RETURN(rt->groups_,
                              MakeParallelGroups(std::move(world), options.tp, options.ep, dims, placement));
        const ParallelContext& ctx = rt->groups_->ctx;
        LoadOptions load;
        load.tp_rank = ctx.layout.tp_rank, load.tp_size = ctx.layout.tp;
        load.owns_expert = [&ctx](int64_t l, int64_t e) { return ctx.placement.layer(l).Holds(ctx.layout.ep_rank, e); };
        return load;
      }));
  DSV4_RETURN_IF_ERROR(
      CheckRanksAgree(rt->world(), options.model, settings, weights->checkpoint->Fingerprint(), "weights"));
  if (options.check_weights) {
    // Each rank reads its share of the tensors; the ranks then agree on the verdict, so every rank
    // fails with the finding (or none does).
    const absl::Status scan = CheckWeightsFinite(*weights->checkpoint, rt->world().rank(), rt->world().size());
    DSV4_RETURN_IF_ERROR(ShareFirstError(rt->world(), scan));
  }
  if (!backend->HostIsDevice()) DSV4_RETURN_IF_ERROR(rt->MakeDeviceGroups(*backend));
  ForwardOptions forward;
  forward.qdq = options.qdq;
  rt->model_ = std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(weights)), forward,
                                       &rt->groups_->ctx, std::move(backend));
  DSV4_RETURN_IF_ERROR(rt->PlaceEngramTables());
  DSV4_LOG(kDebug, "opened ", options.model, " (", rt->layout().ToString(), ")");
  return rt;
}

// The TP and EP groups over device memory, for a GPU backend: NCCL where this build has it and
// DSV4_DEVICE_COMM does not say host. Without them the model copies its exchanges through host
// memory to the MPI groups (runtime/backend/device_communicator.h). Collective over the world.
absl::Status Runtime::MakeDeviceGroups(Backend& backend) {
  ParallelGroups& g = *groups_;
  const ParallelLayout& l = g.ctx.layout;
  if (l.world == 1 || backend.device() != Device::kCuda) return absl::OkStatus();
  if (env::Str(env::Knob::kDeviceComm) == "host") {
    DSV4_LOG(kInfo, "DSV4_DEVICE_COMM=host: the expert- and tensor-parallel exchanges go through host memory over MPI");
    return absl::OkStatus();
  }
  struct Group {
    int size;
    Communicator* host;
    std::unique_ptr<Communicator>* device;
    const char* name;
  };
  for (const Group& group :
       {Group{l.tp, g.tp.get(), &g.tp_device, "nccl:tp"}, Group{l.ep, g.ep.get(), &g.ep_device, "nccl:ep"}}) {
    if (group.size <= 1) continue;
    absl::StatusOr<std::unique_ptr<Communicator>> comm = MakeDeviceCommunicator(*group.host, group.name);
    if (absl::IsUnimplemented(comm.status())) {  // the same build on every rank: every rank falls back
      DSV4_LOG(kWarn, comm.status().message(), ": the exchanges go through host memory over MPI");
      return absl::OkStatus();
    }
    if (!comm.ok())
      return absl::Status(comm.status().code(),
                          absl::StrCat(comm.status().message(),
                                       " (DSV4_DEVICE_COMM=host sends the exchanges through host memory over MPI)"));
    *group.device = MakeBackendOrderedCommunicator(backend, std::move(*comm));
  }
  g.ctx.tp_device = g.tp_device.get(), g.ctx.ep_device = g.ep_device.get();
  return absl::OkStatus();
}

// Shards the Engram tables over the node's or the world's ranks when asked (collective).
absl::Status Runtime::PlaceEngramTables() {
  if (!model_->has_engram() || options_.engram_placement == EngramPlacement::kLocal) return absl::OkStatus();
  Communicator* comm = groups_->world.get();
  if (options_.engram_placement == EngramPlacement::kNode) {
    DSV4_ASSIGN_OR_RETURN(engram_comm_, groups_->world->SplitNode("engram-node"));
    comm = engram_comm_.get();
  }
  DSV4_ASSIGN_OR_RETURN(
      std::shared_ptr<ShardedEngramRowSource> source,
      ShardedEngramRowSource::Create(*comm, model_->EngramTables(), model_->config().engram_head_dim));
  model_->SetEngramRowSource(std::move(source));
  return absl::OkStatus();
}

}  // namespace dsv4

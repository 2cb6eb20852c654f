// The assembly of a running model on this rank, in one pass: the world (MPI under mpirun, else a
// world of one), the layout and its TP/EP groups, this rank's slice of the weights, the model,
// and where its Engram tables live. Commands, the server and benchmarks open one Runtime and use
// its parts; nothing else wires them together.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "base/flags.h"
#include "parallel/layout.h"
#include "runtime/engram/sharded_source.h"
#include "runtime/model/model.h"

namespace dsv4 {

// The most CPU threads a rank may ask for (more is a mistake, not a machine).
inline constexpr int kMaxCpuThreads = 1024;

struct RuntimeOptions {
  std::string model = "builtin:v4-tiny";  // checkpoint directory or built-in name
  bool qdq = true;                        // the reference's deliberate rounding steps
  int threads = 0;                        // CPU threads per rank (0: one per available core)
  int tp = 1;                             // tensor-parallel ranks for attention
  int ep = 0;                             // expert-parallel ranks (0: the whole world)
  int64_t redundant_experts = 0;          // extra expert slots per layer, holding copies of hot experts
  std::string placement_file;             // a placement file (parallel/placement.h) instead of the default
  double comm_timeout_s = 60;             // a collective waiting longer for a peer fails
  bool check_weights = false;             // scan the checkpoint for NaN/Inf when loading (shared by the ranks)
  EngramPlacement engram_placement = EngramPlacement::kLocal;
  // Where the model runs. auto picks the CPU in this version; under mpirun each rank takes the GPU
  // of its node-local rank.
  DeviceChoice device = DeviceChoice::kAuto;
  // Tests only: the backend to run on instead of `device`'s (a stand-in whose memory the host may
  // not touch: tests/runtime/test_backends.h).
  std::function<std::shared_ptr<Backend>()> backend_for_test;
};

// The options every rank of a job must agree on, as text ("qdq=on tp=2 ep=0 engram=local").
std::string RuntimeSettings(const RuntimeOptions& options);

// 16 hex digits: a 64-bit FNV-1a hash of the model's config.json text (a built-in model's
// generated one) and `settings`. Ranks compare it before they load anything.
absl::StatusOr<std::string> ConfigDigest(const std::string& model, const std::string& settings);

// The flags of every command that runs the model: --model, --device, --qdq, --threads, --tp, --ep,
// --redundant-experts, --placement, --comm-timeout-s, --engram-placement, --check-weights; and the
// options they give.
void AddRuntimeFlags(Flags& flags);
absl::StatusOr<RuntimeOptions> RuntimeOptionsFromFlags(const Flags& flags);

class Runtime {
 public:
  // Collective under mpirun: every rank opens its share. Errors name the bad option or file.
  // Every rank checks that all ranks opened the same model with the same settings (the config
  // digest before loading, the checkpoint's fingerprint after): a job whose ranks disagree fails
  // on every rank with one error naming both, instead of computing with mixed weights.
  static absl::StatusOr<std::unique_ptr<Runtime>> Open(const RuntimeOptions& options);

  Model& model() const { return *model_; }
  Communicator& world() const { return *groups_->world; }
  const ParallelContext& parallel() const { return groups_->ctx; }
  const ParallelLayout& layout() const { return groups_->ctx.layout; }
  bool leader() const { return layout().rank == 0; }
  const RuntimeOptions& options() const { return options_; }

 private:
  explicit Runtime(RuntimeOptions options) : options_(std::move(options)) {}
  absl::Status MakeDeviceGroups(Backend& backend);
  absl::Status PlaceEngramTables();

  RuntimeOptions options_;
  std::unique_ptr<ParallelGroups> groups_;
  std::unique_ptr<Communicator> engram_comm_;  // the ranks sharing the Engram tables (node placement)
  std::unique_ptr<Model> model_;
};

}  // namespace dsv4

// `dsv4 bench <what>`: each benchmark declares its flags and runs from the parsed flags (the
// launch/ table lists them). Every figure is a ratio to a limit measured in the same run.
#pragma once

#include "absl/status/status.h"
#include "base/flags.h"

namespace dsv4::bench {

// MoE dispatch + combine against raw MPI_Alltoallv moving the same bytes (under mpirun).
void CommFlags(Flags& flags);
absl::Status Comm(const Flags& flags);
// Engram decode steps with the tables sharded over the ranks against whole tables on every rank.
void EngramFlags(Flags& flags);
absl::Status Engram(const Flags& flags);
// CPU decode against STREAM triad; CPU prefill against the peak of the arithmetic used.
void DecodeFlags(Flags& flags);
absl::Status Decode(const Flags& flags);
void PrefillFlags(Flags& flags);
absl::Status Prefill(const Flags& flags);
// Every CUDA kernel at the V4-Flash / V4-Pro shapes against the device copy bandwidth and the
// targets of the kernels' README (a clear error without a GPU or a CUDA build).
void KernelsFlags(Flags& flags);
absl::Status Kernels(const Flags& flags);
// The per-token sampler over rows of synthetic logits against one read pass over the same rows.
void SampleFlags(Flags& flags);
absl::Status Sample(const Flags& flags);
// N concurrent gRPC streams against the engine in-process and the model's batched decode rate.
void ServeFlags(Flags& flags);
absl::Status Serve(const Flags& flags);

}  // namespace dsv4::bench

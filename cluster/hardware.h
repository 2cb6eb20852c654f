// Hardware and software catalog: devices, host CPUs, scale-up links, scale-out NICs, the efficiency
// of each device class, engine profiles and the planner's fitted parameters.
//
// The built-in catalog is cluster/catalog/devices.json (hardware) and cluster/catalog/software.json
// (engines and fitted parameters), compiled into the binary; every figure there carries its source.
// A user file of the same layout adds or overrides entries (MergeCatalogJson).
// Units: FLOP/s in TFLOP/s (10^12), bandwidth in GB/s (10^9 B/s) per direction, memory in GB (10^9 B),
// latency in microseconds, price in USD per device-hour.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "cluster/software.h"

namespace dsv4::cluster {

// Fractions of peak, per device class (catalog "efficiency"), for what datasheets and kernel READMEs
// give. GEMM and weight-streaming efficiencies are fitted parameters (Tuning); Resolve() fills them in.
struct Efficiency {
  double gemm = 0.6;           // large GEMMs, of the tensor-core peak at the compute precision (from Tuning)
  double attention = 0.5;      // prefill attention, of the BF16 (or FP8) peak
  double memory = 0.65;        // streaming weights in small-M GEMMs, of peak bandwidth (from Tuning)
  double kv_memory = 0.85;     // streaming KV / compressed caches in decode attention
  double kernel_floor_us = 3;  // least time of one kernel launch
};

struct Link {
  std::string name;
  double gbps = 0;        // per device, per direction
  double latency_us = 0;  // one step of a collective
  // PCIe links: one step of a collective when the devices cannot reach each other's memory (no
  // peer-to-peer, e.g. GeForce cards) and every transfer is staged through host memory.
  double host_staged_latency_us = 0;
};

// A host CPU model (catalog "hosts"); a scenario names one with hardware.host_cpu.
struct HostCpu {
  std::string name;
  int cores = 0;                    // per socket
  double ghz = 0;                   // base clock: every core of the socket under vector load
  double boost_ghz = 0;             // the published maximum boost clock (0: ghz at any load)
  double simd_flops_per_cycle = 0;  // FP32 FMA flops per core and cycle (two 512-bit FMA units: 64)
  double amx_flops_per_cycle = 0;   // BF16 flops per core and cycle of AMX tiles (0: no AMX)
  int memory_channels = 0;          // per socket
  double memory_mts = 0;            // per channel, MT/s (8 bytes per transfer)
  double stream_fraction = 0.8;     // STREAM triad bandwidth, of the DRAM peak
  std::map<std::string, std::string> sources;
};

struct Device {
  std::string name;
  std::string device_class;  // datacenter | workstation | consumer | apple | cpu
  double bf16_tflops = 0, fp8_tflops = 0, fp4_tflops = 0;
  double fp32_tflops = 0;  // CUDA cores without tensor cores (0 = not given): kernels that do not use MMA
  double memory_gb = 0;
  double memory_gbps = 0;
  std::string scale_up;         // link name
  int scale_up_domain = 8;      // devices that share the scale-up fabric (NVL72: 72)
  std::string scale_out;        // default NIC name
  bool unified_memory = false;  // host and device share DRAM (Apple, DGX Spark, CPU)
  double price_per_hour = 0;    // 0 = unknown
  std::string memory_type;      // "hbm" | "gddr" | "lpddr" | "ddr" (selects the weight-streaming parameter)
  double host_link_gbps = 0;    // host-to-device link, per direction (PCIe 4.0 x16: 32; NVLink-C2C: 450)
  std::string released;         // first sold (YYYY-MM-DD; "" = unknown), for software maturity
  bool fp4_moe_kernels = true;  // engines run grouped MoE GEMMs on its FP4 tensor cores (false: W4A16 fallback)
  double host_memory_gbps = 0;
  double host_memory_gb = 0;  // 0 = class default (see README)
  int host_cores = 0;
  int host_sockets = 1;  // of the typical host the host_* figures describe
  double host_core_gflops = 0;
  int devices_per_host = 8;                    // devices that share one host (the host_* figures are per host)
  std::map<std::string, std::string> sources;  // figure name -> source
  bool IsHostOnly() const { return device_class == "cpu"; }
  // Peak TFLOP/s for GEMMs whose weights have `bits` (activations quantized to match where the part can).
  double PeakTflops(double bits) const;
};

struct Catalog {
  std::map<std::string, Device> devices;
  std::map<std::string, HostCpu> hosts;
  std::map<std::string, Link> links;
  std::map<std::string, Link> nics;
  std::map<std::string, Efficiency> efficiency;  // by device class
  std::map<std::string, EngineProfile> engines;  // by canonical name
  Tuning tuning;                                 // fitted parameters
  std::map<std::string, std::string> tuning_sources;  // parameter name -> what it was fitted on

  absl::StatusOr<Device> FindDevice(const std::string& name, const std::string& field) const;
  absl::StatusOr<HostCpu> FindHost(const std::string& name, const std::string& field) const;
  absl::StatusOr<Link> FindNic(const std::string& name, const std::string& field) const;
  // An engine by name or alias (case-insensitive); null when unknown.
  const EngineProfile* FindEngine(const std::string& name) const;
  Link ScaleUpLink(const Device& d) const;
  // The class efficiencies with the fitted GEMM and weight-streaming efficiencies of the device.
  Efficiency EfficiencyFor(const Device& d, const Tuning& t) const;
};

// The catalog compiled from cluster/catalog/devices.json and cluster/catalog/software.json.
const Catalog& BuiltinCatalog();
// The raw text of those files.
const char* BuiltinCatalogJson();
const char* BuiltinSoftwareJson();
// Parses a catalog file and merges it into `catalog` (devices, links, NICs and classes of the same name
// are replaced field by field). Errors name the file and the field.
absl::Status MergeCatalogJson(const std::string& json_text, const std::string& source, Catalog* catalog);
absl::Status MergeCatalogFile(const std::string& path, Catalog* catalog);

}  // namespace dsv4::cluster

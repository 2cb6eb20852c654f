// Hardware catalog: devices, scale-up links, scale-out NICs and the efficiency of each device class.
//
// The built-in catalog is cluster/catalog/devices.json, compiled into the binary; every figure there
// carries its source. A user file of the same layout adds or overrides entries (MergeCatalogJson).
// Units: FLOP/s in TFLOP/s (10^12), bandwidth in GB/s (10^9 B/s) per direction, memory in GB (10^9 B),
// latency in microseconds, price in USD per device-hour.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace dsv4::cluster {

// Fractions of peak reached by tuned kernels, per device class (catalog "efficiency").
struct Efficiency {
  double gemm = 0.6;           // large GEMMs, of the tensor-core peak at the compute precision
  double attention = 0.5;      // prefill attention, of the BF16 (or FP8) peak
  double memory = 0.65;        // streaming weights in small-M GEMMs, of peak bandwidth
  double kv_memory = 0.85;     // streaming KV / compressed caches in decode attention
  double kernel_floor_us = 3;  // least time of one kernel launch
  double host_memory = 0.22;   // host DRAM streaming for CPU experts, of host peak bandwidth
  double host_compute = 0.13;  // host GEMMs, of host_cores x host_core_gflops
};

struct Link {
  std::string name;
  double gbps = 0;        // per device, per direction
  double latency_us = 0;  // one step of a collective
};

struct Device {
  std::string name;
  std::string device_class;  // datacenter | workstation | consumer | apple | cpu
  double bf16_tflops = 0, fp8_tflops = 0, fp4_tflops = 0;
  double memory_gb = 0;
  double memory_gbps = 0;
  std::string scale_up;         // link name
  int scale_up_domain = 8;      // devices that share the scale-up fabric (NVL72: 72)
  std::string scale_out;        // default NIC name
  bool unified_memory = false;  // host and device share DRAM (Apple, DGX Spark, CPU)
  double price_per_hour = 0;    // 0 = unknown
  double host_memory_gbps = 0;
  double host_memory_gb = 0;  // 0 = class default (see README)
  int host_cores = 0;
  double host_core_gflops = 0;
  int devices_per_host = 8;                    // devices that share one host (the host_* figures are per host)
  std::map<std::string, std::string> sources;  // figure name -> source
  bool IsHostOnly() const { return device_class == "cpu"; }
  // Peak TFLOP/s for GEMMs whose weights have `bits` (activations quantized to match where the part can).
  double PeakTflops(double bits) const;
};

struct Catalog {
  std::map<std::string, Device> devices;
  std::map<std::string, Link> links;
  std::map<std::string, Link> nics;
  std::map<std::string, Efficiency> efficiency;  // by device class

  absl::StatusOr<Device> FindDevice(const std::string& name, const std::string& field) const;
  absl::StatusOr<Link> FindNic(const std::string& name, const std::string& field) const;
  Link ScaleUpLink(const Device& d) const;
  Efficiency EfficiencyFor(const Device& d) const;
};

// The catalog compiled from cluster/catalog/devices.json.
const Catalog& BuiltinCatalog();
// The raw text of that file.
const char* BuiltinCatalogJson();
// Parses a catalog file and merges it into `catalog` (devices, links, NICs and classes of the same name
// are replaced field by field). Errors name the file and the field.
absl::Status MergeCatalogJson(const std::string& json_text, const std::string& source, Catalog* catalog);
absl::Status MergeCatalogFile(const std::string& path, Catalog* catalog);

}  // namespace dsv4::cluster

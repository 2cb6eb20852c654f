#include "parallel/placement.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

absl::Status Bad(std::string_view what, const std::string& msg) {
  return absl::InvalidArgumentError(what.empty() ? msg : absl::StrCat(std::string(what), ": ", msg));
}

// Slots per rank: floor(num_slots / ep), the first num_slots % ep ranks one more.
std::vector<int64_t> SlotCapacity(int64_t num_slots, int ep) {
  std::vector<int64_t> cap(ep, num_slots / ep);
  for (int r = 0; r < num_slots % ep; ++r) ++cap[r];
  return cap;
}

// Replica counts for experts with loads `load`, filling `slots` slots with at most `cap` copies of
// an expert: each extra slot goes to the expert with the highest load per copy (lowest index on
// ties). Requires load.size() <= slots <= load.size() * cap.
std::vector<int64_t> Replicate(std::span<const double> load, int64_t slots, int64_t cap) {
  std::vector<int64_t> count(load.size(), 1);
  for (int64_t s = static_cast<int64_t>(load.size()); s < slots; ++s) {
    int64_t best = -1;
    for (size_t i = 0; i < load.size(); ++i) {
      if (count[i] >= cap) continue;
      // load[i] / count[i] > load[best] / count[best], without division.
      if (best < 0 || load[i] * static_cast<double>(count[best]) > load[best] * static_cast<double>(count[i]))
        best = static_cast<int64_t>(i);
    }
    ++count[best];
  }
  return count;
}

// Packs the copies of experts `ids` (count[i] copies of ids[i], each carrying load[i] / count[i])
// onto `ranks` with capacities `cap` (parallel to ranks; decreasing, differing by at most one), no
// rank holding an expert twice. Heaviest copy first, onto the least loaded rank with room that
// does not hold the expert. Returns rank index -> experts.
std::vector<std::vector<int32_t>> Pack(std::span<const int32_t> ids, std::span<const double> load,
                                       std::span<const int64_t> count, std::span<const int64_t> cap) {
  struct Item {
    int32_t expert;
    double weight;
  };
  std::vector<Item> items;
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t c = 0; c < count[i]; ++c) items.push_back({ids[i], load[i] / static_cast<double>(count[i])});
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.weight != b.weight ? a.weight > b.weight : a.expert < b.expert;
  });
  const size_t m = cap.size();
  std::vector<std::vector<int32_t>> held(m);
  std::vector<double> rank_load(m, 0.0);
  auto holds = [&](size_t r, int32_t e) { return std::find(held[r].begin(), held[r].end(), e) != held[r].end(); };
  auto weight_of = [&](int32_t e) {
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] == e) return load[i] / static_cast<double>(count[i]);
    return 0.0;
  };
  bool ok = true;
  for (const Item& it : items) {
    size_t best = m;
    for (size_t r = 0; r < m; ++r) {
      if (static_cast<int64_t>(held[r].size()) >= cap[r] || holds(r, it.expert)) continue;
      if (best == m || rank_load[r] < rank_load[best] ||
          (rank_load[r] == rank_load[best] && held[r].size() < held[best].size()))
        best = r;
    }
    if (best == m) {
      // Only ranks that hold this expert have room: move another expert x from a rank p that
      // lacks this one to such a rank q, and put this copy on p.
      size_t q = m;
      for (size_t r = 0; r < m; ++r)
        if (static_cast<int64_t>(held[r].size()) < cap[r] && (q == m || rank_load[r] < rank_load[q])) q = r;
      for (size_t p = 0; p < m && best == m && q < m; ++p) {
        if (p == q || holds(p, it.expert)) continue;
        for (size_t k = 0; k < held[p].size(); ++k) {
          const int32_t x = held[p][k];
          if (holds(q, x)) continue;
          const double wx = weight_of(x);
          held[q].push_back(x), rank_load[q] += wx;
          held[p].erase(held[p].begin() + static_cast<int64_t>(k)), rank_load[p] -= wx;
          best = p;
          break;
        }
      }
      if (best == m) {
        ok = false;
        break;
      }
    }
    held[best].push_back(it.expert);
    rank_load[best] += it.weight;
  }
  if (ok) return held;
  // Never seen in practice; a placement that always exists: copies dealt round-robin, expert by
  // expert (at most one copy per rank, since count <= ranks), over ranks in capacity order.
  for (auto& h : held) h.clear();
  size_t k = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t c = 0; c < count[i]; ++c) held[k++ % m].push_back(ids[i]);
  return held;
}

absl::Status CheckLoads(std::span<const double> load) {
  for (size_t e = 0; e < load.size(); ++e)
    if (!std::isfinite(load[e]) || load[e] < 0)
      return absl::InvalidArgumentError(absl::StrCat("EPLB: load of expert ", e, " is ", load[e],
                                                     " (must be finite and >= 0)"));
  return absl::OkStatus();
}

// Global EPLB over ranks [0, ep).
std::vector<std::vector<int32_t>> PlanGlobal(std::span<const double> load, int ep, int64_t num_slots) {
  std::vector<int32_t> ids(load.size());
  std::iota(ids.begin(), ids.end(), 0);
  const std::vector<int64_t> count = Replicate(load, num_slots, ep);
  return Pack(ids, load, count, SlotCapacity(num_slots, ep));
}

// DeepSeek's hierarchical variant, or empty when the shape does not allow it.
std::vector<std::vector<int32_t>> PlanHierarchical(std::span<const double> load, int ep, const EplbOptions& o) {
  const int rpn = o.ranks_per_node;
  const int64_t E = static_cast<int64_t>(load.size()), gs = std::max<int64_t>(1, o.group_size);
  if (rpn <= 0 || rpn >= ep || ep % rpn != 0 || E % gs != 0) return {};
  const int nodes = ep / rpn;
  const int64_t groups = E / gs;
  if (groups % nodes != 0) return {};
  const std::vector<int64_t> cap = SlotCapacity(o.num_slots, ep);
  const int64_t experts_per_node = E / nodes;
  std::vector<int64_t> node_slots(nodes, 0);
  for (int r = 0; r < ep; ++r) node_slots[r / rpn] += cap[r];
  for (int k = 0; k < nodes; ++k)
    if (node_slots[k] < experts_per_node || node_slots[k] > experts_per_node * rpn) return {};
  // 1. Groups onto nodes by load, groups / nodes each (a packing without replicas).
  std::vector<int32_t> group_ids(groups);
  std::iota(group_ids.begin(), group_ids.end(), 0);
  std::vector<double> group_load(groups, 0.0);
  for (int64_t e = 0; e < E; ++e) group_load[e / gs] += load[e];
  const std::vector<int64_t> ones(groups, 1), node_cap(nodes, groups / nodes);
  const std::vector<std::vector<int32_t>> node_groups = Pack(group_ids, group_load, ones, node_cap);
  // 2. and 3. Replicate within each node, pack onto its ranks.
  std::vector<std::vector<int32_t>> slots(ep);
  for (int k = 0; k < nodes; ++k) {
    std::vector<int32_t> ids;
    for (int32_t g : node_groups[k])
      for (int64_t i = 0; i < gs; ++i) ids.push_back(static_cast<int32_t>(g * gs + i));
    std::sort(ids.begin(), ids.end());
    std::vector<double> node_load(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) node_load[i] = load[ids[i]];
    const std::vector<int64_t> count = Replicate(node_load, node_slots[k], rpn);
    const std::span<const int64_t> rank_cap(cap.data() + k * rpn, rpn);
    std::vector<std::vector<int32_t>> held = Pack(ids, node_load, count, rank_cap);
    for (int i = 0; i < rpn; ++i) slots[k * rpn + i] = std::move(held[i]);
  }
  return slots;
}

}  // namespace

// ---- ExpertPlacement -------------------------------------------------------------------------------

absl::StatusOr<ExpertPlacement> ExpertPlacement::FromSlots(int64_t num_experts,
                                                           std::vector<std::vector<int32_t>> slots) {
  if (slots.empty()) return absl::InvalidArgumentError("expert placement: no EP ranks");
  if (num_experts < 1) return absl::InvalidArgumentError("expert placement: no experts");
  ExpertPlacement p;
  p.replicas_.resize(num_experts);
  for (size_t r = 0; r < slots.size(); ++r) {
    if (slots[r].empty())
      return absl::InvalidArgumentError(absl::StrCat("expert placement: EP rank ", r, " holds no expert slot"));
    for (int32_t e : slots[r]) {
      if (e < 0 || e >= num_experts)
        return absl::InvalidArgumentError(
            absl::StrCat("expert placement: EP rank ", r, " holds expert ", e, ", outside [0, ", num_experts, ")"));
      std::vector<int>& reps = p.replicas_[e];
      if (!reps.empty() && reps.back() == static_cast<int>(r))
        return absl::InvalidArgumentError(
            absl::StrCat("expert placement: EP rank ", r, " holds expert ", e, " twice"));
      reps.push_back(static_cast<int>(r));
    }
  }
  for (int64_t e = 0; e < num_experts; ++e)
    if (p.replicas_[e].empty())
      return absl::InvalidArgumentError(absl::StrCat("expert placement: expert ", e, " has no slot on any EP rank"));
  p.slots_ = std::move(slots);
  return p;
}

ExpertPlacement ExpertPlacement::Contiguous(int64_t num_experts, int ep) {
  ExpertPlacement p;
  p.replicas_.resize(num_experts);
  p.slots_.resize(ep);
  const std::vector<int64_t> cap = SlotCapacity(num_experts, ep);
  int64_t e = 0;
  for (int r = 0; r < ep; ++r)
    for (int64_t i = 0; i < cap[r]; ++i, ++e) {
      p.slots_[r].push_back(static_cast<int32_t>(e));
      p.replicas_[e].push_back(r);
    }
  return p;
}

void ExpertPlacement::AddReplica(int64_t expert, int rank) {
  if (Holds(rank, expert)) return;
  slots_[rank].push_back(static_cast<int32_t>(expert));
  std::vector<int>& reps = replicas_[expert];
  reps.insert(std::upper_bound(reps.begin(), reps.end(), rank), rank);
}

int64_t ExpertPlacement::num_slots() const {
  int64_t n = 0;
  for (const auto& s : slots_) n += static_cast<int64_t>(s.size());
  return n;
}

bool ExpertPlacement::Holds(int rank, int64_t expert) const {
  const auto& r = replicas_[expert];
  return std::binary_search(r.begin(), r.end(), rank);
}

std::vector<double> ExpertPlacement::RankLoad(std::span<const double> load) const {
  std::vector<double> out(ep(), 0.0);
  for (int64_t e = 0; e < num_experts() && e < static_cast<int64_t>(load.size()); ++e)
    for (int r : replicas_[e]) out[r] += load[e] / static_cast<double>(replicas_[e].size());
  return out;
}

double Imbalance(std::span<const double> rank_load) {
  if (rank_load.empty()) return 1.0;
  double sum = 0, mx = 0;
  for (double v : rank_load) sum += v, mx = std::max(mx, v);
  return sum > 0 ? mx / (sum / static_cast<double>(rank_load.size())) : 1.0;
}

// ---- ModelPlacement --------------------------------------------------------------------------------

absl::StatusOr<ModelPlacement> ModelPlacement::Make(int64_t num_layers, std::vector<ExpertPlacement> maps,
                                                    int ranks_per_node) {
  if (maps.empty()) return absl::InvalidArgumentError("expert placement: no layers");
  if (maps.size() > 1 && static_cast<int64_t>(maps.size()) != num_layers)
    return absl::InvalidArgumentError(
        absl::StrCat("expert placement: ", maps.size(), " layer maps for ", num_layers, " layers"));
  for (size_t l = 1; l < maps.size(); ++l)
    if (maps[l].ep() != maps[0].ep() || maps[l].num_experts() != maps[0].num_experts())
      return absl::InvalidArgumentError(absl::StrCat("expert placement: layer ", l, " maps ", maps[l].num_experts(),
                                                     " experts over ", maps[l].ep(), " ranks, layer 0 ",
                                                     maps[0].num_experts(), " over ", maps[0].ep()));
  if (ranks_per_node < 0) return absl::InvalidArgumentError("expert placement: ranks_per_node must be >= 0");
  ModelPlacement p;
  p.num_layers_ = num_layers;
  p.maps_ = std::move(maps);
  p.ranks_per_node_ = ranks_per_node;
  return p;
}

absl::StatusOr<ModelPlacement> ModelPlacement::Default(int64_t num_layers, int64_t num_experts, int ep,
                                                       int64_t redundant, int ranks_per_node) {
  if (ep < 1) return absl::InvalidArgumentError(absl::StrCat("--ep ", ep, " must be >= 1"));
  if (redundant < 0)
    return absl::InvalidArgumentError(absl::StrCat("--redundant-experts ", redundant, " must be >= 0"));
  const int64_t slots = num_experts + redundant;
  if (slots < ep)
    return absl::InvalidArgumentError(absl::StrCat("--ep ", ep, " exceeds the ", slots, " expert slots (",
                                                   num_experts, " routed experts + ", redundant,
                                                   " redundant): every EP rank needs at least one"));
  if (slots > num_experts * ep)
    return absl::InvalidArgumentError(absl::StrCat("--redundant-experts ", redundant, " gives ", slots,
                                                   " slots, more than one copy of each of the ", num_experts,
                                                   " experts on each of the ", ep, " EP ranks"));
  if (redundant == 0) return Make(num_layers, {ExpertPlacement::Contiguous(num_experts, ep)}, ranks_per_node);
  const std::vector<double> uniform(num_experts, 1.0);
  DSV4_ASSIGN_OR_RETURN(ExpertPlacement map, PlanEplbLayer(uniform, ep, {slots, ranks_per_node, 1}));
  return Make(num_layers, {std::move(map)}, ranks_per_node);
}

int64_t ModelPlacement::redundant() const {
  int64_t r = 0;
  for (const auto& m : maps_) r = std::max(r, m.num_slots() - m.num_experts());
  return r;
}

int64_t ModelPlacement::max_slots_per_rank() const {
  int64_t n = 0;
  for (const auto& m : maps_)
    for (int r = 0; r < m.ep(); ++r) n = std::max(n, static_cast<int64_t>(m.slots(r).size()));
  return n;
}

absl::Status ModelPlacement::CheckFits(int64_t num_layers, int64_t num_experts, int ep, std::string_view what) const {
  if (maps_.empty()) return Bad(what, "empty expert placement");
  if (this->num_experts() != num_experts)
    return Bad(what, absl::StrCat("the placement is for ", this->num_experts(), " routed experts but the model has ",
                                  num_experts));
  if (this->ep() != ep)
    return Bad(what, absl::StrCat("the placement is for ", this->ep(), " EP ranks but the layout has --ep ", ep));
  if (maps_.size() > 1 && static_cast<int64_t>(maps_.size()) != num_layers)
    return Bad(what, absl::StrCat("the placement has ", maps_.size(), " layer maps but the model has ", num_layers,
                                  " layers (give one map for every layer, or one per layer)"));
  return absl::OkStatus();
}

absl::StatusOr<ModelPlacement> ModelPlacement::FromJson(std::string_view text, std::string_view source) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad(source, "not valid JSON");
  if (!j.is_object()) return Bad(source, "a placement file is a JSON object");
  static const char* kKeys[] = {"format", "source", "num_experts", "ep", "ranks_per_node", "layers"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    if (std::find_if(std::begin(kKeys), std::end(kKeys), [&](const char* k) { return key == k; }) == std::end(kKeys))
      return Bad(source, absl::StrCat("unknown key '", key, "' (known: ", absl::StrJoin(kKeys, ", "), ")"));
  }
  if (!j.contains("format") || j["format"] != "dsv4-placement/1")
    return Bad(source, "\"format\" must be \"dsv4-placement/1\"");
  auto integer = [&](const char* key, int64_t lo, int64_t hi, int64_t fallback) -> absl::StatusOr<int64_t> {
    if (!j.contains(key)) {
      if (fallback >= 0) return fallback;
      return Bad(source, absl::StrCat("\"", key, "\" is missing"));
    }
    const auto& v = j[key];
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
      return Bad(source, absl::StrCat("\"", key, "\" must be an integer in [", lo, ", ", hi, "]"));
    return v.get<int64_t>();
  };
  DSV4_ASSIGN_OR_RETURN(const int64_t experts, integer("num_experts", 1, 1 << 20, -1));
  DSV4_ASSIGN_OR_RETURN(const int64_t ep, integer("ep", 1, 1 << 16, -1));
  DSV4_ASSIGN_OR_RETURN(const int64_t rpn, integer("ranks_per_node", 0, 1 << 16, 0));
  if (j.contains("source") && !j["source"].is_string()) return Bad(source, "\"source\" must be a string");
  if (!j.contains("layers") || !j["layers"].is_array() || j["layers"].empty())
    return Bad(source, "\"layers\" must be a non-empty array (one map for every layer, or one per layer)");
  std::vector<ExpertPlacement> maps;
  const auto& layers = j["layers"];
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::string where = absl::StrCat("layers[", l, "]");
    if (!layers[l].is_array() || static_cast<int64_t>(layers[l].size()) != ep)
      return Bad(source, absl::StrCat(where, " must be an array of ", ep, " ranks' slot lists (\"ep\" is ", ep, ")"));
    std::vector<std::vector<int32_t>> slots(ep);
    for (int64_t r = 0; r < ep; ++r) {
      const auto& s = layers[l][r];
      if (!s.is_array()) return Bad(source, absl::StrCat(where, "[", r, "] must be an array of expert ids"));
      for (const auto& e : s) {
        if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= experts)
          return Bad(source, absl::StrCat(where, "[", r, "] holds ", e.dump(), ", not an expert id in [0, ", experts,
                                          ")"));
        slots[r].push_back(e.get<int32_t>());
      }
    }
    auto map = ExpertPlacement::FromSlots(experts, std::move(slots));
    if (!map.ok()) return Bad(source, absl::StrCat(where, ": ", map.status().message()));
    maps.push_back(std::move(*map));
  }
  const int64_t num_layers = maps.size() == 1 ? 0 : static_cast<int64_t>(maps.size());
  auto p = Make(num_layers, std::move(maps), static_cast<int>(rpn));
  if (!p.ok()) return Bad(source, std::string(p.status().message()));
  return p;
}

std::string ModelPlacement::ToJson(std::string_view source) const {
  std::string out = "{\n  \"format\": \"dsv4-placement/1\",\n";
  if (!source.empty()) absl::StrAppend(&out, "  \"source\": ", nlohmann::json(std::string(source)).dump(), ",\n");
  absl::StrAppend(&out, "  \"num_experts\": ", num_experts(), ",\n  \"ep\": ", ep(), ",\n");
  if (ranks_per_node_ > 0) absl::StrAppend(&out, "  \"ranks_per_node\": ", ranks_per_node_, ",\n");
  out += "  \"layers\": [\n";
  for (size_t l = 0; l < maps_.size(); ++l) {
    out += "    [\n";
    for (int r = 0; r < maps_[l].ep(); ++r)
      absl::StrAppend(&out, "      [", absl::StrJoin(maps_[l].slots(r), ", "), "]", r + 1 < maps_[l].ep() ? "," : "",
                      "\n");
    absl::StrAppend(&out, "    ]", l + 1 < maps_.size() ? "," : "", "\n");
  }
  out += "  ]\n}\n";
  return out;
}

std::vector<int32_t> ModelPlacement::Encode() const {
  std::vector<int32_t> w = {1, static_cast<int32_t>(num_layers_), static_cast<int32_t>(num_experts()), ep(),
                            static_cast<int32_t>(maps_.size()), ranks_per_node_};
  for (const auto& m : maps_)
    for (int r = 0; r < m.ep(); ++r) {
      w.push_back(static_cast<int32_t>(m.slots(r).size()));
      w.insert(w.end(), m.slots(r).begin(), m.slots(r).end());
    }
  return w;
}

absl::StatusOr<ModelPlacement> ModelPlacement::Decode(std::span<const int32_t> w) {
  auto bad = [] { return absl::InvalidArgumentError("expert placement: malformed encoding"); };
  if (w.size() < 6 || w[0] != 1 || w[1] < 0 || w[2] < 1 || w[3] < 1 || w[4] < 1 || w[5] < 0) return bad();
  const int64_t experts = w[2], ep = w[3], num_maps = w[4];
  size_t at = 6;
  std::vector<ExpertPlacement> maps;
  for (int64_t m = 0; m < num_maps; ++m) {
    std::vector<std::vector<int32_t>> slots(ep);
    for (int64_t r = 0; r < ep; ++r) {
      if (at >= w.size() || w[at] < 0 || static_cast<size_t>(w[at]) > w.size() - at - 1) return bad();
      slots[r].assign(w.begin() + at + 1, w.begin() + at + 1 + w[at]);
      at += 1 + w[at];
    }
    DSV4_ASSIGN_OR_RETURN(ExpertPlacement map, ExpertPlacement::FromSlots(experts, std::move(slots)));
    maps.push_back(std::move(map));
  }
  if (at != w.size()) return bad();
  return Make(w[1], std::move(maps), w[5]);
}

// ---- EPLB ------------------------------------------------------------------------------------------

absl::StatusOr<ExpertPlacement> PlanEplbLayer(std::span<const double> load, int ep, const EplbOptions& o) {
  const int64_t E = static_cast<int64_t>(load.size());
  if (E < 1 || ep < 1) return absl::InvalidArgumentError("EPLB: no experts or no ranks");
  if (o.num_slots < E || o.num_slots < ep || o.num_slots > E * ep)
    return absl::InvalidArgumentError(absl::StrCat("EPLB: ", o.num_slots, " slots for ", E, " experts over ", ep,
                                                   " ranks (need at least max(experts, ranks) and at most one copy "
                                                   "of every expert per rank)"));
  DSV4_RETURN_IF_ERROR(CheckLoads(load));
  std::vector<std::vector<int32_t>> slots = PlanHierarchical(load, ep, o);
  if (slots.empty()) slots = PlanGlobal(load, ep, o.num_slots);
  for (auto& s : slots) std::sort(s.begin(), s.end());  // slot order carries no meaning: keep files readable
  return ExpertPlacement::FromSlots(E, std::move(slots));
}

absl::StatusOr<ModelPlacement> PlanEplb(const std::vector<std::vector<double>>& load, int ep,
                                        const EplbOptions& options) {
  if (load.empty()) return absl::InvalidArgumentError("EPLB: no layers");
  std::vector<ExpertPlacement> maps;
  for (size_t l = 0; l < load.size(); ++l) {
    if (load[l].size() != load[0].size())
      return absl::InvalidArgumentError(absl::StrCat("EPLB: layer ", l, " has ", load[l].size(), " experts, layer 0 ",
                                                     load[0].size()));
    DSV4_ASSIGN_OR_RETURN(ExpertPlacement map, PlanEplbLayer(load[l], ep, options), "layer ", l);
    maps.push_back(std::move(map));
  }
  return ModelPlacement::Make(static_cast<int64_t>(load.size()), std::move(maps), options.ranks_per_node);
}

absl::StatusOr<ModelPlacement> Rebalance(const ModelPlacement& current, const std::vector<std::vector<double>>& load,
                                         int ranks_per_node) {
  if (current.num_maps() == 0) return absl::InvalidArgumentError("rebalance: no current placement");
  const int64_t layers = static_cast<int64_t>(load.size());
  DSV4_RETURN_IF_ERROR(current.CheckFits(layers, load.empty() ? 0 : static_cast<int64_t>(load[0].size()), current.ep(),
                                         "rebalance"));
  std::vector<ExpertPlacement> maps;
  for (int64_t l = 0; l < layers; ++l) {
    if (static_cast<int64_t>(load[l].size()) != current.num_experts())
      return absl::InvalidArgumentError(absl::StrCat("rebalance: layer ", l, " has ", load[l].size(), " loads for ",
                                                     current.num_experts(), " experts"));
    const EplbOptions o{current.layer(l).num_slots(), ranks_per_node, 1};
    DSV4_ASSIGN_OR_RETURN(ExpertPlacement map, PlanEplbLayer(load[l], current.ep(), o), "layer ", l);
    maps.push_back(std::move(map));
  }
  return ModelPlacement::Make(layers, std::move(maps), ranks_per_node);
}

PlacementBalance Balance(const ModelPlacement& p, const std::vector<std::vector<double>>& load) {
  PlacementBalance b;
  if (load.empty() || p.num_maps() == 0) return b;
  double sum = 0;
  b.worst = 0;
  for (size_t l = 0; l < load.size(); ++l) {
    const double v = Imbalance(p.layer(static_cast<int64_t>(l)).RankLoad(load[l]));
    sum += v, b.worst = std::max(b.worst, v);
  }
  b.mean = sum / static_cast<double>(load.size());
  return b;
}

}  // namespace dsv4

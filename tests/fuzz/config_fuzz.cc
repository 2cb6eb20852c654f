// config.json: any bytes end in a status; a config that parses satisfies every relation
// ValidateModelConfig promises (checked again here from the outside).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "runtime/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto c = dsv4::ParseModelConfig(text, "config.json");
  if (!c.ok()) return 0;
  if (c->vocab_size < 1 || c->num_hidden_layers < 1 || c->num_experts_per_tok > c->n_routed_experts ||
      static_cast<int64_t>(c->compress_ratios.size()) < c->num_hidden_layers || c->eos_token_id < 0 ||
      c->eos_token_id >= c->vocab_size || c->num_attention_heads % c->o_groups != 0)
    std::abort();
  if (!dsv4::ValidateModelConfig(*c, "again").ok()) std::abort();
  return 0;
}

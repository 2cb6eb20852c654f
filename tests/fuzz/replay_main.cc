// The fuzzers' main in the normal build (without libFuzzer): a deterministic regression test that
// feeds LLVMFuzzerTestOneInput every file of the seed corpora named on the command line (crashes
// that libFuzzer found are added there), then, for each seed, mutations derived from it alone:
// every prefix (for seeds up to 4 KiB; 256 evenly spaced cuts otherwise), and 64 copies with one
// byte replaced (positions and values from a fixed LCG). The fuzzer's own checks abort on a broken
// invariant, so a failure is a crash, after which the failing input is named (seed file, and the
// prefix length or mutated byte).
//
//   fuzz_config tests/fuzz/corpus/config            # what ctest runs (fuzz_corpus_config)
//   fuzz_config path/to/crash-1234                  # one input
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// Set by AddressSanitizer/UBSan builds; null otherwise.
extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace {

namespace fs = std::filesystem;

bool ReadAll(const fs::path& p, std::vector<uint8_t>* out) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

// The input being run, printed (async-signal-safely) when it crashes.
char g_current[512];

void PrintCurrent() {
  static constexpr char kHead[] = "\nthe input that failed: ";
  (void)!write(STDERR_FILENO, kHead, sizeof(kHead) - 1);
  (void)!write(STDERR_FILENO, g_current, strnlen(g_current, sizeof(g_current)));
  (void)!write(STDERR_FILENO, "\n", 1);
}

void OnFatalSignal(int sig) {
  PrintCurrent();
  signal(sig, SIG_DFL);
  raise(sig);
}

int64_t Run(const std::vector<uint8_t>& bytes, size_t size, const std::string& label) {
  std::snprintf(g_current, sizeof(g_current), "%s", label.c_str());
  // A copy of exactly `size` bytes, so AddressSanitizer sees reads past the input's end.
  const std::vector<uint8_t> input(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(size));
  LLVMFuzzerTestOneInput(input.data(), input.size());
  return 1;
}

int64_t RunSeed(const fs::path& p, const std::vector<uint8_t>& seed) {
  const std::string name = p.string();
  int64_t runs = Run(seed, seed.size(), name);
  const size_t n = seed.size();
  const size_t cuts = n <= 4096 ? n : 256;
  for (size_t c = 0; c < cuts; ++c) {
    const size_t len = n <= 4096 ? c : c * n / cuts;
    runs += Run(seed, len, name + " prefix " + std::to_string(len));
  }
  if (n == 0) return runs;
  uint64_t state = 0x9E3779B97F4A7C15ull ^ n;
  for (int m = 0; m < 64; ++m) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const size_t at = static_cast<size_t>(state >> 33) % n;
    static constexpr uint8_t kValues[] = {0x00, 0xff, 0x7f, 0x80, '"', '{', '}', '[', ']', '\\', ':', ',', '-', '9'};
    std::vector<uint8_t> mutated = seed;
    mutated[at] = kValues[(state >> 20) % std::size(kValues)];
    runs += Run(mutated, n, name + " byte " + std::to_string(at) + " = " + std::to_string(mutated[at]));
  }
  return runs;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) signal(sig, OnFatalSignal);
  if (__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(PrintCurrent);
  int64_t seeds = 0, runs = 0;
  for (int a = 1; a < argc; ++a) {
    const fs::path arg(argv[a]);
    std::error_code ec;
    std::vector<fs::path> files;
    if (fs::is_directory(arg, ec)) {
      for (const auto& e : fs::directory_iterator(arg, ec))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());
    } else if (fs::is_regular_file(arg, ec)) {
      files.push_back(arg);
    } else {
      std::fprintf(stderr, "%s: no such file or directory\n", argv[a]);
      return 2;
    }
    for (const fs::path& f : files) {
      std::vector<uint8_t> seed;
      if (!ReadAll(f, &seed)) {
        std::fprintf(stderr, "%s: cannot read\n", f.string().c_str());
        return 2;
      }
      runs += RunSeed(f, seed);
      ++seeds;
    }
  }
  if (seeds == 0) {
    std::fprintf(stderr, "no inputs: a corpus must hold at least one seed\n");
    return 2;
  }
  std::printf("%s: %lld seeds, %lld inputs (seeds, prefixes, one-byte mutations), every check held\n", argv[0],
              static_cast<long long>(seeds), static_cast<long long>(runs));
  return 0;
}
